"""KD objectives beyond 0.2.x (jsd, bce, T² scaling) and logits_mask without a host sync.

Values and gradients are checked in float64 against formulas written out independently here,
row by row; the masked path against the 0.2.x way of selecting rows first.
"""

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from textbrewer import DistillationConfig, _loss_chunks, losses, presets, schedulers
from textbrewer._validation import ConfigError
from textbrewer.distillers._kd import DistillationTerms, select_rows

F64 = torch.float64
BENCH_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_losses.py"


def load_benchmark():
    """benchmarks/bench_losses.py, for its allocation-replaying peak-memory measurement."""
    spec = importlib.util.spec_from_file_location("bench_losses", BENCH_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


MASK = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 1, 1, 0], [0, 0, 0, 0, 1]])
KD_LOSSES = ["ce", "kl", "reverse_kl", "mse", "jsd", "bce"]


@pytest.fixture(autouse=True, params=["plain", "chunked"])
def path(request, monkeypatch):
    """Both implementations: the plain formula (small inputs) and the chunked one (forced)."""
    if request.param == "chunked":
        monkeypatch.setattr(_loss_chunks, "_PLAIN_MAX_ELEMENTS", 0)
        monkeypatch.setattr(_loss_chunks, "_PLAIN_MAX_SQUARES", 0)
        monkeypatch.setattr(_loss_chunks, "_PLAIN_MAX_ATTENTION", 0)
        monkeypatch.setattr(_loss_chunks, "_CHUNK_ELEMENTS", 3 * 7)  # 3 rows of 7 classes a chunk
        monkeypatch.setattr(_loss_chunks, "_MIN_CHUNK_ELEMENTS", 3 * 7)
    return request.param


def logits(*shape, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(*shape, generator=g, dtype=F64)).requires_grad_(grad)


def row_temperatures(temperature, rows):
    if isinstance(temperature, torch.Tensor) and temperature.dim() > 0:
        return [float(t) for t in temperature.reshape(-1)]
    return [float(temperature)] * rows


# -------------------------------------------------------------------------------------------------
# Independent references: one row at a time, the formulas of docs/kd_objectives.rst
# -------------------------------------------------------------------------------------------------


def ref_jsd_row(s, t, beta):
    p, q = torch.softmax(t, 0), torch.softmax(s, 0)
    if beta == 0:
        return (p * (p.log() - q.log())).sum()
    if beta == 1:
        return (q * (q.log() - p.log())).sum()
    m = beta * p + (1 - beta) * q
    return beta * (p * (p / m).log()).sum() + (1 - beta) * (q * (q / m).log()).sum()


def ref_bce_row(s, t):
    y, x = torch.sigmoid(t), torch.sigmoid(s)
    return -(y * x.log() + (1 - y) * (1 - x).log()).mean()


def ref_row(kind, s, t):
    q, p = torch.softmax(s, 0), torch.softmax(t, 0)
    if kind == "ce":
        return -(p * q.log()).sum()
    if kind == "kl":
        return (p * (p.log() - q.log())).sum()
    if kind == "reverse_kl":
        return (q * (q.log() - p.log())).sum()
    if kind == "mse":
        return ((s - t) ** 2).mean()
    if kind == "bce":
        return ref_bce_row(s, t)
    return ref_jsd_row(s, t, 0.5)


def reference(kind, S, T, temperature, mask=None, beta=None):
    classes = S.size(-1)
    rows_S, rows_T = S.reshape(-1, classes), T.reshape(-1, classes)
    taus = row_temperatures(temperature, rows_S.size(0))
    keep = [True] * rows_S.size(0) if mask is None else [bool(k) for k in mask.reshape(-1)]
    values = []
    for s, t, tau, kept in zip(rows_S, rows_T, taus, keep):
        if kept:
            if beta is not None:
                values.append(ref_jsd_row(s / tau, t / tau, beta))
            else:
                values.append(ref_row(kind, s / tau, t / tau))
    return torch.stack(values).mean()


