"""Weight and temperature schedulers against values computed by hand from SPEC §8."""

import math

import pytest
import torch

from textbrewer.schedulers import (
    constant_temperature_scheduler,
    cwsm_temperature_scheduler_builder,
    flsw_temperature_scheduler_builder,
    linear_decay,
    linear_growth,
)


def rows_of(tensor):
    """The rows (last dimension) of a tensor as lists of Python floats, in row-major order."""
    return tensor.reshape(-1, tensor.shape[-1]).tolist()


def expected_flsw(logits_S, logits_T, base_T, beta, gamma, eps=1e-4):
    """FLSW by loops: normalise rows, w = (1 - s.t)^gamma, T = base + (mean(w) - w) beta."""
    weights = []
    for row_S, row_T in zip(rows_of(logits_S), rows_of(logits_T)):
        norm_S = math.sqrt(sum(x * x for x in row_S))
        norm_T = math.sqrt(sum(x * x for x in row_T))
        dot = sum((s / (norm_S + eps)) * (t / (norm_T + eps)) for s, t in zip(row_S, row_T))
        weights.append((1 - dot) ** gamma)
    mean = sum(weights) / len(weights)
    return [base_T + (mean - w) * beta for w in weights]


def expected_cwsm(logits_S, base_T, beta):
    """CWSM by loops: v = max softmax(l_S), w = 1 / (v + 1e-3), T = base + (mean(w) - w) beta."""
    weights = []
    for row in rows_of(logits_S):
        exps = [math.exp(x - max(row)) for x in row]
        confidence = max(exps) / sum(exps)
        weights.append(1 / (confidence + 1e-3))
    mean = sum(weights) / len(weights)
    return [base_T + (mean - w) * beta for w in weights]


def assert_values(actual, expected, rtol=1e-10):
    flat = actual.reshape(-1).tolist()
    assert len(flat) == len(expected)
    for got, want in zip(flat, expected):
        assert got == pytest.approx(want, rel=rtol, abs=1e-12)


def random_logits(*shape, seed=0, scale=2.0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64) * scale


# ---------------------------------------------------------------- weight schedulers


@pytest.mark.parametrize(
    ("progress", "decayed"), [(0.0, 1.0), (0.25, 0.75), (0.5, 0.5), (0.9, 0.1), (1.0, 0.0)]
)
def test_linear_decay_falls_from_one_to_zero(progress, decayed):
    assert linear_decay(progress) == pytest.approx(decayed, abs=1e-15)


@pytest.mark.parametrize("progress", [0.0, 0.1, 0.25, 0.5, 1.0])
def test_linear_growth_is_the_progress_itself(progress):
    assert linear_growth(progress) == progress


def test_linear_decay_and_growth_add_up_to_one():
    for step in range(11):
        progress = step / 10
        assert linear_decay(progress) + linear_growth(progress) == pytest.approx(1.0)


# ---------------------------------------------------------------- constant


@pytest.mark.parametrize("base_T", [1.0, 4, 8.5])
def test_constant_returns_the_base_temperature_whatever_the_logits(base_T):
    logits_S, logits_T = random_logits(3, 5, seed=1), random_logits(3, 5, seed=2)
    assert constant_temperature_scheduler(logits_S, logits_T, base_T) == base_T
    assert constant_temperature_scheduler(logits_S, logits_T, base_T) is base_T


# ---------------------------------------------------------------- flsw


def test_flsw_on_two_orthogonal_rows_gives_the_hand_computed_temperatures():
    # Row 0: student and teacher agree, s.t = 1/(1+eps)^2; row 1: they are orthogonal, s.t = 0.
    eps = 1e-4
    logits_S = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    logits_T = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    w0 = 1 - 1 / (1 + eps) ** 2  # gamma = 1
    # base 4, beta 2: mean(w) = (w0 + 1)/2, so T0 = 4 + (1 - w0) and T1 = 4 - (1 - w0).
    expected = [4 + (1 - w0), 4 - (1 - w0)]
    temperatures = flsw_temperature_scheduler_builder(beta=2.0, gamma=1.0)(logits_S, logits_T, 4.0)
    assert temperatures.shape == (2,)
    assert_values(temperatures, expected)
    assert temperatures[0].item() == pytest.approx(4.9998000299960005, rel=1e-12)


@pytest.mark.parametrize(("beta", "gamma"), [(1.0, 1.0), (0.5, 2.0), (3.0, 0.5), (2.0, 3.0)])
def test_flsw_matches_the_formula_on_2d_logits(beta, gamma):
    logits_S, logits_T = random_logits(4, 3, seed=3), random_logits(4, 3, seed=4)
    scheduler = flsw_temperature_scheduler_builder(beta, gamma)
    temperatures = scheduler(logits_S, logits_T, 4.0)
    assert temperatures.shape == (4,)
    assert temperatures.dtype == torch.float64
    assert_values(temperatures, expected_flsw(logits_S, logits_T, 4.0, beta, gamma))


def test_flsw_matches_the_formula_on_3d_logits_with_one_temperature_per_position():
    logits_S, logits_T = random_logits(2, 3, 5, seed=5), random_logits(2, 3, 5, seed=6)
    temperatures = flsw_temperature_scheduler_builder(1.5, 2.0)(logits_S, logits_T, 3.0)
    assert temperatures.shape == (2, 3)
    assert_values(temperatures, expected_flsw(logits_S, logits_T, 3.0, 1.5, 2.0))


