"""Tests of textbrewer.losses against slow implementations written straight from SPEC §6."""

import math

import pytest
import torch

from textbrewer import _loss_chunks
from textbrewer.losses import (
    att_ce_loss,
    att_ce_mean_loss,
    att_mse_loss,
    att_mse_sum_loss,
    cos_loss,
    fsp_loss,
    hid_mse_loss,
    kd_ce_loss,
    kd_kl_loss,
    kd_mse_loss,
    kd_reverse_kl_loss,
    mmd_loss,
    pkd_loss,
)

PADDING = -1e-3
B, H, L, D = 2, 3, 5, 4
MASK = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])


@pytest.fixture(autouse=True, params=["plain", "memory"])
def path(request, monkeypatch):
    """Every test runs on both implementations: the plain autograd formulas the losses choose
    for small inputs, and the memory-saving functions they choose for large ones (forced here
    by thresholds of 0)."""
    if request.param == "memory":
        monkeypatch.setattr(_loss_chunks, "_PLAIN_MAX_ELEMENTS", 0)
        monkeypatch.setattr(_loss_chunks, "_PLAIN_MAX_SQUARES", 0)
        monkeypatch.setattr(_loss_chunks, "_PLAIN_MAX_ATTENTION", 0)
    return request.param


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: a second intra-op thread only adds wake-up latency (ms per softmax when the
    machine is busy), so these tests run on one and restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -------------------------------------------------------------------------------------------------
# Slow references: explicit loops over rows / batch items / heads, straight from the formulas
# -------------------------------------------------------------------------------------------------


def ref_log_softmax(row):
    return row - torch.logsumexp(row, 0)


def ref_row_temperatures(temperature, rows):
    if isinstance(temperature, torch.Tensor) and temperature.dim() > 0:
        return list(temperature.reshape(-1))
    return [temperature] * rows


def ref_kd(kind, S, T, temperature):
    classes = S.size(-1)
    s_rows, t_rows = S.reshape(-1, classes), T.reshape(-1, classes)
    temperatures = ref_row_temperatures(temperature, s_rows.size(0))
    values = []
    for s, t, tau in zip(s_rows, t_rows, temperatures):
        log_q, log_p = ref_log_softmax(s / tau), ref_log_softmax(t / tau)
        if kind == "ce":
            values.append(-(log_p.exp() * log_q).sum())
        elif kind == "kl":
            values.append((log_p.exp() * (log_p - log_q)).sum())
        elif kind == "reverse_kl":
            values.append((log_q.exp() * (log_q - log_p)).sum())
        else:  # mse: the row's sum of squares; averaged over every element below
            values.append(((s / tau - t / tau) ** 2).sum() / classes)
    return torch.stack(values).mean()


def as_heads(x):
    return x if x.dim() == 4 else x.unsqueeze(1)


def zero_padding(x):
    return torch.where(x <= PADDING, torch.zeros_like(x), x)


def ref_att_mse(S, T, mask=None):
    if mask is None:
        return ((zero_padding(S) - zero_padding(T)) ** 2).sum() / S.numel()
    S4, T4 = as_heads(S), as_heads(T)
    numerator = denominator = 0
    for b in range(S4.size(0)):
        m = mask[b].double()
        for h in range(S4.size(1)):
            numerator = numerator + ((S4[b, h] - T4[b, h]) ** 2 * torch.outer(m, m)).sum()
            denominator = denominator + m.sum() ** 2
    return numerator / denominator


def ref_att_mse_sum(S, T, mask=None):
    if S.dim() == 4:
        S, T = S.sum(1), T.sum(1)
    return ref_att_mse(S, T, mask)


def ref_att_ce(S, T, mask=None):
    if mask is None:
        keys = S.size(-1)
        values = []
        for s, t in zip(S.reshape(-1, keys), T.reshape(-1, keys)):
            P = torch.softmax(t, 0) * (t > PADDING)
            values.append(-(P * ref_log_softmax(s)).sum())
        return torch.stack(values).mean()
    S4, T4 = as_heads(S), as_heads(T)
    numerator = denominator = 0
    for b in range(S4.size(0)):
        m = mask[b].double()
        for h in range(S4.size(1)):
            for q in range(S4.size(2)):
                P = torch.softmax(T4[b, h, q], 0)
                row = -(P * ref_log_softmax(S4[b, h, q]) * m).sum()
                numerator = numerator + m[q] * row
                denominator = denominator + m[q]
    return numerator / denominator


def ref_att_ce_mean(S, T, mask=None):
    if S.dim() == 4:
        S, T = S.mean(1), T.mean(1)
    return ref_att_ce(S, T, mask)