def grads(value, *inputs):
    return torch.autograd.grad(value, inputs)


# -------------------------------------------------------------------------------------------------
# Values and gradients, masks, temperatures
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KD_LOSSES)
@pytest.mark.parametrize("temperature_kind", ["scalar", "per_row"])
@pytest.mark.parametrize("masked", [False, True], ids=["no_mask", "logits_mask"])
def test_kd_loss_equals_the_row_by_row_formula_in_float64(kind, temperature_kind, masked):
    S, T = logits(3, 5, 7, seed=1), logits(3, 5, 7, seed=2)
    temperature = 2.5
    if temperature_kind == "per_row":
        temperature = 0.5 + torch.rand(3, 5, generator=torch.Generator().manual_seed(3), dtype=F64)
    mask = MASK if masked else None
    value = presets.KD_LOSS_MAP[kind](S, T, temperature, logits_mask=mask)
    expected = reference(kind, S, T, temperature, mask)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-14)
    for got, want in zip(grads(value, S, T), grads(expected, S, T)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("kind", KD_LOSSES)
def test_2d_logits_ignore_the_mask_and_match_the_formula(kind):
    S, T = logits(6, 4, seed=4), logits(6, 4, seed=5)
    value = presets.KD_LOSS_MAP[kind](S, T, 3.0, logits_mask=torch.zeros(6, 9))
    torch.testing.assert_close(value, reference(kind, S, T, 3.0), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", KD_LOSSES)
def test_masked_mean_equals_the_selected_rows_of_0_2_x(kind):
    S, T = logits(3, 5, 7, seed=6), logits(3, 5, 7, seed=7)
    loss = presets.KD_LOSS_MAP[kind]
    masked = loss(S, T, 2.0, logits_mask=MASK.bool())
    selected = loss(S[MASK.bool()], T[MASK.bool()], 2.0)
    torch.testing.assert_close(masked, selected, rtol=1e-13, atol=0)
    torch.testing.assert_close(grads(masked, S)[0], grads(selected, S)[0], rtol=1e-12, atol=0)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_jsd_beta_against_the_formula(beta):
    S, T = logits(4, 6, seed=8), logits(4, 6, seed=9)
    value = presets.KD_LOSS_MAP[["jsd", beta]](S, T, 1.5)
    expected = reference("jsd", S, T, 1.5, beta=beta)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-15)
    for got, want in zip(grads(value, S, T), grads(expected, S, T)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-15)


def test_jsd_at_the_limits_of_beta_is_the_closed_form():
    S, T = logits(4, 6, seed=10), logits(4, 6, seed=11)
    kl, reverse = losses.kd_kl_loss(S, T, 2.0), losses.kd_reverse_kl_loss(S, T, 2.0)
    torch.testing.assert_close(losses.kd_jsd_loss(S, T, 2.0, beta=0), kl, rtol=1e-13, atol=0)
    torch.testing.assert_close(losses.kd_jsd_loss(S, T, 2.0, beta=1), reverse, rtol=1e-13, atol=0)
    # ... and the first-order limits of the divergence itself (which vanishes at both ends).
    eps = 1e-7
    near_0 = losses.kd_jsd_loss(S, T, 2.0, beta=eps) / eps
    near_1 = losses.kd_jsd_loss(S, T, 2.0, beta=1 - eps) / eps
    torch.testing.assert_close(near_0, kl, rtol=1e-5, atol=0)
    torch.testing.assert_close(near_1, reverse, rtol=1e-5, atol=0)
    # beta = 0.5 is the symmetric Jensen-Shannon divergence, at most log 2.
    far = losses.kd_jsd_loss(torch.tensor([[0.0, 60.0]], dtype=F64), torch.tensor([[60.0, 0.0]]))
    assert 0 < far.item() <= math.log(2) + 1e-12
    torch.testing.assert_close(far.item(), math.log(2), rtol=1e-12, atol=0)


def test_jsd_is_symmetric_at_one_half_and_zero_for_equal_logits():
    S, T = logits(3, 5, seed=12), logits(3, 5, seed=13)
    torch.testing.assert_close(
        losses.kd_jsd_loss(S, T), losses.kd_jsd_loss(T, S), rtol=1e-13, atol=0
    )
    assert losses.kd_jsd_loss(S, S.detach()).item() == pytest.approx(0, abs=1e-15)


@pytest.mark.parametrize("beta", [-0.1, 1.5, "0.5", True, None])
def test_jsd_rejects_a_beta_outside_0_1(beta):
    with pytest.raises(ValueError, match="beta"):
        losses.jsd_loss_builder(beta)
    with pytest.raises(ValueError, match="beta"):
        losses.kd_jsd_loss(logits(2, 3), logits(2, 3), beta=beta)


def test_bce_hand_computed():
    # One row, one class: y = sigmoid(0) = 1/2, x = 0: -(1/2 log 1/2 + 1/2 log 1/2) = log 2.
    value = losses.kd_bce_loss(torch.zeros(1, 1, dtype=F64), torch.zeros(1, 1, dtype=F64))
    assert value.item() == pytest.approx(math.log(2), abs=1e-15)
    # Classes are independent: a second, saturated class adds a term, not a competition.
    S = torch.tensor([[0.0, 40.0]], dtype=F64)
    T = torch.tensor([[0.0, 40.0]], dtype=F64)
    expected = math.log(2) + (math.log1p(math.exp(-40)) + 40 * (1 - torch.sigmoid(T[0, 1]).item()))
    assert losses.kd_bce_loss(S, T).item() == pytest.approx(expected / 2, rel=1e-12)


@pytest.mark.parametrize("kind", ["jsd", "bce"])
def test_new_losses_accept_low_precision_and_return_float32(kind):
    S, T = logits(2, 3, 7, seed=14).detach(), logits(2, 3, 7, seed=15).detach()
    loss = presets.KD_LOSS_MAP[kind]
    low = loss(S.bfloat16().requires_grad_(), T.bfloat16(), 2.0, logits_mask=MASK[:2, :3])
    exact = loss(S.bfloat16().double(), T.bfloat16().double(), 2.0, logits_mask=MASK[:2, :3])
    assert low.dtype == torch.float32
    torch.testing.assert_close(low.double(), exact, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", KD_LOSSES)
@pytest.mark.parametrize(
    ("mask", "words"),
    [
        (torch.ones(3, 4), ["logits_mask", "(3, 4)", "(3, 5, 7)", "(3, 5)"]),
        (torch.ones(3, 5, 7), ["logits_mask", "(3, 5, 7)"]),
    ],
)
def test_a_mask_that_does_not_fit_names_logits_mask_and_the_shapes(kind, mask, words):
    with pytest.raises(ValueError, match="logits_mask") as error:
        presets.KD_LOSS_MAP[kind](logits(3, 5, 7), logits(3, 5, 7), 2.0, logits_mask=mask)
    for word in words:
        assert word in str(error.value)
    assert "proj" not in str(error.value)


# -------------------------------------------------------------------------------------------------
# Temperature schedulers: detached, masked mean
# -------------------------------------------------------------------------------------------------

SCHEDULERS = [["flsw", 2.0, 1.5], ["cwsm", 1.0]]


@pytest.mark.parametrize("name", SCHEDULERS, ids=lambda n: n[0])
def test_built_in_schedulers_return_a_temperature_without_gradient(name):
    scheduler = presets.TEMPERATURE_SCHEDULER[name]
    S, T = logits(3, 5, 7, seed=16), logits(3, 5, 7, seed=17)
    temperature = scheduler(S, T, 4.0)
    assert not temperature.requires_grad
    assert temperature.grad_fn is None
    torch.testing.assert_close(temperature, scheduler(S.detach(), T.detach(), 4.0), rtol=0, atol=0)


@pytest.mark.parametrize("name", SCHEDULERS, ids=lambda n: n[0])
def test_scheduler_mean_over_the_masked_rows_equals_the_selected_rows(name):
    scheduler = presets.TEMPERATURE_SCHEDULER[name]
    S, T = logits(3, 5, 7, seed=18), logits(3, 5, 7, seed=19)
    masked = scheduler(S, T, 4.0, logits_mask=MASK)
    selected = scheduler(S[MASK.bool()], T[MASK.bool()], 4.0)
    torch.testing.assert_close(masked[MASK.bool()], selected, rtol=1e-13, atol=0)


def test_scheduler_chunks_upcast_row_by_row(monkeypatch):
    scheduler = schedulers.flsw_temperature_scheduler_builder(2.0, 1.0)
    S, T = logits(3, 5, 7, seed=20), logits(3, 5, 7, seed=21)
    whole = scheduler(S.bfloat16(), T.bfloat16(), 4.0)
    monkeypatch.setattr(schedulers, "_CHUNK_ELEMENTS", 14)  # 2 rows a chunk
    chunked = scheduler(S.bfloat16(), T.bfloat16(), 4.0)
    assert whole.dtype == chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, whole, rtol=0, atol=0)


# -------------------------------------------------------------------------------------------------
# The distillers' KD step: masked mean == 0.2.x selection, no data-dependent shape
# -------------------------------------------------------------------------------------------------


class DataDependentOps(TorchDispatchMode):
    """Counts the operators whose result needs the tensors' values on the host (a GPU sync)."""

    NAMES = ("nonzero", "masked_select", "_local_scalar_dense", "is_nonzero", "equal")

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        boolean_index = name == "index" and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or [])
        )
        if name in self.NAMES or boolean_index:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def kd_step(kind, scheduler, shift, masks_S, masks_T, S, T, labels, t2=False):
    config = DistillationConfig(
        temperature=3.0,
        temperature_scheduler=scheduler,
        kd_loss_type=kind,
        probability_shift=shift,
        kd_loss_t2_scaling=t2,
    )
    terms = DistillationTerms(config)
    results_S = {"logits": [S], "labels": [labels]}
    results_T = {"logits": [T]}
    if masks_S is not None:
        results_S["logits_mask"] = masks_S
    if masks_T is not None:
        results_T["logits_mask"] = masks_T
    (_, loss, _), *_ = terms.parts(results_S, results_T)
    return loss, terms


