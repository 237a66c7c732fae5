"""Token-list augmentations for building extra distillation data.

Every function takes a sequence of tokens (strings, ids, anything), returns a new list and leaves
its input unchanged. Randomness comes from ``rng`` when it is given (a ``numpy.random.Generator`` or
``numpy.random.RandomState``) and otherwise from the global ``numpy.random`` state, drawn with the
same calls in the same order as TextBrewer 0.2.x, so a script seeded with ``numpy.random.seed`` gets
the same augmented data. A ``RandomState(seed)`` gives the same output as the global state seeded
with ``seed``; a ``Generator`` draws from a different stream.

Every function raises ``TypeError`` when ``tokens`` is a string or not iterable, or when ``rng``
is of another type; each function's ``Raises`` section lists the checks of its own arguments.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar, Union

import numpy as np

__all__ = ["deleting", "long_disorder", "masking", "n_gram_sampling", "short_disorder"]

T = TypeVar("T")
RandomSource = Union[np.random.Generator, np.random.RandomState, None]

_SHORT_DISORDER_KINDS = [0, 1, 2, 3, 4]
# Where the tokens (a, b, c) at positions (i, i+1, i+2) go for the short_disorder kinds 2, 3 and 4:
# the new window is [window[j] for j in order], so (2, 1, 0) turns abc into cba.
_TRIGRAM_ORDERS = {2: (2, 1, 0), 3: (2, 0, 1), 4: (1, 2, 0)}
# numpy's choice() accepts probabilities whose sum is off by up to ~1.5e-8; stay within that.
_SUM_TOLERANCE = 1e-8


class _Draws:
    """One interface over the global numpy RNG, a ``RandomState`` and a ``Generator``.

    The legacy sources (the global state and ``RandomState``) are called exactly as TextBrewer 0.2.x
    called ``numpy.random``; a ``Generator`` gets the equivalent modern calls.
    """

    def __init__(self, rng: RandomSource) -> None:
        if rng is None:
            self._source: Any = np.random
        elif isinstance(rng, (np.random.RandomState, np.random.Generator)):
            self._source = rng
        else:
            raise TypeError(
                "`rng` must be a numpy.random.Generator, a numpy.random.RandomState or None, "
                f"got {type(rng).__name__}"
            )
        self._modern = isinstance(rng, np.random.Generator)

    def uniform(self) -> float:
        """One draw from U[0, 1)."""
        return self._source.random() if self._modern else self._source.rand()

    def integer(self, low: int, high: int) -> int:
        """One integer drawn uniformly from [low, high)."""
        return self._source.integers(low, high) if self._modern else self._source.randint(low, high)

    def binomial(self, n: int, p: float, size: int) -> np.ndarray:
        """``size`` draws from Binomial(n, p)."""
        return self._source.binomial(n, p, size)

    def choice(self, options: Sequence[Any], p: Sequence[float]) -> Any:
        """One element of ``options`` drawn with probabilities ``p``."""
        return self._source.choice(options, p=p)


def masking(
    tokens: Sequence[T], p: float = 0.1, mask: Any = "[MASK]", rng: RandomSource = None
) -> list[Any]:
    """Replaces each token by ``mask`` with probability ``p``.

    Draws one uniform number per token, in order (``rand()`` on the legacy sources); a token is
    replaced when its draw is below ``p``.

    Args:
        tokens: The tokens.
        p: The probability of masking each token, in [0, 1].
        mask: What a masked token becomes.
        rng: The random source; None means the global ``numpy.random`` state.

    Returns:
        A new list as long as ``tokens``.

    Raises:
        TypeError: If the masking probability ``p`` is not a number.
        ValueError: If ``p`` is outside [0, 1].

    Example:
        >>> masking(["the", "cat", "sat"], p=1.0, rng=np.random.default_rng(0))
        ['[MASK]', '[MASK]', '[MASK]']
    """
    tokens = _token_list(tokens)
    _check_probability("p", p)
    draws = _Draws(rng)
    return [mask if draws.uniform() < p else token for token in tokens]


def deleting(tokens: Sequence[T], p: float = 0.1, rng: RandomSource = None) -> list[T]:
    """Deletes each token with probability ``p``, keeping the order of the others.

    Draws one ``binomial(1, 1 - p, len(tokens))`` vector; the tokens whose draw is 1 are kept.

    Args:
        tokens: The tokens.
        p: The probability of deleting each token, in [0, 1].
        rng: The random source; None means the global ``numpy.random`` state.

    Returns:
        A new list holding the kept tokens in their original order.

    Raises:
        TypeError: If ``p`` is not a number; a deletion probability must be a float.
        ValueError: If ``p`` is below 0 or above 1.

    Example:
        >>> deleting(["the", "cat", "sat"], p=0.0, rng=np.random.default_rng(0))
        ['the', 'cat', 'sat']
    """
    tokens = _token_list(tokens)
    _check_probability("p", p)
    keep = _Draws(rng).binomial(1, 1 - p, len(tokens))
    return [token for token, kept in zip(tokens, keep) if kept == 1]


def n_gram_sampling(
    tokens: Sequence[T],
    p_ng: Sequence[float] = (0.2, 0.2, 0.2, 0.2, 0.2),
    l_ng: Sequence[int] = (1, 2, 3, 4, 5),
    rng: RandomSource = None,
) -> list[T]:
    """Returns a random contiguous span of the tokens, of a randomly chosen length.

    Draws ``span = choice(l_ng, p=p_ng)``, then ``start = randint(0, len(tokens) - span + 1)``
    (``integers`` for a ``Generator``) and returns ``tokens[start:start + span]``. A span longer
    than the tokens is cut to ``len(tokens)``, so the whole list comes back (0.2.x raised there);
    the start is still drawn, from ``[0, 1)``, so every call consumes exactly two draws whatever the
    length of the tokens. An empty token list gives an empty list.

    Args:
        tokens: The tokens.
        p_ng: The probability of each span length, non-negative and summing to 1.
        l_ng: The span lengths, positive ints, as many as ``p_ng``.
        rng: The random source; None means the global ``numpy.random`` state.

    Returns:
        A new list, a contiguous slice of ``tokens``.

    Raises:
        TypeError: If ``p_ng`` or ``l_ng`` is not a sequence of numbers, or ``l_ng`` holds a
            non-integer.
        ValueError: If ``p_ng`` and ``l_ng`` differ in length or are empty, ``p_ng`` is not a
            probability distribution, or ``l_ng`` holds a length below 1.

    Example:
        >>> n_gram_sampling(list("abcdef"), p_ng=[1.0], l_ng=[6], rng=np.random.default_rng(0))
        ['a', 'b', 'c', 'd', 'e', 'f']
    """
    tokens = _token_list(tokens)
    p_ng = _probability_list("p_ng", p_ng)
    l_ng = _span_length_list(l_ng, len(p_ng))
    draws = _Draws(rng)
    span = min(int(draws.choice(l_ng, p=p_ng)), len(tokens))
    start = int(draws.integer(0, len(tokens) - span + 1))
    return tokens[start : start + span]


def short_disorder(
    tokens: Sequence[T],
    p: Sequence[float] = (0.9, 0.1, 0.0, 0.0, 0.0),
    rng: RandomSource = None,
) -> list[T]:
    """Disorders the tokens locally, one bigram or trigram at a time.

    Walks the positions ``i`` from the left while ``i < len(tokens) - 1``, drawing a kind
    ``k = choice([0, 1, 2, 3, 4], p=p)`` at each stop. With the trigram ``abc`` starting at ``i``:

    * ``k = 0``: ``abc`` is kept; move on by 1.
    * ``k = 1``: ``abc -> bac`` (swap the pair); move on by 2.
    * ``k = 2``: ``abc -> cba``; move on by 3.
    * ``k = 3``: ``abc -> cab``; move on by 3.
    * ``k = 4``: ``abc -> bca``; move on by 3.

    At the last pair, where no trigram fits, any ``k != 0`` swaps the pair.

    Args:
        tokens: The tokens.
        p: The probabilities of the five kinds, non-negative and summing to 1.
        rng: The random source; None means the global ``numpy.random`` state.

    Returns:
        A new list, a permutation of ``tokens``.

    Raises:
        TypeError: If ``p`` is not a sequence of numbers.
        ValueError: If ``p`` does not hold five probabilities summing to 1.

    Example:
        >>> short_disorder(list("abcde"), p=[0, 1, 0, 0, 0], rng=np.random.default_rng(0))
        ['b', 'a', 'd', 'c', 'e']
    """
    tokens = _token_list(tokens)
    p = _probability_list("p", p)
    if len(p) != len(_SHORT_DISORDER_KINDS):
        raise ValueError(
            "`p` must hold 5 probabilities, one per disorder kind (keep, bac, cba, cab, bca), "
            f"got {len(p)}: {p!r}"
        )
    draws = _Draws(rng)
    position = 0
    while position < len(tokens) - 1:
        kind = int(draws.choice(_SHORT_DISORDER_KINDS, p=p))
        position += _disorder_at(tokens, position, kind)
    return tokens


def _disorder_at(tokens: list[Any], position: int, kind: int) -> int:
    """Applies one short_disorder kind in place at ``position``; returns how far to move on."""
    if kind == 0:
        return 1
    if kind == 1 or position == len(tokens) - 2:
        tokens[position], tokens[position + 1] = tokens[position + 1], tokens[position]
        return 2
    window = tokens[position : position + 3]
    tokens[position : position + 3] = [window[j] for j in _TRIGRAM_ORDERS[kind]]
    return 3


def long_disorder(
    tokens: Sequence[T], p: float = 0.1, length: float = 20, rng: RandomSource = None
) -> list[T]:
    """Swaps the two halves of spans of the tokens, from left to right.

    The span length is ``length`` tokens, or, when ``int(length) <= 1`` (so any ``length < 2``), the
    fraction ``length`` of ``len(tokens)``; it is then rounded to an even number with
    ``(int(length) + 1) // 2 * 2``. Walking from ``i = 0`` while a whole span fits
    (``i <= len(tokens) - span``), one uniform draw decides: below ``p``, the halves of
    ``[i, i + span)`` are swapped and the walk moves past the span, otherwise it moves on by 1. A
    span that rounds to 0 tokens swaps nothing and moves on by 1 (0.2.x looped forever there); the
    draws stay those of 0.2.x.

    Args:
        tokens: The tokens.
        p: The probability of swapping at each stop, in [0, 1].
        length: The span length in tokens, or, below 2, as a fraction of ``len(tokens)``; positive.
        rng: The random source; None means the global ``numpy.random`` state.

    Returns:
        A new list, a permutation of ``tokens``.

    Raises:
        TypeError: If ``p`` or ``length`` is not a number.
        ValueError: If ``p`` is outside [0, 1] or ``length`` is not positive and finite.

    Example:
        >>> long_disorder(list(range(11)), p=1, length=0.4, rng=np.random.default_rng(0))
        [2, 3, 0, 1, 6, 7, 4, 5, 8, 9, 10]
    """
    tokens = _token_list(tokens)
    _check_probability("p", p)
    span = _span_length(length, len(tokens))
    half = span // 2
    draws = _Draws(rng)
    position = 0
    while position <= len(tokens) - span:
        if draws.uniform() < p and span > 0:
            middle, end = position + half, position + span
            tokens[position:end] = tokens[middle:end] + tokens[position:middle]
            position += span
        else:
            position += 1
    return tokens


def _span_length(length: float, num_tokens: int) -> int:
    if isinstance(length, bool) or not isinstance(length, numbers.Real):
        raise TypeError(
            f"`length` must be a positive number, got {length!r} of type {type(length).__name__}"
        )
    if not (math.isfinite(length) and length > 0):
        raise ValueError(
            f"`length` must be a positive number (a token count, or a fraction of the tokens "
            f"below 2), got {length!r}"
        )
    if int(length) <= 1:
        length = num_tokens * length
    return (int(length) + 1) // 2 * 2


def _token_list(tokens: Iterable[T]) -> list[T]:
    """Copies ``tokens`` into a new list, so that the caller's sequence is never changed."""
    if isinstance(tokens, (str, bytes)):
        raise TypeError(
            f"`tokens` must be a sequence of tokens such as a list, got a {type(tokens).__name__} "
            f"({tokens!r:.40}); split it into tokens first"
        )
    try:
        return list(tokens)
    except TypeError:
        raise TypeError(
            f"`tokens` must be a sequence of tokens such as a list, got {type(tokens).__name__}"
        ) from None