def ref_hid_mse(S, T, mask=None):
    if mask is None:
        return ((S - T) ** 2).sum() / S.numel()
    numerator = 0
    for b in range(S.size(0)):
        for pos in range(S.size(1)):
            numerator = numerator + mask[b, pos] * ((S[b, pos] - T[b, pos]) ** 2).sum()
    return numerator / (mask.sum() * S.size(-1))


def ref_cos(S, T, mask=None):
    keep = torch.ones(S.shape[:-1], dtype=torch.bool) if mask is None else mask.bool()
    values = []
    for s, t in zip(S[keep], T[keep]):
        values.append(1 - (s * t).sum() / (s.norm() * t.norm()))
    return torch.stack(values).mean()


def ref_pkd(S, T, mask=None):
    if S.dim() == 3:
        S, T = S[:, 0], T[:, 0]
    values = [((s / s.norm() - t / t.norm()) ** 2).sum() for s, t in zip(S, T)]
    return torch.stack(values).mean()


def ref_fsp(S, T, mask=None):
    def gram(x0, x1, b):
        m = torch.ones(x0.size(1), dtype=x0.dtype) if mask is None else mask[b].to(x0.dtype)
        return torch.einsum("l,li,lj->ij", m, x0[b], x1[b]) / m.sum()

    squares = [((gram(*S, b) - gram(*T, b)) ** 2).sum() for b in range(S[0].size(0))]
    return sum(squares) / (S[0].size(0) * S[0].size(2) * S[1].size(2))


def ref_mmd(S, T, mask=None):
    numerator = denominator = 0
    for b in range(S[0].size(0)):
        if mask is None:
            G_S = torch.einsum("qd,kd->qk", S[0][b], S[1][b]) / S[0].size(-1)
            G_T = torch.einsum("qd,kd->qk", T[0][b], T[1][b]) / T[0].size(-1)
            numerator = numerator + ((G_S - G_T) ** 2).sum()
            denominator = denominator + G_S.numel()
        else:
            m = mask[b].double()
            G_S = torch.einsum("qd,kd->qk", S[0][b], S[1][b]) / S[0].size(1)
            G_T = torch.einsum("qd,kd->qk", T[0][b], T[1][b]) / T[0].size(1)
            numerator = numerator + ((G_S - G_T) ** 2 * torch.outer(m, m)).sum()
            denominator = denominator + m.sum() ** 2
    return numerator / denominator


# -------------------------------------------------------------------------------------------------
# Inputs
# -------------------------------------------------------------------------------------------------


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def attention_inputs(seed=0, shape=(B, H, L, L), positive=False, padded=True):
    """Scores with -10000 at masked keys and some -5e-4 entries that must not be zeroed.

    ``positive``: uniform [0, 1) scores and no padding; ``padded=False``: no -10000 entries, so the
    masked keys' teacher probabilities are not ~0 and only the mask removes them.
    """
    g = generator(seed)
    pair = []
    for _ in range(2):
        scores = torch.rand(shape, generator=g) if positive else torch.randn(shape, generator=g)
        scores = scores.double()
        scores[..., 1, 2] = -5e-4
        if padded and not positive:
            keys = MASK.reshape(B, *[1] * (len(shape) - 2), L)
            scores = scores.masked_fill(keys == 0, -10000.0)
        pair.append(scores)
    return pair[0].requires_grad_(), pair[1]


def hidden_inputs(seed=0, shape=(B, L, D)):
    g = generator(seed)
    S = torch.randn(shape, generator=g, dtype=torch.float64).requires_grad_()
    return S, torch.randn(shape, generator=g, dtype=torch.float64)


def pair_inputs(seed=0, dims=(D, D)):
    g = generator(seed)

    def tensor(dim, grad):
        return torch.randn(B, L, dim, generator=g, dtype=torch.float64).requires_grad_(grad)

    return (tensor(dims[0], True), tensor(dims[0], True)), (
        tensor(dims[1], False),
        tensor(dims[1], False),
    )


def students(S):
    return list(S) if isinstance(S, (list, tuple)) else [S]


def grads(loss, S):
    return torch.autograd.grad(loss, students(S))


