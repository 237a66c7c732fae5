"""Tests for textbrewer.data_utils.

The seeded tests re-derive every expected output from the numpy draws that SPEC §9 lists, written
out here independently of the library, and check that the library consumed exactly those draws.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from textbrewer.data_utils import (
    deleting,
    long_disorder,
    masking,
    n_gram_sampling,
    short_disorder,
)

SEEDS = range(8)
LENGTHS = [0, 1, 2, 3, 7, 25]


def global_state_fingerprint():
    _, keys, position, *_ = np.random.get_state()
    return keys.tobytes(), position


# --- independent re-derivations of the 0.2.x draws (global numpy.random) -------------------------


def expected_masking(tokens, p, mask):
    draws = [np.random.rand() for _ in tokens]
    return [mask if draw < p else token for token, draw in zip(tokens, draws)]


def expected_deleting(tokens, p):
    keep = np.random.binomial(1, 1 - p, len(tokens))
    return [tokens[i] for i in range(len(tokens)) if keep[i] == 1]


def expected_n_gram_sampling(tokens, p_ng, l_ng):
    span = np.random.choice(l_ng, p=p_ng)
    start = np.random.randint(0, len(tokens) - span + 1)
    return tokens[start : start + span]


# What the trigram "abc" becomes for each short_disorder kind.
SHORT_PATTERNS = {1: "bac", 2: "cba", 3: "cab", 4: "bca"}


def expected_short_disorder(tokens, p):
    out = list(tokens)
    i = 0
    while i < len(out) - 1:
        k = np.random.choice([0, 1, 2, 3, 4], p=p)
        if k == 0:
            i += 1
            continue
        pattern = "bac" if i == len(out) - 2 else SHORT_PATTERNS[k]
        width = 2 if pattern == "bac" else 3
        window = dict(zip("abc", out[i : i + width]))
        out[i : i + width] = [window[letter] for letter in pattern[:width]]
        i += width
    return out


def expected_long_disorder(tokens, p, length):
    out = list(tokens)
    if int(length) <= 1:
        length = len(out) * length
    length = (int(length) + 1) // 2 * 2
    i = 0
    while i <= len(out) - length:
        if np.random.rand() < p and length > 0:
            half = length // 2
            out = out[:i] + out[i + half : i + length] + out[i : i + half] + out[i + length :]
            i += length
        else:
            i += 1  # also for a zero span, where 0.2.x looped forever (the one deviation)
    return out


def check_against_global_draws(seed, call, derive):
    np.random.seed(seed)
    expected = derive()
    state_after_expected = global_state_fingerprint()
    np.random.seed(seed)
    actual = call()
    assert actual == expected
    assert global_state_fingerprint() == state_after_expected  # the same number of draws


# --- exact seeded outputs -----------------------------------------------------------------------


def test_long_disorder_gives_the_spec_answer_for_the_seeds_example():
    assert long_disorder(list(range(11)), p=1, length=0.4) == [2, 3, 0, 1, 6, 7, 4, 5, 8, 9, 10]


def test_masking_under_a_fixed_seed_gives_a_known_output():
    np.random.seed(0)
    # rand() under seed 0 starts 0.5488, 0.7152, 0.6028, 0.5449, 0.4237, 0.6459, 0.4376, ...
    assert masking(list("abcdefg"), p=0.5) == ["a", "b", "c", "d", "[MASK]", "f", "[MASK]"]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_masking_draws_one_rand_per_token(seed, length, p):
    tokens = [f"t{i}" for i in range(length)]
    check_against_global_draws(
        seed, lambda: masking(tokens, p=p, mask="<m>"), lambda: expected_masking(tokens, p, "<m>")
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("p", [0.0, 0.4, 1.0])
def test_deleting_draws_one_binomial_vector(seed, length, p):
    tokens = list(range(length))
    check_against_global_draws(
        seed, lambda: deleting(tokens, p=p), lambda: expected_deleting(tokens, p)
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("length", [5, 6, 30])
@pytest.mark.parametrize(
    ("p_ng", "l_ng"),
    [((0.2,) * 5, (1, 2, 3, 4, 5)), ([0.5, 0.5], [2, 5]), ([1.0], [3])],
)
def test_n_gram_sampling_draws_a_choice_then_a_randint(seed, length, p_ng, l_ng):
    tokens = list(range(length))
    check_against_global_draws(
        seed,
        lambda: n_gram_sampling(tokens, p_ng=p_ng, l_ng=l_ng),
        lambda: expected_n_gram_sampling(tokens, p_ng, l_ng),
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize(
    "p", [(0.9, 0.1, 0, 0, 0), (0.2, 0.2, 0.2, 0.2, 0.2), (0, 0, 0.5, 0.25, 0.25)]
)
def test_short_disorder_draws_one_choice_per_stop(seed, length, p):
    tokens = list(range(length))
    check_against_global_draws(
        seed, lambda: short_disorder(tokens, p=p), lambda: expected_short_disorder(tokens, list(p))
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize(("p", "span"), [(0.1, 20), (0.5, 2), (0.7, 3), (0.5, 0.4), (1.0, 1)])
def test_long_disorder_draws_one_rand_per_stop(seed, length, p, span):
    tokens = list(range(length))
    check_against_global_draws(
        seed,
        lambda: long_disorder(tokens, p=p, length=span),
        lambda: expected_long_disorder(tokens, p, span),
    )


def test_default_arguments_use_the_documented_defaults():
    tokens = list(range(40))
    for call, derive in [
        (lambda: masking(tokens), lambda: expected_masking(tokens, 0.1, "[MASK]")),
        (lambda: deleting(tokens), lambda: expected_deleting(tokens, 0.1)),
        (
            lambda: n_gram_sampling(tokens),
            lambda: expected_n_gram_sampling(tokens, [0.2] * 5, [1, 2, 3, 4, 5]),
        ),
        (
            lambda: short_disorder(tokens),
            lambda: expected_short_disorder(tokens, [0.9, 0.1, 0, 0, 0]),
        ),
        (lambda: long_disorder(tokens), lambda: expected_long_disorder(tokens, 0.1, 20)),
    ]:
        check_against_global_draws(123, call, derive)


# --- explicit random sources ----------------------------------------------------------------------

AUGMENTATIONS = {
    "masking": lambda tokens, rng: masking(tokens, p=0.3, rng=rng),
    "deleting": lambda tokens, rng: deleting(tokens, p=0.3, rng=rng),
    "n_gram_sampling": lambda tokens, rng: n_gram_sampling(tokens, rng=rng),
    "short_disorder": lambda tokens, rng: short_disorder(tokens, p=[0.2] * 5, rng=rng),
    "long_disorder": lambda tokens, rng: long_disorder(tokens, p=0.3, length=4, rng=rng),
}


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
@pytest.mark.parametrize("seed", [0, 7, 2024])
def test_a_random_state_gives_the_same_output_as_the_seeded_global_state(name, seed):
    augment = AUGMENTATIONS[name]
    tokens = [f"w{i}" for i in range(30)]
    np.random.seed(seed)
    from_global = [augment(tokens, None) for _ in range(3)]
    rng = np.random.RandomState(seed)
    from_random_state = [augment(tokens, rng) for _ in range(3)]
    assert from_random_state == from_global


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
@pytest.mark.parametrize("make_rng", [np.random.default_rng, np.random.RandomState])
def test_an_explicit_rng_is_reproducible_and_leaves_the_global_state_alone(name, make_rng):
    augment = AUGMENTATIONS[name]
    tokens = list(range(30))
    np.random.seed(5)
    before = global_state_fingerprint()
    first = augment(tokens, make_rng(11))
    second = augment(tokens, make_rng(11))
    assert first == second
    assert global_state_fingerprint() == before


def test_a_generator_drives_every_code_path():
    rng = np.random.default_rng(3)
    tokens = list(range(50))
    assert len(masking(tokens, p=0.5, rng=rng)) == 50
    assert set(deleting(tokens, p=0.5, rng=rng)) <= set(tokens)
    span = n_gram_sampling(tokens, p_ng=[1.0], l_ng=[4], rng=rng)
    assert span == list(range(span[0], span[0] + 4))
    assert sorted(short_disorder(tokens, p=[0, 0, 0, 0, 1], rng=rng)) == tokens
    assert sorted(long_disorder(tokens, p=0.5, length=6, rng=rng)) == tokens


# --- edge cases ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_an_empty_token_list_gives_an_empty_list(name):
    assert AUGMENTATIONS[name]([], np.random.default_rng(0)) == []


def test_n_gram_sampling_returns_all_tokens_when_the_span_is_longer_and_draws_twice():
    np.random.seed(4)
    np.random.choice([10], p=[1.0])
    np.random.randint(0, 1)
    after_two_draws = global_state_fingerprint()
    np.random.seed(4)
    assert n_gram_sampling(["a", "b", "c"], p_ng=[1.0], l_ng=[10]) == ["a", "b", "c"]
    assert global_state_fingerprint() == after_two_draws


def test_long_disorder_with_a_span_rounding_to_zero_terminates_unchanged():
    tokens = list(range(5))
    # 0.1 * 5 tokens = 0.5 -> a span of 0 tokens: 0.2.x looped forever here once a draw hit.
    assert long_disorder(tokens, p=1.0, length=0.1) == tokens

    def six_draws_and_no_change():  # one draw at each of the stops 0..5, as in 0.2.x
        for _ in range(6):
            np.random.rand()
        return tokens

    check_against_global_draws(
        9, lambda: long_disorder(tokens, p=0.0, length=0.1), six_draws_and_no_change
    )


def test_long_disorder_treats_lengths_below_two_as_fractions():
    # int(1.5) <= 1, so 1.5 means 1.5 * 4 = 6 tokens, which is longer than the list.
    assert long_disorder([0, 1, 2, 3], p=1.0, length=1.5) == [0, 1, 2, 3]
    # An odd absolute length rounds up to the next even number: 3 -> 4.
    assert long_disorder(list(range(6)), p=1.0, length=3) == [2, 3, 0, 1, 4, 5]


def test_short_disorder_swaps_the_last_pair_for_any_trigram_kind():
    assert short_disorder(["a", "b"], p=[0, 0, 1, 0, 0]) == ["b", "a"]
    assert short_disorder(list("abcd"), p=[0, 0, 0, 1, 0]) == ["c", "a", "b", "d"]
    assert short_disorder(list("abcde"), p=[0, 0, 0, 0, 1]) == ["b", "c", "a", "e", "d"]


def test_tuples_and_arrays_are_accepted_and_a_list_is_returned():
    assert deleting(("a", "b"), p=0.0) == ["a", "b"]
    assert masking(np.arange(3), p=1.0, mask=-1) == [-1, -1, -1]


# --- properties -----------------------------------------------------------------------------------

token_lists = st.lists(st.one_of(st.integers(), st.text(max_size=3)), max_size=40)
seeds = st.integers(0, 2**32 - 1)
probabilities = st.floats(0, 1)
random_sources = st.builds(
    lambda seed, modern: np.random.default_rng(seed) if modern else np.random.RandomState(seed),
    seeds,
    st.booleans(),
)
distributions = (
    st.lists(st.integers(0, 10), min_size=1, max_size=5)
    .filter(any)
    .map(lambda weights: [w / sum(weights) for w in weights])
)


def is_subsequence(part, whole):
    remaining = iter(whole)
    return all(any(item == candidate for candidate in remaining) for item in part)


@settings(max_examples=60, deadline=None)
@given(tokens=token_lists, p=probabilities, rng=random_sources)
def test_masking_keeps_the_length_and_only_writes_the_mask(tokens, p, rng):
    original = list(tokens)
    mask = object()
    masked = masking(tokens, p=p, mask=mask, rng=rng)
    assert tokens == original
    assert len(masked) == len(tokens)
    assert all(new is mask or new == old for new, old in zip(masked, tokens))


@settings(max_examples=60, deadline=None)
@given(tokens=token_lists, p=probabilities, rng=random_sources)
def test_deleting_keeps_the_order_and_never_adds(tokens, p, rng):
    original = list(tokens)
    kept = deleting(tokens, p=p, rng=rng)
    assert tokens == original
    assert len(kept) <= len(tokens)
    assert is_subsequence(kept, tokens)


@settings(max_examples=60, deadline=None)
@given(tokens=token_lists, p_ng=distributions, rng=random_sources, data=st.data())
def test_n_gram_sampling_returns_a_contiguous_slice(tokens, p_ng, rng, data):
    l_ng = data.draw(st.lists(st.integers(1, 50), min_size=len(p_ng), max_size=len(p_ng)))
    original = list(tokens)
    span = n_gram_sampling(tokens, p_ng=p_ng, l_ng=l_ng, rng=rng)
    assert tokens == original
    assert any(tokens[start : start + len(span)] == span for start in range(len(tokens) + 1))
    assert len(span) in l_ng or len(span) == len(tokens)


@settings(max_examples=60, deadline=None)
@given(tokens=st.lists(st.integers(), max_size=40), rng=random_sources, data=st.data())
def test_short_disorder_returns_a_permutation(tokens, rng, data):
    p = data.draw(
        st.lists(st.integers(0, 10), min_size=5, max_size=5)
        .filter(any)
        .map(lambda weights: [w / sum(weights) for w in weights])
    )
    original = list(tokens)
    disordered = short_disorder(tokens, p=p, rng=rng)
    assert tokens == original
    assert sorted(disordered) == sorted(tokens)


@settings(max_examples=60, deadline=None)
@given(
    tokens=st.lists(st.integers(), max_size=40),
    p=probabilities,
    length=st.one_of(st.integers(1, 30), st.floats(0.01, 1.99)),
    rng=random_sources,
)
def test_long_disorder_returns_a_permutation(tokens, p, length, rng):
    original = list(tokens)
    disordered = long_disorder(tokens, p=p, length=length, rng=rng)
    assert tokens == original
    assert sorted(disordered) == sorted(tokens)


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: masking(["a"], p=1.5),
            ValueError,
            r"`p` must be a probability in \[0, 1\], got 1\.5",
        ),
        (
            lambda: masking(["a"], p=-0.1),
            ValueError,
            r"`p` must be a probability in \[0, 1\], got -0\.1",
        ),
        (
            lambda: masking(["a"], p=float("nan")),
            ValueError,
            r"`p` must be a probability .* got nan",
        ),
        (
            lambda: masking(["a"], p="0.1"),
            TypeError,
            r"`p` must be a probability in \[0, 1\], got '0\.1'",
        ),
        (lambda: deleting(["a"], p=2), ValueError, r"`p` must be a probability in \[0, 1\], got 2"),
        (lambda: long_disorder(["a"], p=True), TypeError, r"`p` must be a probability .* got True"),
        (
            lambda: masking("a cat", p=0.1),
            TypeError,
            r"`tokens` must be a sequence of tokens .* got a str",
        ),
        (
            lambda: deleting(3, p=0.1),
            TypeError,
            r"`tokens` must be a sequence of tokens .* got int",
        ),
        (
            lambda: masking(["a"], rng=np.random),
            TypeError,
            r"`rng` must be a numpy\.random\.Generator, a numpy\.random\.RandomState or None, "
            r"got module",
        ),
        (
            lambda: n_gram_sampling(["a"], p_ng=[0.5, 0.5], l_ng=[1]),
            ValueError,
            r"`l_ng` and `p_ng` must have the same length, "
            r"got 1 span lengths \[1\] for 2 probabilities",
        ),
        (
            lambda: n_gram_sampling(["a"], p_ng=[0.5, 0.4], l_ng=[1, 2]),
            ValueError,
            r"`p_ng` must sum to 1, got \[0\.5, 0\.4\] \(sum 0\.9\)",
        ),
        (
            lambda: n_gram_sampling(["a"], p_ng=[1.5, -0.5], l_ng=[1, 2]),
            ValueError,
            r"`p_ng\[0\]` must be a probability in \[0, 1\], got 1\.5",
        ),
        (
            lambda: n_gram_sampling(["a"], p_ng=[], l_ng=[]),
            ValueError,
            r"`p_ng` must hold at least one probability",
        ),
        (
            lambda: n_gram_sampling(["a"], p_ng=0.2),
            TypeError,
            r"`p_ng` must be a sequence of probabilities, got float",
        ),
        (
            lambda: n_gram_sampling(["a"], p_ng=[1.0], l_ng=3),
            TypeError,
            r"`l_ng` must be a sequence of span lengths, got int",
        ),
        (
            lambda: n_gram_sampling(["a"], p_ng=[1.0], l_ng=[0]),
            ValueError,
            r"`l_ng\[0\]` must be a span length of at least 1, got 0",
        ),
        (
            lambda: n_gram_sampling(["a"], p_ng=[1.0], l_ng=[2.5]),
            TypeError,
            r"`l_ng\[0\]` must be an int, got 2\.5 of type float",
        ),
        (
            lambda: short_disorder(["a"], p=[0.5, 0.5]),
            ValueError,
            r"`p` must hold 5 probabilities, one per disorder kind "
            r"\(keep, bac, cba, cab, bca\), got 2",
        ),
        (lambda: short_disorder(["a"], p=[0.5, 0.1, 0, 0, 0]), ValueError, r"`p` must sum to 1"),
        (
            lambda: short_disorder(["a"], p=[2, -1, 0, 0, 0]),
            ValueError,
            r"`p\[0\]` must be a probability",
        ),
        (
            lambda: long_disorder(["a"], length=0),
            ValueError,
            r"`length` must be a positive number .* got 0",
        ),
        (
            lambda: long_disorder(["a"], length=-3),
            ValueError,
            r"`length` must be a positive number .* got -3",
        ),
        (
            lambda: long_disorder(["a"], length=float("inf")),
            ValueError,
            r"`length` must be a positive number .* got inf",
        ),
        (
            lambda: long_disorder(["a"], length="20"),
            TypeError,
            r"`length` must be a positive number, got '20' of type str",
        ),
    ],
)
def test_bad_arguments_raise_errors_that_name_them(call, error, match):
    with pytest.raises(error, match=match):
        call()