@pytest.mark.parametrize("kind", ["ce", "mse", "jsd", ["jsd", 0.2], "bce"], ids=str)
@pytest.mark.parametrize("scheduler", ["none", *SCHEDULERS], ids=str)
@pytest.mark.parametrize("shift", [False, True], ids=["no_shift", "shift"])
def test_kd_step_with_logits_mask_equals_selection_and_reads_nothing_back(kind, scheduler, shift):
    S, T = logits(3, 5, 7, seed=22), logits(3, 5, 7, seed=23, grad=False)
    labels = torch.randint(0, 7, (3, 5), generator=torch.Generator().manual_seed(24))
    labels[~MASK.bool()] = 99  # padding labels out of range: never read
    with DataDependentOps() as ops:
        loss, terms = kd_step(kind, scheduler, shift, [MASK], [MASK], S, T, labels)
        (grad,) = grads(loss, S)
    assert ops.seen == []
    # 0.2.x: select the rows, then shift, schedule and take the loss on the selected rows.
    keep = MASK.bool()
    S_rows, T_rows = S[keep], T[keep]
    if shift:
        from textbrewer.distillers._kd import probability_shift

        T_rows = probability_shift(T_rows, labels[keep])
    temperature = 3.0
    if scheduler != "none":
        temperature = presets.TEMPERATURE_SCHEDULER[scheduler](S_rows, T_rows, 3.0)
    expected = presets.KD_LOSS_MAP[kind](S_rows, T_rows, temperature)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(grad, grads(expected, S)[0], rtol=1e-10, atol=1e-15)
    if scheduler != "none":  # the logged temperature is the mean over the kept rows
        logged = terms.logged_values()["temperature"]
        torch.testing.assert_close(logged, temperature.mean().float(), rtol=1e-6, atol=0)


