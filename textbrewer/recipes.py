"""Ready ``intermediate_matches`` lists for the classic layer-to-layer distillation recipes.

Each function returns a new list of plain match dicts for ``DistillationConfig(
intermediate_matches=...)``; nothing here builds modules or touches a registry. The lists follow
the Hugging Face indexing conventions, which is what a BERT-like adaptor returns when it passes the
model's outputs through:

* ``hidden``: ``hidden_states``, ``num_layers + 1`` tensors of shape (batch, length, hidden): the
  embeddings at index 0, then layer ``i``'s output at index ``i``;
* ``attention``: one tensor per layer, (batch, heads, length, length), layer ``i`` at index
  ``i - 1``.

The recipes, as their papers describe them:

* :func:`hidden_matches`: mean squared error between the hidden states of uniformly mapped layers
  (student layer ``m`` learns from teacher layer ``m * N // M``, embeddings from embeddings),
  through a learned linear projection from the student's width to the teacher's.
* :func:`tinybert_matches`: TinyBERT (Jiao et al., 2020): the same mapped hidden states with a
  projection, plus the mean squared error between the attention maps of the mapped layers.
* :func:`minilm_matches`: MiniLM (Wang et al., 2020): the last layer only, attention distributions
  compared with cross-entropy (KL up to a constant), plus the value relation (see the function).

:data:`PRESETS` names the usual configurations for a 12-layer, 768-wide teacher (BERT-base) and
:func:`preset_matches` builds one by name.

Example:
    >>> matches = hidden_matches(3, student_hidden=384)
    >>> [(match["layer_T"], match["layer_S"]) for match in matches]
    [(0, 0), (4, 1), (8, 2), (12, 3)]
    >>> matches[0]["proj"]
    ['linear', 384, 768]
"""

from __future__ import annotations

import functools
import numbers
from typing import Any, Callable

__all__ = [
    "PRESETS",
    "hidden_matches",
    "minilm_matches",
    "preset_matches",
    "tinybert_matches",
    "uniform_layer_map",
]

Match = dict[str, Any]