ATTENTION = [
    (att_mse_loss, ref_att_mse),
    (att_mse_sum_loss, ref_att_mse_sum),
    (att_ce_loss, ref_att_ce),
    (att_ce_mean_loss, ref_att_ce_mean),
]
HIDDEN = [(hid_mse_loss, ref_hid_mse), (cos_loss, ref_cos), (pkd_loss, ref_pkd)]
PAIRS = [(fsp_loss, ref_fsp), (mmd_loss, ref_mmd)]
INTERMEDIATE = (
    [(fn, ref, attention_inputs) for fn, ref in ATTENTION]
    + [(fn, ref, hidden_inputs) for fn, ref in HIDDEN]
    + [(fn, ref, pair_inputs) for fn, ref in PAIRS]
)
KD = [
    (kd_ce_loss, "ce"),
    (kd_kl_loss, "kl"),
    (kd_reverse_kl_loss, "reverse_kl"),
    (kd_mse_loss, "mse"),
]


def ids(params):
    return [p[0].__name__ for p in params]


# -------------------------------------------------------------------------------------------------
# Values and gradients against the references (float64)
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_mask", [False, True], ids=["no_mask", "mask"])
@pytest.mark.parametrize(("loss", "reference", "make"), INTERMEDIATE, ids=ids(INTERMEDIATE))
def test_intermediate_loss_matches_reference(loss, reference, make, with_mask):
    S, T = make()
    mask = MASK if with_mask else None
    value, expected = loss(S, T, mask=mask), reference(S, T, mask)
    assert value.dtype == torch.float64
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    for got, want in zip(grads(value, S), grads(expected, S)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("loss", "reference"), ATTENTION, ids=ids(ATTENTION))
def test_masked_attention_losses_match_reference_without_padding_scores(loss, reference):
    S, T = attention_inputs(padded=False)
    value, expected = loss(S, T, mask=MASK), reference(S, T, MASK)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=0)
    torch.testing.assert_close(grads(value, S)[0], grads(expected, S)[0], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize(("loss", "reference"), ATTENTION, ids=ids(ATTENTION))
def test_attention_losses_match_reference_on_3d_inputs(loss, reference):
    S, T = attention_inputs(shape=(B, L, L))
    for mask in (None, MASK):
        torch.testing.assert_close(loss(S, T, mask), reference(S, T, mask), rtol=1e-10, atol=0)


@pytest.mark.parametrize("loss", [att_mse_loss, att_ce_loss], ids=lambda f: f.__name__)
def test_unmasked_attention_losses_accept_any_rank(loss):
    g = generator(3)
    S, T = torch.randn(7, L, generator=g).double(), torch.randn(7, L, generator=g).double()
    reference = ref_att_mse if loss is att_mse_loss else ref_att_ce
    torch.testing.assert_close(loss(S, T), reference(S, T), rtol=1e-10, atol=0)


def test_unmasked_attention_mse_zeroes_only_entries_at_or_below_threshold():
    S = torch.tensor([[-10000.0, -1e-3, -5e-4, 1.0]], dtype=torch.float64)
    T = torch.zeros_like(S)
    # -10000 and -1e-3 become 0; -5e-4 and 1 stay: (0 + 0 + 2.5e-7 + 1) / 4
    assert att_mse_loss(S, T).item() == pytest.approx((5e-4**2 + 1.0) / 4, rel=1e-12)


def test_unmasked_attention_ce_zeroes_teacher_probability_of_padded_keys():
    S = torch.tensor([[0.0, 0.0, 0.0]], dtype=torch.float64)
    T = torch.tensor([[0.0, -5e-4, -10000.0]], dtype=torch.float64)
    P = torch.softmax(T[0], 0)
    # log_softmax(S) = -log 3 everywhere; the third key's P is zeroed (it is ~0 anyway), the
    # second's (-5e-4 > -1e-3) is kept.
    expected = (P[0] + P[1]) * math.log(3)
    assert att_ce_loss(S, T).item() == pytest.approx(expected.item(), rel=1e-12)


@pytest.mark.parametrize("temperature_kind", ["float", "int", "0-dim", "per-row"])
@pytest.mark.parametrize("shape", [(3, 7), (2, 3, 7)], ids=["2d", "3d"])
@pytest.mark.parametrize(("loss", "kind"), KD, ids=ids(KD))
def test_kd_loss_matches_reference(loss, kind, shape, temperature_kind):
    g = generator(1)
    S = (3 * torch.randn(shape, generator=g, dtype=torch.float64)).requires_grad_()
    T = 3 * torch.randn(shape, generator=g, dtype=torch.float64)
    temperature = {
        "float": 2.5,
        "int": 4,
        "0-dim": torch.tensor(2.5, dtype=torch.float64),
        "per-row": 0.5 + torch.rand(shape[:-1], generator=g, dtype=torch.float64) * 3,
    }[temperature_kind]
    value, expected = loss(S, T, temperature), ref_kd(kind, S, T, temperature)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(grads(value, S)[0], grads(expected, S)[0], rtol=1e-9, atol=1e-14)


def test_kd_losses_default_to_temperature_one():
    g = generator(2)
    S, T = torch.randn(4, 6, generator=g).double(), torch.randn(4, 6, generator=g).double()
    for loss, kind in KD:
        assert loss(S, T).item() == pytest.approx(ref_kd(kind, S, T, 1).item(), rel=1e-12)


# -------------------------------------------------------------------------------------------------
# Hand-computed values
# -------------------------------------------------------------------------------------------------


def test_kd_ce_hand_computed():
    # Teacher (log 3, 0) gives p = (3/4, 1/4); a uniform student gives -Σ p log(1/2) = log 2.
    S = torch.zeros(1, 2, dtype=torch.float64)
    T = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)
    assert kd_ce_loss(S, T).item() == pytest.approx(math.log(2), rel=1e-14)
    # With T = 2 and doubled teacher logits the teacher distribution is the same.
    assert kd_ce_loss(S, 2 * T, 2).item() == pytest.approx(math.log(2), rel=1e-14)
    # Student equal to teacher: the cross-entropy is the teacher's entropy, and the KL is 0.
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert kd_ce_loss(T, T).item() == pytest.approx(entropy, rel=1e-14)
    assert kd_kl_loss(S, T).item() == pytest.approx(math.log(2) - entropy, rel=1e-12)