def test_different_masks_select_rows_as_0_2_x():
    S, T = logits(3, 5, 7, seed=25), logits(3, 5, 7, seed=26, grad=False)
    mask_T = torch.tensor([[1, 1, 0, 1, 0], [0, 1, 1, 0, 1], [0, 0, 0, 1, 0]])
    loss, _ = kd_step("ce", "none", False, [MASK], [mask_T], S, T, None)
    expected = losses.kd_ce_loss(select_rows(S, MASK), select_rows(T, mask_T), 3.0)
    torch.testing.assert_close(loss, expected, rtol=1e-13, atol=0)


def test_a_user_registered_loss_gets_the_selected_float32_rows():
    seen = {}

    def my_loss(logits_S, logits_T, temperature):
        seen["shape"], seen["dtype"] = tuple(logits_S.shape), logits_S.dtype
        return (logits_S - logits_T).abs().mean()

    presets.KD_LOSS_MAP["my_l1"] = my_loss
    try:
        S, T = logits(3, 5, 7).bfloat16(), logits(3, 5, 7, seed=1).bfloat16()
        kd_step("my_l1", "none", False, [MASK], [MASK], S, T, None)
    finally:
        del presets.KD_LOSS_MAP["my_l1"]
    assert seen == {"shape": (int(MASK.sum()), 7), "dtype": torch.float32}