_BERT_BASE_LAYERS = 12
_BERT_BASE_HIDDEN = 768


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"`{name}`={value!r} must be an int >= 1")


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """Maps each student hidden-state index to a teacher one, spread evenly over the teacher.

    Student index ``m`` (0 = embeddings, ``student_layers`` = the last layer) maps to teacher index
    ``m * teacher_layers // student_layers``, so embeddings map to embeddings and the last layer to
    the last layer (TinyBERT's ``g(m) = m * N / M``, also PKD's "skip" strategy).

    Args:
        student_layers: The student's number of transformer layers ``M``.
        teacher_layers: The teacher's number of transformer layers ``N >= M``.

    Returns:
        ``[(layer_T, layer_S), ...]`` for ``layer_S`` = 0 .. ``student_layers``.

    Raises:
        ValueError: If a count is not a positive int, or the student is deeper than the teacher.

    Example:
        >>> uniform_layer_map(4, 12)
        [(0, 0), (3, 1), (6, 2), (9, 3), (12, 4)]
    """
    _check_positive_int("student_layers", student_layers)
    _check_positive_int("teacher_layers", teacher_layers)
    if student_layers > teacher_layers:
        raise ValueError(
            f"`student_layers`={student_layers!r} exceeds `teacher_layers`={teacher_layers!r}: "
            "a uniform map sends each student layer to a distinct teacher layer"
        )
    return [
        (layer_S * teacher_layers // student_layers, layer_S)
        for layer_S in range(student_layers + 1)
    ]


def _projection(proj: str | None, student_hidden: int, teacher_hidden: int) -> list | None:
    _check_positive_int("student_hidden", student_hidden)
    _check_positive_int("teacher_hidden", teacher_hidden)
    if proj is None:
        if student_hidden != teacher_hidden:
            raise ValueError(
                f"`proj`=None needs equal widths, but `student_hidden`={student_hidden!r} and "
                f"`teacher_hidden`={teacher_hidden!r} differ: pass proj='linear' (or another "
                "PROJ_MAP kind)"
            )
        return None
    return [proj, student_hidden, teacher_hidden]


def _match(
    layer_T: int, layer_S: int, feature: str, loss: str, weight: float, proj: list | None = None
) -> Match:
    match = {
        "layer_T": layer_T,
        "layer_S": layer_S,
        "feature": feature,
        "loss": loss,
        "weight": weight,
    }
    if proj is not None:  # a copy per match: a user editing one list must not change the others
        match["proj"] = list(proj)
    return match


def hidden_matches(
    student_layers: int,
    teacher_layers: int = _BERT_BASE_LAYERS,
    *,
    student_hidden: int = _BERT_BASE_HIDDEN,
    teacher_hidden: int = _BERT_BASE_HIDDEN,
    loss: str = "hidden_mse",
    weight: float = 1,
    proj: str | None = "linear",
) -> list[Match]:
    """Hidden-state matches between uniformly mapped layers, embeddings included.

    One ``hidden`` match per pair of :func:`uniform_layer_map`, each with its own projection
    ``[proj, student_hidden, teacher_hidden]`` from the student's (batch, length, student_hidden)
    states to the teacher's width (a learned map even when the widths are equal, as the classic
    recipe has it; ``proj=None`` drops it when they are).

    Args:
        student_layers: The student's number of transformer layers.
        teacher_layers: The teacher's number of transformer layers.
        student_hidden: The student's hidden size.
        teacher_hidden: The teacher's hidden size.
        loss: A single-layer ``MATCH_LOSS_MAP`` name: ``'hidden_mse'``, or ``'cos'``, ``'pkd'``.
        weight: Each match's weight.
        proj: A ``PROJ_MAP`` kind, or None for no projection (equal widths only).

    Returns:
        ``student_layers + 1`` match dicts, embeddings first.

    Raises:
        ValueError: On counts or widths that are not positive ints, a student deeper than the
            teacher, or ``proj=None`` with different widths.

    Example:
        >>> [m["layer_T"] for m in hidden_matches(6, proj=None)]
        [0, 2, 4, 6, 8, 10, 12]
    """
    projection = _projection(proj, student_hidden, teacher_hidden)
    return [
        _match(layer_T, layer_S, "hidden", loss, weight, projection)
        for layer_T, layer_S in uniform_layer_map(student_layers, teacher_layers)
    ]


def tinybert_matches(
    student_layers: int,
    teacher_layers: int = _BERT_BASE_LAYERS,
    *,
    student_hidden: int = _BERT_BASE_HIDDEN,
    teacher_hidden: int = _BERT_BASE_HIDDEN,
    hidden_weight: float = 1,
    attention_weight: float = 1,
    attention_loss: str = "attention_mse",
    proj: str | None = "linear",
) -> list[Match]:
    """TinyBERT's intermediate layers: mapped hidden states and mapped attention maps.

    :func:`hidden_matches` with ``hidden_mse`` (embeddings included), then, for every student layer
    ``m >= 1``, its attention map (index ``m - 1``) against that of teacher layer
    ``m * N // M`` (index ``m * N // M - 1``). TinyBERT compares the attention *scores* before the
    softmax; ``attention_mse`` zeroes entries <= -1e-3 in both maps first, so masked (very
    negative) scores do not count, and it works on probabilities too. ``attention_mse`` needs the
    same number of heads on both sides; ``'attention_mse_sum'`` sums the heads first and does not.

    Args:
        student_layers: The student's number of transformer layers.
        teacher_layers: The teacher's number of transformer layers.
        student_hidden: The student's hidden size.
        teacher_hidden: The teacher's hidden size.
        hidden_weight: The weight of each hidden-state match.
        attention_weight: The weight of each attention match.
        attention_loss: ``'attention_mse'`` or ``'attention_mse_sum'``.
        proj: The ``PROJ_MAP`` kind of the hidden-state projections (TinyBERT's ``W_h``).

    Returns:
        ``student_layers + 1`` hidden matches, then ``student_layers`` attention matches.

    Raises:
        ValueError: As :func:`hidden_matches`.

    Example:
        >>> matches = tinybert_matches(4, student_hidden=312)
        >>> [(m["layer_T"], m["layer_S"]) for m in matches if m["feature"] == "attention"]
        [(2, 0), (5, 1), (8, 2), (11, 3)]
    """
    matches = hidden_matches(
        student_layers,
        teacher_layers,
        student_hidden=student_hidden,
        teacher_hidden=teacher_hidden,
        weight=hidden_weight,
        proj=proj,
    )
    for layer_T, layer_S in uniform_layer_map(student_layers, teacher_layers)[1:]:
        matches.append(
            _match(layer_T - 1, layer_S - 1, "attention", attention_loss, attention_weight)
        )
    return matches


def minilm_matches(
    student_layers: int,
    teacher_layers: int = _BERT_BASE_LAYERS,
    *,
    weight: float = 1,
    value_relation: bool = True,
    loss: str = "attention_ce",
) -> list[Match]:
    """MiniLM's deep self-attention distillation: the last layers only.

    The last layer's attention (index ``student_layers - 1`` against ``teacher_layers - 1``)
    compared with ``attention_ce``: ``-sum softmax(T) * log_softmax(S)`` over the keys, which is
    the KL divergence of MiniLM up to the teacher's entropy, a constant. ``attention_ce`` takes
    *scores* (before the softmax). From probabilities ``p`` (what Hugging Face models return) pass
    ``p.clamp_min(1e-12).log()``, whose softmax is ``p`` again.

    With ``value_relation``, a second match compares MiniLM's value relation, the scores
    ``V Vᵀ / sqrt(head_dim)`` per head, (batch, heads, length, length) with ``V`` the last layer's
    values. The adaptor computes it and *appends* it to its ``attention`` list, so it sits at index
    ``num_layers`` (just after the last layer's map) on both sides.

    No projections: the maps are (length x length) whatever the widths. ``attention_ce`` needs the
    same number of heads on both sides; ``'attention_ce_mean'`` averages the heads first.

    Args:
        student_layers: The student's number of transformer layers.
        teacher_layers: The teacher's number of transformer layers.
        weight: Each match's weight.
        value_relation: Add the value-relation match (the adaptor must append the scores).
        loss: ``'attention_ce'`` or ``'attention_ce_mean'``.

    Returns:
        One or two ``attention`` match dicts.

    Raises:
        ValueError: If a count is not a positive int.

    Example:
        >>> [(m["layer_T"], m["layer_S"]) for m in minilm_matches(6)]
        [(11, 5), (12, 6)]
    """
    _check_positive_int("student_layers", student_layers)
    _check_positive_int("teacher_layers", teacher_layers)
    matches = [_match(teacher_layers - 1, student_layers - 1, "attention", loss, weight)]
    if value_relation:
        matches.append(_match(teacher_layers, student_layers, "attention", loss, weight))
    return matches


PRESETS: dict[str, Callable[..., list[Match]]] = {
    "L3_hidden_mse": functools.partial(hidden_matches, 3),
    "L4_hidden_mse": functools.partial(hidden_matches, 4),
    "L6_hidden_mse": functools.partial(hidden_matches, 6),
    "L3_small_hidden_mse": functools.partial(hidden_matches, 3, student_hidden=384),
    "L4_small_hidden_mse": functools.partial(hidden_matches, 4, student_hidden=384),
    "L6_small_hidden_mse": functools.partial(hidden_matches, 6, student_hidden=384),
    "L4_tinybert": functools.partial(tinybert_matches, 4, student_hidden=312),
    "L6_tinybert": functools.partial(tinybert_matches, 6),
    "L3_minilm": functools.partial(minilm_matches, 3),
    "L6_minilm": functools.partial(minilm_matches, 6),
}
"""Named recipes for a 12-layer, 768-wide teacher (BERT-base).

``L{M}_hidden_mse``: :func:`hidden_matches` for an ``M``-layer, 768-wide student;
``L{M}_small_hidden_mse``: the same for a 384-wide student; ``L4_tinybert`` (312 wide) and
``L6_tinybert`` (768 wide): :func:`tinybert_matches`; ``L3_minilm``, ``L6_minilm``:
:func:`minilm_matches`. Call one (or :func:`preset_matches`) with keyword overrides, e.g.
``teacher_hidden=1024, teacher_layers=24`` for a BERT-large teacher.
"""


def preset_matches(name: str, **overrides: Any) -> list[Match]:
    """Builds the named recipe of :data:`PRESETS`, with keyword overrides.

    Args:
        name: A key of :data:`PRESETS`.
        **overrides: Keyword arguments for the recipe's function (``teacher_layers``,
            ``student_hidden``, ``weight``, ...).

    Returns:
        A new list of match dicts.

    Raises:
        KeyError: If ``name`` is not a key of :data:`PRESETS`.

    Example:
        >>> len(preset_matches("L6_tinybert"))
        13
    """
    if name not in PRESETS:
        known = ", ".join(repr(key) for key in sorted(PRESETS))
        raise KeyError(f"`name`={name!r} is not in recipes.PRESETS (known: {known})")
    return PRESETS[name](**overrides)