def test_kd_mse_hand_computed():
    S = torch.tensor([[2.0, 4.0]])
    T = torch.tensor([[0.0, 0.0]])
    # ((2/2)^2 + (4/2)^2) / 2 = 2.5
    assert kd_mse_loss(S, T, 2).item() == pytest.approx(2.5)


def test_hidden_mse_hand_computed():
    S = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    T = torch.zeros_like(S)
    assert hid_mse_loss(S, T).item() == pytest.approx((1 + 4 + 9 + 16) / 4)
    # Only position 0 is kept: (1 + 4) / (Σm · D) = 5 / 2.
    assert hid_mse_loss(S, T, mask=torch.tensor([[1, 0]])).item() == pytest.approx(2.5)


def test_attention_mse_hand_computed_denominator():
    # (1, 1, 2, 2) scores, one kept position: only entry (0, 0) counts, divided by (Σm)² = 1.
    S = torch.tensor([[[[3.0, 5.0], [7.0, 9.0]]]])
    T = torch.zeros_like(S)
    assert att_mse_loss(S, T, mask=torch.tensor([[1, 0]])).item() == pytest.approx(9.0)
    # Two heads summed: (3 + 3)^2 / Σ_b (Σm)^2 = 36; attention_mse over the heads: 9.
    S2 = S.expand(1, 2, 2, 2)
    assert att_mse_sum_loss(S2, torch.zeros_like(S2), torch.tensor([[1, 0]])).item() == 36.0
    assert att_mse_loss(S2, torch.zeros_like(S2), torch.tensor([[1, 0]])).item() == 9.0


# -------------------------------------------------------------------------------------------------
# Masks
# -------------------------------------------------------------------------------------------------


def perturb_masked_positions(S, T, make):
    """Copies of S, T changed at every masked position (keys of attention kept very negative)."""
    g = generator(11)
    kept = MASK.bool()

    def change(x, scale):
        x = x.detach().clone()
        if make is attention_inputs:
            rows = ~kept.reshape(B, *[1] * (x.dim() - 3), L, 1)
            keys = ~kept.reshape(B, *[1] * (x.dim() - 3), 1, L)
            x = torch.where(rows.expand_as(x), torch.randn(x.shape, generator=g).double() * 7, x)
            # Masked keys keep a padding score, a different one: exp() of both is exactly 0.
            return torch.where(keys.expand_as(x), torch.full_like(x, -30000.0 * scale), x)
        noise = torch.randn(x.shape, generator=g, dtype=x.dtype) * 5
        return torch.where((~kept).unsqueeze(-1).expand_as(x), noise, x)

    if isinstance(S, tuple):
        return tuple(change(s, 1).requires_grad_() for s in S), tuple(change(t, 2) for t in T)
    return change(S, 1).requires_grad_(), change(T, 2)


