"""Projection factories: module types, shapes, initialisation and torch RNG parity with 0.2.x."""

import pytest
import torch
from torch import nn

from textbrewer import PROJ_MAP
from textbrewer.projections import linear_projection, relu_projection, tanh_projection

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


def reference_linear(dim_in, dim_out):
    """The 0.2.x recipe written out: default init, then weight ~ N(0, 0.02^2) and zero bias."""
    layer = nn.Linear(dim_in, dim_out)
    layer.weight.data.normal_(0, 0.02)
    layer.bias.data.zero_()
    return layer


def linear_part(module):
    return module if isinstance(module, nn.Linear) else module[0]


def test_linear_projection_is_a_linear_layer_from_student_to_teacher_size():
    layer = PROJ_MAP["linear"](3, 5)
    assert type(layer) is nn.Linear
    assert (layer.in_features, layer.out_features) == (3, 5)
    assert layer.weight.shape == (5, 3)
    assert layer.bias.shape == (5,)


@pytest.mark.parametrize("kind", ["relu", "tanh"])
def test_relu_and_tanh_projections_are_a_linear_layer_then_the_activation(kind):
    module = PROJ_MAP[kind](3, 5)
    assert type(module) is nn.Sequential
    assert len(module) == 2
    assert type(module[0]) is nn.Linear
    assert (module[0].in_features, module[0].out_features) == (3, 5)
    assert type(module[1]) is ACTIVATIONS[kind]


@pytest.mark.parametrize("kind", ["linear", "relu", "tanh"])
@pytest.mark.parametrize("shape", [(4, 3), (2, 6, 3)], ids=str)
def test_a_projection_maps_the_last_dimension_to_the_teacher_size(kind, shape):
    module = PROJ_MAP[kind](3, 7)
    features = torch.randn(*shape)
    projected = module(features)
    assert projected.shape == (*shape[:-1], 7)
    linear = linear_part(module)
    expected = features @ linear.weight.T + linear.bias
    if kind != "linear":
        expected = getattr(torch, kind)(expected)
    assert torch.allclose(projected, expected, atol=1e-6)


def test_relu_projection_outputs_are_non_negative_and_tanh_outputs_lie_in_minus_one_one():
    features = torch.randn(64, 16) * 50
    assert (relu_projection(16, 16)(features) >= 0).all()
    assert (tanh_projection(16, 16)(features).abs() <= 1).all()


@pytest.mark.parametrize("kind", ["linear", "relu", "tanh"])
def test_weights_are_drawn_with_std_0_02_and_the_bias_is_zero(kind):
    torch.manual_seed(0)
    linear = linear_part(PROJ_MAP[kind](512, 512))  # 262144 draws: std error about 3e-5
    weight = linear.weight.detach()
    assert abs(weight.std().item() - 0.02) < 5e-4
    assert abs(weight.mean().item()) < 5e-4
    # nn.Linear's default init is uniform within +-1/sqrt(512); normal draws go beyond it.
    assert weight.abs().max().item() > 1 / 512**0.5
    assert torch.count_nonzero(linear.bias) == 0


@pytest.mark.parametrize("kind", ["linear", "relu", "tanh"])
def test_projection_parameters_are_trainable_float32(kind):
    parameters = list(PROJ_MAP[kind](4, 6).parameters())
    assert len(parameters) == 2
    assert all(p.requires_grad and p.dtype == torch.float32 for p in parameters)


@pytest.mark.parametrize("kind", ["linear", "relu", "tanh"])
@pytest.mark.parametrize("seed", [0, 1, 1234])
@pytest.mark.parametrize(("dim_in", "dim_out"), [(3, 5), (8, 8), (16, 4)])
def test_under_a_seed_weights_and_rng_state_equal_the_hand_written_recipe(
    kind, seed, dim_in, dim_out
):
    torch.manual_seed(seed)
    expected = reference_linear(dim_in, dim_out)
    expected_state = torch.get_rng_state()
    expected_next = torch.rand(3)

    torch.manual_seed(seed)
    linear = linear_part(PROJ_MAP[kind](dim_in, dim_out))
    assert torch.equal(linear.weight, expected.weight)
    assert torch.equal(linear.bias, expected.bias)
    assert torch.equal(torch.get_rng_state(), expected_state)
    assert torch.equal(torch.rand(3), expected_next)


def test_two_projections_built_in_a_row_consume_the_rng_like_two_hand_written_ones():
    torch.manual_seed(7)
    first, second = reference_linear(4, 6), reference_linear(6, 2)
    expected_state = torch.get_rng_state()

    torch.manual_seed(7)
    built_first, built_second = linear_projection(4, 6), tanh_projection(6, 2)
    assert torch.equal(built_first.weight, first.weight)
    assert torch.equal(built_second[0].weight, second.weight)
    assert torch.equal(torch.get_rng_state(), expected_state)


def test_the_default_init_is_consumed_before_the_redraw():
    # Skipping nn.Linear's default init would leave the RNG where a bare normal_ draw leaves it.
    torch.manual_seed(3)
    torch.empty(5, 3).normal_(0, 0.02)
    bare_state = torch.get_rng_state()
    torch.manual_seed(3)
    linear_projection(3, 5)
    assert not torch.equal(torch.get_rng_state(), bare_state)


def test_each_call_builds_a_new_module():
    assert linear_projection(2, 2) is not linear_projection(2, 2)
    sequential = relu_projection(2, 3)
    assert sequential[0] is not relu_projection(2, 3)[0]