def _check_probability(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a probability in [0, 1], got {value!r}")
    if not 0 <= value <= 1:
        raise ValueError(f"`{name}` must be a probability in [0, 1], got {value!r}")


def _probability_list(name: str, probabilities: Iterable[float]) -> list[float]:
    """Copies a probability vector into a list, checking that it is one."""
    values = _number_list(name, probabilities, "probabilities")
    if not values:
        raise ValueError(f"`{name}` must hold at least one probability, got {values!r}")
    for index, value in enumerate(values):
        _check_probability(f"{name}[{index}]", value)
    if abs(math.fsum(values) - 1) > _SUM_TOLERANCE:
        raise ValueError(f"`{name}` must sum to 1, got {values!r} (sum {math.fsum(values)!r})")
    return values


def _span_length_list(l_ng: Iterable[int], expected: int) -> list[int]:
    """Copies the n-gram span lengths into a list, checking them against ``expected`` p_ng."""
    spans = _number_list("l_ng", l_ng, "span lengths")
    if len(spans) != expected:
        raise ValueError(
            f"`l_ng` and `p_ng` must have the same length, got {len(spans)} span lengths "
            f"{spans!r} for {expected} probabilities"
        )
    for index, span in enumerate(spans):
        if isinstance(span, bool) or not isinstance(span, numbers.Integral):
            raise TypeError(
                f"`l_ng[{index}]` must be an int, got {span!r} of type {type(span).__name__}"
            )
        if span < 1:
            raise ValueError(f"`l_ng[{index}]` must be a span length of at least 1, got {span!r}")
    return spans


def _number_list(name: str, values: Iterable[Any], what: str) -> list[Any]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"`{name}` must be a sequence of {what}, got {type(values).__name__}")
    return list(values)