@pytest.mark.parametrize(
    ("mask_S", "mask_T", "words"),
    [
        (torch.ones(3, 4), MASK, ["adaptor_S", "logits_mask", "(3, 4)", "(3, 5, 7)"]),
        (MASK, torch.ones(2, 5), ["adaptor_T", "logits_mask", "(2, 5)", "(3, 5, 7)"]),
        (MASK, torch.ones(3, 5), ["logits_mask", "student", "teacher", "rows"]),
    ],
)
def test_kd_step_mask_errors_name_logits_mask_and_shapes_without_a_projection(
    mask_S, mask_T, words
):
    with pytest.raises(ValueError, match="logits_mask") as error:
        kd_step("ce", "none", False, [mask_S], [mask_T], logits(3, 5, 7), logits(3, 5, 7), None)
    for word in words:
        assert word in str(error.value)
    assert "proj" not in str(error.value)


@pytest.mark.parametrize("scheduler", ["none", *SCHEDULERS], ids=str)
def test_t2_scaling_multiplies_by_the_mean_squared_temperature_of_the_kept_rows(scheduler):
    S, T = logits(3, 5, 7, seed=27), logits(3, 5, 7, seed=28, grad=False)
    scaled, _ = kd_step("kl", scheduler, False, [MASK], [MASK], S, T, None, t2=True)
    plain, _ = kd_step("kl", scheduler, False, [MASK], [MASK], S, T, None, t2=False)
    keep = MASK.bool()
    if scheduler == "none":
        factor = 3.0**2
    else:
        factor = presets.TEMPERATURE_SCHEDULER[scheduler](S[keep], T[keep], 3.0).square().mean()
    torch.testing.assert_close(scaled, plain * factor, rtol=1e-13, atol=0)


def test_t2_scaling_is_off_by_default_and_a_validated_config_field():
    assert DistillationConfig().kd_loss_t2_scaling is False
    config = DistillationConfig(kd_loss_t2_scaling=True, kd_loss_type=["jsd", 0.25])
    assert DistillationConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["kd_loss_type"] == ["jsd", 0.25]
    assert "kd_loss_t2_scaling : True" in str(config)
    with pytest.raises(ConfigError, match="kd_loss_t2_scaling"):
        DistillationConfig(kd_loss_t2_scaling="yes")


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (["jsd", 2.0], ["kd_loss_type", "beta", "[0, 1]"]),
        (["ce", 0.5], ["kd_loss_type", "takes no arguments"]),
        (["jsd", 0.1, 0.2], ["kd_loss_type"]),
        (["nope", 1], ["kd_loss_type", "KD_LOSS_MAP"]),
        ([], ["kd_loss_type"]),
    ],
)
def test_kd_loss_type_builder_form_is_checked_when_the_config_is_built(value, words):
    with pytest.raises(ConfigError) as error:
        DistillationConfig(kd_loss_type=value)
    for word in words:
        assert word in str(error.value)