def test_flsw_uses_its_eps_argument():
    logits_S = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    logits_T = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    temperatures = flsw_temperature_scheduler_builder(1.0, 1.0, eps=0.5)(logits_S, logits_T, 4.0)
    assert_values(temperatures, expected_flsw(logits_S, logits_T, 4.0, 1.0, 1.0, eps=0.5))
    w0 = 1 - 1 / 1.5**2
    assert temperatures[0].item() == pytest.approx(4 + (1 - w0) / 2, rel=1e-12)


def test_flsw_of_identical_rows_gives_the_base_temperature_everywhere():
    logits = random_logits(3, 4, seed=7)
    temperatures = flsw_temperature_scheduler_builder(2.0, 1.0)(logits, logits.clone(), 5.0)
    assert torch.allclose(temperatures, torch.full((3,), 5.0, dtype=torch.float64), atol=1e-12)


def test_flsw_does_not_change_its_inputs():
    logits_S, logits_T = random_logits(3, 4, seed=8), random_logits(3, 4, seed=9)
    before = logits_S.clone(), logits_T.clone()
    flsw_temperature_scheduler_builder(1.0, 1.0)(logits_S, logits_T, 4.0)
    assert torch.equal(logits_S, before[0])
    assert torch.equal(logits_T, before[1])


# ---------------------------------------------------------------- cwsm


def test_cwsm_on_two_rows_gives_the_hand_computed_temperatures():
    # Row 0: uniform over 2 classes, v = 1/2; row 1: logits (log 3, 0), so v = 3/4.
    logits_S = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]], dtype=torch.float64)
    w0, w1 = 1 / (0.5 + 1e-3), 1 / (0.75 + 1e-3)
    mean = (w0 + w1) / 2
    expected = [2.0 + (mean - w0) * 0.5, 2.0 + (mean - w1) * 0.5]
    temperatures = cwsm_temperature_scheduler_builder(0.5)(logits_S, torch.zeros(2, 2), 2.0)
    assert temperatures.shape == (2,)
    assert_values(temperatures, expected)
    assert temperatures[0].item() < 2.0 < temperatures[1].item()


@pytest.mark.parametrize("beta", [0.5, 1.0, 4.0])
def test_cwsm_matches_the_formula_on_2d_logits(beta):
    logits_S, logits_T = random_logits(5, 4, seed=10), random_logits(5, 4, seed=11)
    temperatures = cwsm_temperature_scheduler_builder(beta)(logits_S, logits_T, 4.0)
    assert temperatures.shape == (5,)
    assert temperatures.dtype == torch.float64
    assert_values(temperatures, expected_cwsm(logits_S, 4.0, beta))


def test_cwsm_matches_the_formula_on_3d_logits_with_one_temperature_per_position():
    logits_S, logits_T = random_logits(2, 4, 3, seed=12), random_logits(2, 4, 3, seed=13)
    temperatures = cwsm_temperature_scheduler_builder(2.0)(logits_S, logits_T, 3.0)
    assert temperatures.shape == (2, 4)
    assert_values(temperatures, expected_cwsm(logits_S, 3.0, 2.0))


def test_cwsm_ignores_the_teacher_logits():
    logits_S = random_logits(3, 4, seed=14)
    scheduler = cwsm_temperature_scheduler_builder(1.0)
    first = scheduler(logits_S, random_logits(3, 4, seed=15), 4.0)
    second = scheduler(logits_S, random_logits(3, 4, seed=16), 4.0)
    assert torch.equal(first, second)


# ---------------------------------------------------------------- shared properties

BUILDERS = {
    "flsw": lambda: flsw_temperature_scheduler_builder(1.5, 2.0),
    "cwsm": lambda: cwsm_temperature_scheduler_builder(0.7),
}


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize("shape", [(6, 5), (2, 3, 5), (1, 4)], ids=str)
def test_the_mean_temperature_equals_the_base_temperature(name, shape):
    logits_S, logits_T = random_logits(*shape, seed=17), random_logits(*shape, seed=18)
    temperatures = BUILDERS[name]()(logits_S, logits_T, 4.0)
    assert temperatures.shape == shape[:-1]
    assert temperatures.mean().item() == pytest.approx(4.0, rel=1e-12)
    if temperatures.numel() > 1:
        assert temperatures.std().item() > 1e-3  # the rows really get different temperatures


@pytest.mark.parametrize("name", BUILDERS)
def test_a_beta_of_zero_gives_the_base_temperature_on_every_row(name):
    build = {
        "flsw": lambda: flsw_temperature_scheduler_builder(0.0, 2.0),
        "cwsm": lambda: cwsm_temperature_scheduler_builder(0.0),
    }[name]
    logits_S, logits_T = random_logits(4, 3, seed=19), random_logits(4, 3, seed=20)
    assert torch.equal(build()(logits_S, logits_T, 4.0), torch.full((4,), 4.0, dtype=torch.float64))


@pytest.mark.parametrize("name", BUILDERS)
def test_float32_logits_give_float32_temperatures(name):
    logits_S = random_logits(3, 4, seed=21).float()
    logits_T = random_logits(3, 4, seed=22).float()
    temperatures = BUILDERS[name]()(logits_S, logits_T, 2.0)
    assert temperatures.dtype == torch.float32
    assert torch.isfinite(temperatures).all()