@pytest.mark.parametrize(("loss", "reference", "make"), INTERMEDIATE, ids=ids(INTERMEDIATE))
def test_masked_positions_have_no_effect(loss, reference, make):
    S, T = make()
    S2, T2 = perturb_masked_positions(S, T, make)
    assert not torch.equal(students(S)[0], students(S2)[0])
    value, changed = loss(S, T, mask=MASK), loss(S2, T2, mask=MASK)
    torch.testing.assert_close(changed, value, rtol=1e-12, atol=1e-15)
    for got, want in zip(grads(changed, S2), grads(value, S)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(("loss", "reference", "make"), INTERMEDIATE, ids=ids(INTERMEDIATE))
def test_mask_dtype_does_not_matter(loss, reference, make):
    S, T = make()
    values = [loss(S, T, mask=MASK.to(dtype)) for dtype in (torch.bool, torch.int64, torch.float32)]
    for value in values[1:]:
        torch.testing.assert_close(value, values[0], rtol=1e-14, atol=0)


# Where SPEC §6 gives the same number for no mask and an all-ones mask (attention inputs above the
# padding threshold, so that the no-mask zeroing has nothing to do). mmd is excluded: its masked
# form divides by L instead of D (tested below).
NO_MASK_EQUALS_ONES = [
    (att_mse_loss, lambda: attention_inputs(positive=True)),
    (att_mse_sum_loss, lambda: attention_inputs(positive=True)),
    (att_ce_loss, lambda: attention_inputs(positive=True)),
    (att_ce_mean_loss, lambda: attention_inputs(positive=True)),
    (hid_mse_loss, hidden_inputs),
    (cos_loss, hidden_inputs),
    (pkd_loss, hidden_inputs),
    (fsp_loss, pair_inputs),
]


@pytest.mark.parametrize(("loss", "make"), NO_MASK_EQUALS_ONES, ids=ids(NO_MASK_EQUALS_ONES))
def test_no_mask_equals_all_ones_mask(loss, make):
    S, T = make()
    ones = torch.ones(B, L, dtype=torch.long)
    torch.testing.assert_close(loss(S, T, mask=ones), loss(S, T), rtol=1e-12, atol=0)


def test_mmd_all_ones_mask_rescales_by_length_over_hidden_size():
    S, T = pair_inputs(dims=(D, D))
    ones = torch.ones(B, L, dtype=torch.long)
    # No mask: G / D; all-ones mask: G / L and the same denominator B·L².
    ratio = mmd_loss(S, T) / mmd_loss(S, T, mask=ones)
    assert ratio.item() == pytest.approx((L / D) ** 2, rel=1e-12)


def test_attention_losses_with_mask_do_not_zero_padding_scores():
    S, T = attention_inputs()
    ones = torch.ones(B, L, dtype=torch.long)
    # With a mask nothing is zeroed: the scores <= -1e-3 enter as they are, unlike without one.
    assert att_mse_loss(S, T, mask=ones).item() != pytest.approx(att_mse_loss(S, T).item())
    torch.testing.assert_close(
        att_mse_loss(S, T, mask=ones), ((S - T) ** 2).mean(), rtol=1e-12, atol=0
    )


def test_mmd_accepts_different_hidden_sizes():
    S, T = pair_inputs(dims=(3, 6))
    for mask in (None, MASK):
        torch.testing.assert_close(mmd_loss(S, T, mask), ref_mmd(S, T, mask), rtol=1e-10, atol=0)


# -------------------------------------------------------------------------------------------------
# gradcheck (student and teacher both require grad, so every backward formula is checked)
# -------------------------------------------------------------------------------------------------


def as_gradcheck_inputs(S, T):
    tensors = [x.detach().clone().requires_grad_() for x in students(S) + students(T)]
    half = len(tensors) // 2
    pack = (lambda xs: tuple(xs)) if isinstance(S, tuple) else (lambda xs: xs[0])
    return tensors, lambda *xs: (pack(xs[:half]), pack(xs[half:]))


@pytest.mark.parametrize("with_mask", [False, True], ids=["no_mask", "mask"])
@pytest.mark.parametrize(("loss", "reference", "make"), INTERMEDIATE, ids=ids(INTERMEDIATE))
def test_gradcheck_intermediate(loss, reference, make, with_mask):
    S, T = make(seed=5)
    if make is attention_inputs:
        S = S.detach() / 10  # smaller scores keep the check well conditioned; -10000 stays huge
        S[S < -100] = -10000.0
        T = T / 10
        T[T < -100] = -10000.0
    tensors, unpack = as_gradcheck_inputs(S, T)
    mask = MASK if with_mask else None

    def fn(*xs):
        S_, T_ = unpack(*xs)
        return loss(S_, T_, mask=mask)

    assert torch.autograd.gradcheck(fn, tensors, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("per_row", [False, True], ids=["scalar_T", "per_row_T"])
@pytest.mark.parametrize(("loss", "kind"), KD, ids=ids(KD))
def test_gradcheck_kd(loss, kind, per_row):
    g = generator(6)
    S = torch.randn(2, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    T = torch.randn(2, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    temperature = (1 + torch.rand(2, 3, generator=g, dtype=torch.float64)) if per_row else 2.0
    assert torch.autograd.gradcheck(lambda s, t: loss(s, t, temperature), (S, T))


# -------------------------------------------------------------------------------------------------
# The chunked softmax divergences against the plain formula
# -------------------------------------------------------------------------------------------------


def plain_kd(kind, S, T, temperature):
    if isinstance(temperature, torch.Tensor) and temperature.dim() > 0:
        temperature = temperature.unsqueeze(-1)
    log_q = torch.log_softmax(S / temperature, -1)
    log_p = torch.log_softmax(T / temperature, -1)
    if kind == "ce":
        return -(torch.softmax(T / temperature, -1) * log_q).sum(-1).mean()
    if kind == "kl":
        return (torch.softmax(T / temperature, -1) * (log_p - log_q)).sum(-1).mean()
    return (torch.softmax(S / temperature, -1) * (log_q - log_p)).sum(-1).mean()


CHUNKED = KD[:3]


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 7 rows of 50 classes, so 33 rows make 5 chunks, the last one of 5 rows."""
    monkeypatch.setattr(_loss_chunks, "_CHUNK_ELEMENTS", 7 * 50)
    monkeypatch.setattr(_loss_chunks, "_MIN_CHUNK_ELEMENTS", 7 * 50)
    monkeypatch.setattr(_loss_chunks, "_PLAIN_MAX_ELEMENTS", 0)  # the chunked path at any size
    bounds = _loss_chunks._chunk_bounds(torch.empty(33, 50))
    assert bounds[-1] == (28, 33)
    assert len(bounds) == 5


@pytest.mark.parametrize("teacher_requires_grad", [False, True], ids=["frozen_T", "trained_T"])
@pytest.mark.parametrize("per_row", [False, True], ids=["scalar_T", "per_row_T"])
@pytest.mark.parametrize(("loss", "kind"), CHUNKED, ids=ids(CHUNKED))
def test_chunked_divergence_equals_plain_formula_float32(
    small_chunks, loss, kind, per_row, teacher_requires_grad
):
    g = generator(7)
    S = (3 * torch.randn(3, 11, 50, generator=g)).requires_grad_()
    T = (3 * torch.randn(3, 11, 50, generator=g)).requires_grad_(teacher_requires_grad)
    temperature = 0.5 + 3 * torch.rand(3, 11, generator=g) if per_row else 2.0
    value, plain = loss(S, T, temperature), plain_kd(kind, S, T, temperature)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, plain, rtol=1e-6, atol=0)
    inputs = [S, T] if teacher_requires_grad else [S]
    for got, want in zip(torch.autograd.grad(value, inputs), torch.autograd.grad(plain, inputs)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6 * want.abs().max().item())


@pytest.mark.parametrize(("loss", "kind"), CHUNKED, ids=ids(CHUNKED))
def test_chunked_divergence_is_exact_in_float64(small_chunks, loss, kind):
    g = generator(8)
    S = (3 * torch.randn(33, 50, generator=g, dtype=torch.float64)).requires_grad_()
    T = (3 * torch.randn(33, 50, generator=g, dtype=torch.float64)).requires_grad_()
    value, plain = loss(S, T, 3.0), plain_kd(kind, S, T, 3.0)
    torch.testing.assert_close(value, plain, rtol=1e-13, atol=0)
    for got, want in zip(torch.autograd.grad(value, [S, T]), torch.autograd.grad(plain, [S, T])):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-17)


def test_chunked_attention_ce_equals_reference(monkeypatch):
    # 40 elements a chunk: one batch item (75 scores) a chunk with a mask, 8 rows of 5 without.
    monkeypatch.setattr(_loss_chunks, "_CHUNK_ELEMENTS", 40)
    monkeypatch.setattr(_loss_chunks, "_MIN_CHUNK_ELEMENTS", 40)
    S, T = attention_inputs()
    assert len(_loss_chunks._chunk_bounds(S)) == B
    assert len(_loss_chunks._chunk_bounds(S.reshape(-1, L))) == 4
    for mask in (None, MASK):
        value = att_ce_loss(S, T, mask)
        torch.testing.assert_close(value, ref_att_ce(S, T, mask), rtol=1e-10, atol=0)


@pytest.mark.parametrize(("loss", "kind"), KD, ids=ids(KD))
def test_kd_losses_accept_non_contiguous_logits(loss, kind):
    g = generator(15)
    base = torch.randn(5, 2, 7, generator=g, dtype=torch.float64, requires_grad=True)
    S, T = base.transpose(0, 1), torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    assert not S.is_contiguous()
    value, expected = loss(S, T, 2.0), ref_kd(kind, S, T, 2.0)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(grads(value, base)[0], grads(expected, base)[0], rtol=1e-10, atol=0)


def test_teacher_gradient_is_not_computed_when_not_required():
    g = generator(9)
    S = torch.randn(4, 6, generator=g, requires_grad=True)
    T = torch.randn(4, 6, generator=g)
    kd_ce_loss(S, T).backward()
    assert S.grad is not None
    assert T.grad is None


@pytest.mark.parametrize(("loss", "kind"), CHUNKED, ids=ids(CHUNKED))
def test_divergence_saves_only_its_inputs(small_chunks, loss, kind):
    g = generator(10)
    S = torch.randn(2, 3, 40, generator=g, requires_grad=True)
    T = torch.randn(2, 3, 40, generator=g)
    value = loss(S, T, torch.full((2, 3), 2.0))
    node = find_node(value.grad_fn, "_SoftmaxDivergenceSumBackward")
    saved = [x for x in node.saved_tensors if x is not None]
    big = [x for x in saved if x.numel() == S.numel()]
    assert {x.data_ptr() for x in big} == {S.data_ptr(), T.data_ptr()}
    assert all(x.numel() <= 6 for x in saved if x.numel() != S.numel())


@pytest.mark.parametrize("loss", [att_mse_loss, att_ce_loss], ids=lambda f: f.__name__)
def test_masked_attention_losses_save_only_inputs_and_mask_views(loss, path):
    if path == "plain":
        pytest.skip("the plain formula saves what autograd saves")
    S, T = attention_inputs()
    value = loss(S, T, mask=MASK)
    name = "_SquaredErrorSumBackward" if loss is att_mse_loss else "_SoftmaxDivergenceSumBackward"
    saved = [x for x in find_node(value.grad_fn, name).saved_tensors if x is not None]
    big = [x for x in saved if x.numel() >= S.numel()]
    assert {x.data_ptr() for x in big} == {S.data_ptr(), T.data_ptr()}
    assert all(x.numel() <= MASK.numel() for x in saved if x.numel() < S.numel())


def find_node(grad_fn, name):
    pending = [grad_fn]
    while pending:
        node = pending.pop()
        if type(node).__name__ == name:
            return node
        pending.extend(next_fn for next_fn, _ in node.next_functions if next_fn is not None)
    raise AssertionError(f"no {name} in the graph")


@pytest.mark.parametrize("loss", [kd_kl_loss, kd_reverse_kl_loss], ids=lambda f: f.__name__)
def test_kl_is_zero_for_equal_inputs(loss):
    S = 5 * torch.randn(3, 4, 100, generator=generator(12))
    value = loss(S, S.clone(), 2.0)
    assert value.abs().item() < 1e-6
    assert loss(S.double(), S.double(), 2.0).abs().item() < 1e-14


def test_kl_has_the_student_gradient_of_ce():
    g = generator(13)
    S = torch.randn(4, 9, generator=g, dtype=torch.float64, requires_grad=True)
    T = torch.randn(4, 9, generator=g, dtype=torch.float64)
    (ce_grad,) = torch.autograd.grad(kd_ce_loss(S, T, 3), S)
    (kl_grad,) = torch.autograd.grad(kd_kl_loss(S, T, 3), S)
    torch.testing.assert_close(kl_grad, ce_grad, rtol=1e-12, atol=1e-16)


def test_0_dim_temperature_that_requires_grad_gets_its_gradient_in_mse():
    g = generator(16)
    S = torch.randn(4, 9, generator=g, dtype=torch.float64, requires_grad=True)
    T = torch.randn(4, 9, generator=g, dtype=torch.float64)
    temperature = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    value = kd_mse_loss(S, T, temperature)
    (grad,) = torch.autograd.grad(value, temperature)
    # mean((S - T)²) / T², so d/dT = -2 · value / T.
    torch.testing.assert_close(grad, -2 * value.detach() / 2.0, rtol=1e-12, atol=0)


def test_temperature_that_requires_grad_gets_its_gradient():
    g = generator(14)
    S = torch.randn(4, 9, generator=g, dtype=torch.float64, requires_grad=True)
    T = torch.randn(4, 9, generator=g, dtype=torch.float64)
    for loss, kind in KD:
        temperature = torch.full((4,), 2.0, dtype=torch.float64, requires_grad=True)
        value = loss(S, T, temperature)
        expected = ref_kd(kind, S, T, temperature.detach())
        torch.testing.assert_close(value, expected, rtol=1e-12, atol=0)
        value.backward()
        assert temperature.grad is not None
        assert temperature.grad.abs().sum() > 0


@pytest.mark.parametrize(("loss", "kind"), KD, ids=ids(KD))
@pytest.mark.parametrize("shape", [(4,), (2, 3, 1), (3, 2)], ids=str)
def test_bad_temperature_shape_raises(loss, kind, shape):
    S, T = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match=r"temperature of shape .* logits of shape \(2, 3, 5\)"):
        loss(S, T, torch.ones(shape))


# -------------------------------------------------------------------------------------------------
# Contract: every loss
# -------------------------------------------------------------------------------------------------

ALL = [(fn, make) for fn, _, make in INTERMEDIATE] + [
    (
        fn,
        lambda seed=0: (
            3 * torch.randn(2, 3, 7, dtype=torch.float64, generator=generator(seed))
        ).requires_grad_(),
    )
    for fn, _ in KD
]


def contract_inputs(loss, make):
    if loss in [fn for fn, _ in KD]:
        return make(0), make(1).detach()
    return make()


CONTRACT = [(fn, make, None) for fn, make in ALL] + [
    (fn, make, MASK) for fn, _, make in INTERMEDIATE
]


@pytest.mark.parametrize(
    ("loss", "make", "mask"),
    CONTRACT,
    ids=[f"{fn.__name__}-{'mask' if m is not None else 'no_mask'}" for fn, _, m in CONTRACT],
)
def test_contract_scalar_finite_and_differentiable(loss, make, mask):
    S, T = contract_inputs(loss, make)
    value = loss(S, T, 2.0) if loss in [fn for fn, _ in KD] else loss(S, T, mask=mask)
    assert value.dim() == 0
    assert torch.isfinite(value)
    for grad in grads(value, S):
        assert torch.isfinite(grad).all()
        assert grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("loss", "make"), ALL, ids=ids(ALL))
def test_low_precision_inputs_are_computed_in_float32(loss, make, dtype):
    S, T = contract_inputs(loss, make)

    def cast(x, to):
        if isinstance(x, tuple):
            return tuple(cast(t, to) for t in x)
        return x.detach().to(to).requires_grad_(x.requires_grad)

    S_low, T_low = cast(S, dtype), cast(T, dtype)
    S_32, T_32 = cast(S_low, torch.float32), cast(T_low, torch.float32)
    value, reference = loss(S_low, T_low), loss(S_32, T_32)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, reference, rtol=1e-6, atol=1e-7)
    for got, want, source in zip(grads(value, S_low), grads(reference, S_32), students(S_low)):
        assert got.dtype == dtype
        torch.testing.assert_close(got, want.to(dtype), rtol=1e-2, atol=1e-4)
        assert source.dtype == dtype


@pytest.mark.parametrize(("loss", "make"), ALL, ids=ids(ALL))
def test_autocast_does_not_change_the_result(loss, make):
    S, T = contract_inputs(loss, make)

    def to32(x):
        return (
            tuple(to32(t) for t in x)
            if isinstance(x, tuple)
            else x.detach().float().requires_grad_()
        )

    S, T = to32(S), to32(T)
    expected = loss(S, T)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(S, T)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7)
    for got, want in zip(grads(value, S), grads(expected, S)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)


# -------------------------------------------------------------------------------------------------
# Errors
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "loss",
    [kd_ce_loss, kd_mse_loss, att_mse_loss, att_ce_loss, hid_mse_loss, cos_loss, pkd_loss],
    ids=lambda f: f.__name__,
)
def test_shape_mismatch_raises(loss):
    with pytest.raises(ValueError, match=r"\(2, 3, 4\) differs from the teacher's \(2, 3, 5\)"):
        loss(torch.randn(2, 3, 4), torch.randn(2, 3, 5))


@pytest.mark.parametrize("loss", [att_mse_loss, att_ce_loss], ids=lambda f: f.__name__)
def test_attention_mask_that_does_not_fit_raises(loss):
    S, T = attention_inputs()
    with pytest.raises(ValueError, match=r"mask of shape \(2, 4\) does not fit scores"):
        loss(S, T, mask=torch.ones(2, 4))


def test_hidden_mask_that_does_not_fit_raises():
    S, T = hidden_inputs()
    with pytest.raises(ValueError, match=r"mask of shape \(2, 4\) does not match"):
        hid_mse_loss(S, T, mask=torch.ones(2, 4))


@pytest.mark.parametrize("loss", [fsp_loss, mmd_loss], ids=lambda f: f.__name__)
def test_two_layer_losses_need_pairs(loss):
    S, T = hidden_inputs()
    with pytest.raises(ValueError, match="must be a pair"):
        loss(S, T)