def test_kd_loss_type_builder_form_reaches_the_distiller():
    terms = DistillationTerms(DistillationConfig(kd_loss_type=["jsd", {"beta": 0.3}]))
    S, T = logits(2, 4, seed=29), logits(2, 4, seed=30)
    torch.testing.assert_close(
        terms.kd_loss(S, T, 2.0), losses.kd_jsd_loss(S, T, 2.0, beta=0.3), rtol=0, atol=0
    )


# -------------------------------------------------------------------------------------------------
# Memory: low-precision logits are upcast chunk by chunk
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KD_LOSSES)
def test_bf16_kd_step_peaks_below_one_and_a_half_float32_logits(kind, path, monkeypatch):
    if path == "plain":
        pytest.skip("large inputs take the chunked path")
    from torch.profiler import ProfilerActivity, profile

    profiled_peak = load_benchmark().profiled_peak
    monkeypatch.setattr(_loss_chunks, "_CHUNK_ELEMENTS", 32 * 1000)  # 1/32 of the logits a chunk
    monkeypatch.setattr(_loss_chunks, "_MIN_CHUNK_ELEMENTS", 32 * 1000)
    monkeypatch.setattr(schedulers, "_CHUNK_ELEMENTS", 32 * 1000)
    g = torch.Generator().manual_seed(31)
    S = torch.randn(4, 256, 1000, generator=g).bfloat16().requires_grad_()
    T = torch.randn(4, 256, 1000, generator=g).bfloat16()
    mask = torch.ones(4, 256, dtype=torch.long)
    mask[:, 200:] = 0
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss, _ = kd_step(kind, ["flsw", 1.0, 1.0], False, [mask], [mask], S, T, None)
        grads(loss, S)
    float32_logits = S.numel() * 4
    assert profiled_peak(prof) <= 1.5 * float32_logits


@pytest.mark.parametrize(
    ("loss", "shape"),
    [
        (losses.hid_mse_loss, (4, 256, 1000)),
        (losses.cos_loss, (4, 256, 1000)),
        (losses.att_mse_loss, (16, 2, 128, 128)),
        (losses.att_ce_loss, (16, 2, 128, 128)),
    ],
    ids=lambda x: getattr(x, "__name__", "shape"),
)
@pytest.mark.parametrize("masked", [False, True], ids=["no_mask", "mask"])
def test_bf16_feature_losses_peak_below_one_and_a_half_float32_inputs(
    loss, shape, masked, path, monkeypatch
):
    if path == "plain":
        pytest.skip("large inputs take the memory-saving path")
    from torch.profiler import ProfilerActivity, profile

    profiled_peak = load_benchmark().profiled_peak
    chunk = math.prod(shape) // 32
    monkeypatch.setattr(_loss_chunks, "_CHUNK_ELEMENTS", chunk)
    monkeypatch.setattr(_loss_chunks, "_MIN_CHUNK_ELEMENTS", chunk)
    g = torch.Generator().manual_seed(32)
    S = torch.randn(*shape, generator=g).bfloat16().requires_grad_()
    T = torch.randn(*shape, generator=g).bfloat16()
    mask = None
    if masked:
        mask = torch.ones(shape[0], shape[-2], dtype=torch.long)
        mask[:, shape[-2] * 3 // 4 :] = 0
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        grads(loss(S, T, mask), S)
    assert profiled_peak(prof) <= 1.5 * S.numel() * 4


def test_the_formulas_of_the_docs_page_are_checked_against_the_code(path):
    """docs/kd_objectives.rst includes this script: each formula in float64 against the loss."""
    import runpy

    snippet = Path(__file__).resolve().parents[1] / "docs" / "snippets" / "kd_objectives.py"
    runpy.run_path(str(snippet), run_name="__main__")


class Tagger(torch.nn.Module):
    """(batch, length) ids -> (batch, length, 5) logits."""

    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = torch.nn.Embedding(11, 8)
        self.out = torch.nn.Linear(8, 5)

    def forward(self, ids, mask):
        return self.out(self.embed(ids))


def test_a_distiller_step_with_logits_mask_selects_no_rows(tmp_path, path):
    """The training loop with a logits_mask and flsw runs no data-dependent selection."""
    import textbrewer

    if path == "chunked":
        pytest.skip("one path is enough: the plain one is what these sizes take")
    g = torch.Generator().manual_seed(33)
    batches = []
    for _ in range(3):
        ids = torch.randint(0, 11, (4, 6), generator=g)
        mask = (torch.arange(6) < torch.randint(2, 7, (4, 1), generator=g)).long()
        batches.append((ids, mask))

    def adaptor(batch, outputs):
        return {"logits": outputs, "logits_mask": batch[1]}  # the same tensor for both sides

    config = textbrewer.TrainingConfig(
        device="cpu", output_dir=str(tmp_path), log_every_n_steps=1000, progress_bar=False
    )
    distillation = DistillationConfig(temperature_scheduler=["flsw", 1.0, 1.0], kd_loss_type="jsd")
    student = Tagger(1)
    distiller = textbrewer.BasicDistiller(
        config, distillation, Tagger(0), student, adaptor, adaptor
    )
    with DataDependentOps() as ops:
        distiller.train(torch.optim.SGD(student.parameters(), lr=0.1), None, batches, 1)
    assert [name for name in ops.seen if name != "_local_scalar_dense"] == []


# -------------------------------------------------------------------------------------------------
# Attention losses: heads reduced before the shape check (0.2.x), no projection suggested
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("masked", [False, True], ids=["no_mask", "mask"])
def test_head_reducing_attention_losses_accept_different_head_counts(masked):
    S, T = logits(3, 2, 5, 5, seed=34), logits(3, 4, 5, 5, seed=35, grad=False)
    mask = MASK if masked else None
    summed = losses.att_mse_sum_loss(S, T, mask)
    expected = losses.att_mse_loss(S.sum(1), T.sum(1), mask)
    torch.testing.assert_close(summed, expected, rtol=1e-13, atol=0)
    averaged = losses.att_ce_mean_loss(S, T, mask)
    expected = losses.att_ce_loss(S.mean(1), T.mean(1), mask)
    torch.testing.assert_close(averaged, expected, rtol=1e-13, atol=0)
    torch.testing.assert_close(grads(averaged, S)[0], grads(expected, S)[0], rtol=1e-12, atol=0)
    # A 3-D side is used as it is.
    three_d = losses.att_mse_sum_loss(S, T.sum(1), mask)
    torch.testing.assert_close(three_d, summed, rtol=0, atol=0)


@pytest.mark.parametrize("loss", [losses.att_mse_sum_loss, losses.att_ce_mean_loss])
def test_head_reducing_losses_still_reject_other_shape_differences(loss):
    with pytest.raises(ValueError, match=r"\(3, 5, 5\).*\(3, 6, 6\)") as error:
        loss(logits(3, 2, 5, 5), logits(3, 4, 6, 6))
    assert "proj" not in str(error.value)


@pytest.mark.parametrize("loss", [losses.att_mse_loss, losses.att_ce_loss])
def test_per_head_attention_losses_point_to_the_head_reducing_ones_not_a_projection(loss):
    with pytest.raises(ValueError, match="attention_mse_sum' or 'attention_ce_mean") as error:
        loss(logits(3, 2, 5, 5), logits(3, 4, 5, 5))
    assert "proj" not in str(error.value)
    assert "(3, 2, 5, 5)" in str(error.value)
    assert "(3, 4, 5, 5)" in str(error.value)
