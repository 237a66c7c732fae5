"""Tests for textbrewer.utils: display_parameters, cycle, initializer_builder and set_seed."""

import random
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from textbrewer.utils import (
    ParameterNode,
    cycle,
    display_parameters,
    initializer_builder,
    set_seed,
)


def nested_model() -> nn.Module:
    """encoder.0.weight (4), encoder.0.bias (2), head.weight (2), head.bias (1): 9 in all."""
    return nn.Sequential(OrderedDict(encoder=nn.Sequential(nn.Linear(2, 2)), head=nn.Linear(2, 1)))


class TiedModel(nn.Module):
    """An embedding whose weight the output layer shares, as in a tied language-model head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.out = nn.Linear(3, 5)
        self.out.weight = self.embed.weight


# --- display_parameters -------------------------------------------------------------------------


def test_display_parameters_matches_the_spec_example_byte_for_byte():
    text, _ = display_parameters(nn.Linear(3, 2))
    assert text == (
        "\nLAYER NAME \t        #PARAMS\t     RATIO\t MEM(MB)\n"
        "--model:   \t              8\t   100.00%\t    0.00\n"
        "  --weight:\t              6\t    75.00%\t    0.00\n"
        "  --bias:  \t              2\t    25.00%\t    0.00\n"
    )


def test_display_parameters_returns_the_tree_with_counts_and_mib():
    _, root = display_parameters(nn.Linear(3, 2))
    assert isinstance(root, ParameterNode)
    assert root.name == "model"
    assert list(root.children) == ["weight", "bias"]
    assert (root.count, root.mib) == (8, 8 * 4 / 2**20)
    weight = root.children["weight"]
    assert (weight.name, weight.count, weight.mib, weight.children) == ("weight", 6, 24 / 2**20, {})


def test_a_tied_weight_is_counted_once_and_marked_shared():
    text, root = display_parameters(TiedModel())
    assert text == (
        "\nLAYER NAME           \t        #PARAMS\t     RATIO\t MEM(MB)\n"
        "--model:             \t             20\t   100.00%\t    0.00\n"
        "  --embed            \n"
        "    --weight:        \t             15\t    75.00%\t    0.00\n"
        "  --out:             \t              5\t    25.00%\t    0.00\n"
        "    --weight(shared):\t              0\t     0.00%\t    0.00\n"
        "    --bias:          \t              5\t    25.00%\t    0.00\n"
    )
    shared = root.children["out"].children["weight(shared)"]
    assert (shared.count, shared.mib) == (0, 0.0)
    assert root.count == 20
    assert root.mib == 20 * 4 / 2**20


def test_display_parameters_counts_buffers_of_every_dtype():
    _, root = display_parameters(nn.BatchNorm1d(4))
    assert list(root.children) == [
        "weight",
        "bias",
        "running_mean",
        "running_var",
        "num_batches_tracked",
    ]
    assert root.count == 4 * 4 + 1
    assert root.mib == (16 * 4 + 1 * 8) / 2**20  # num_batches_tracked is one int64


NESTED_ALL_LEVELS = (
    "\nLAYER NAME     \t        #PARAMS\t     RATIO\t MEM(MB)\n"
    "--model:       \t              9\t   100.00%\t    0.00\n"
    "  --encoder    \n"
    "    --0:       \t              6\t    66.67%\t    0.00\n"
    "      --weight:\t              4\t    44.44%\t    0.00\n"
    "      --bias:  \t              2\t    22.22%\t    0.00\n"
    "  --head:      \t              3\t    33.33%\t    0.00\n"
    "    --weight:  \t              2\t    22.22%\t    0.00\n"
    "    --bias:    \t              1\t    11.11%\t    0.00\n"
)
NESTED_LEVEL_2 = (
    "\nLAYER NAME   \t        #PARAMS\t     RATIO\t MEM(MB)\n"
    "--model:     \t              9\t   100.00%\t    0.00\n"
    "  --encoder  \n"
    "    --0:     \t              6\t    66.67%\t    0.00\n"
    "  --head:    \t              3\t    33.33%\t    0.00\n"
    "    --weight:\t              2\t    22.22%\t    0.00\n"
    "    --bias:  \t              1\t    11.11%\t    0.00\n"
)
NESTED_LEVEL_1 = (
    "\nLAYER NAME  \t        #PARAMS\t     RATIO\t MEM(MB)\n"
    "--model:    \t              9\t   100.00%\t    0.00\n"
    "  --encoder:\t              6\t    66.67%\t    0.00\n"
    "  --head:   \t              3\t    33.33%\t    0.00\n"
)
NESTED_LEVEL_0 = (
    "\nLAYER NAME\t        #PARAMS\t     RATIO\t MEM(MB)\n"
    "--model:\t              9\t   100.00%\t    0.00\n"
)


@pytest.mark.parametrize(
    ("max_level", "expected"),
    [
        (None, NESTED_ALL_LEVELS),
        (3, NESTED_ALL_LEVELS),
        (2, NESTED_LEVEL_2),
        (1, NESTED_LEVEL_1),
        (0, NESTED_LEVEL_0),
    ],
)
def test_max_level_hides_deeper_nodes_and_shows_single_child_rows_at_the_limit(max_level, expected):
    text, root = display_parameters(nested_model(), max_level=max_level)
    assert text == expected
    # The tree is complete whatever is displayed.
    assert root.children["encoder"].children["0"].children["bias"].count == 2


def test_display_parameters_accepts_a_dict_of_tensors():
    weight = torch.zeros(1000, 1000)
    named = {
        "body.weight": weight,
        "body.scale": torch.zeros(3, dtype=torch.float64),
        "tied": weight,
        "body.view": weight[1],  # another view of the same storage, at another address
    }
    text, root = display_parameters(named)
    assert text == (
        "\nLAYER NAME       \t        #PARAMS\t     RATIO\t MEM(MB)\n"
        "--model:         \t      1,001,003\t   100.00%\t    3.82\n"
        "  --body:        \t      1,001,003\t   100.00%\t    3.82\n"
        "    --weight:    \t      1,000,000\t    99.90%\t    3.81\n"
        "    --scale:     \t              3\t     0.00%\t    0.00\n"
        "    --view:      \t          1,000\t     0.10%\t    0.00\n"
        "  --tied(shared):\t              0\t     0.00%\t    0.00\n"
    )
    assert root.mib == (1_001_000 * 4 + 3 * 8) / 2**20


def test_a_dict_key_that_is_also_a_prefix_adds_its_own_tensor_to_the_node():
    _, root = display_parameters({"a": torch.zeros(2), "a.b": torch.zeros(3)})
    assert root.children["a"].count == 5
    assert root.children["a"].children["b"].count == 3


def test_empty_tensors_are_never_marked_shared():
    _, root = display_parameters({"a": torch.zeros(0), "b": torch.zeros(0, 3)})
    assert list(root.children) == ["a", "b"]


def test_meta_device_tensors_are_counted_and_never_marked_shared():
    with torch.device("meta"):
        model = nn.Linear(3, 2)
    _, root = display_parameters(model)
    assert list(root.children) == ["weight", "bias"]
    assert root.count == 8


def test_a_model_without_parameters_shows_a_zero_ratio():
    text, root = display_parameters(nn.ReLU())
    assert text == (
        "\nLAYER NAME\t        #PARAMS\t     RATIO\t MEM(MB)\n"
        "--model:\t              0\t     0.00%\t    0.00\n"
    )
    assert root.children == {}


def test_single_child_chains_print_labels_only_and_set_the_width():
    text, _ = display_parameters({"a.b.c": torch.zeros(3)})
    assert text == (
        "\nLAYER NAME\t        #PARAMS\t     RATIO\t MEM(MB)\n"
        "--model   \n"
        "  --a     \n"
        "    --b   \n"
        "      --c:\t              3\t   100.00%\t    0.00\n"
    )


@pytest.mark.parametrize(
    ("max_level", "error", "match"),
    [
        (-1, ValueError, r"`max_level` must be a non-negative int or None, got -1"),
        (1.5, TypeError, r"`max_level` must be a non-negative int or None, got 1\.5 of type float"),
        (True, TypeError, r"`max_level` must be a non-negative int or None, got True of type bool"),
        ("2", TypeError, r"got '2' of type str"),
    ],
)
def test_display_parameters_rejects_a_bad_max_level(max_level, error, match):
    with pytest.raises(error, match=match):
        display_parameters(nn.Linear(2, 2), max_level=max_level)


def test_display_parameters_rejects_a_model_that_is_neither_module_nor_mapping():
    with pytest.raises(
        TypeError, match=r"`model` must be an nn\.Module or a mapping of names to tensors, got list"
    ):
        display_parameters([torch.zeros(2)])


def test_display_parameters_rejects_a_mapping_of_non_tensors():
    with pytest.raises(TypeError, match=r"must map str names to tensors, got 'w' \(str\) -> list"):
        display_parameters({"w": [1.0, 2.0]})
    with pytest.raises(TypeError, match=r"got 3 \(int\) -> Tensor"):
        display_parameters({3: torch.zeros(1)})


# --- cycle ----------------------------------------------------------------------------------------


class CountingIterable:
    """Yields (pass number, item) pairs, in a different order on every pass; counts iter() calls."""

    def __init__(self, items):
        self.items = list(items)
        self.iter_calls = 0

    def __iter__(self):
        self.iter_calls += 1
        generator = torch.Generator().manual_seed(self.iter_calls)
        order = torch.randperm(len(self.items), generator=generator).tolist()
        return iter([(self.iter_calls, self.items[i]) for i in order])


def test_cycle_calls_iter_afresh_on_every_pass_and_is_lazy():
    source = CountingIterable("abc")
    stream = cycle(source)
    assert source.iter_calls == 0
    taken = [next(stream) for _ in range(7)]
    assert source.iter_calls == 3
    assert [pass_number for pass_number, _ in taken] == [1, 1, 1, 2, 2, 2, 3]
    for pass_number in (1, 2):
        assert sorted(item for n, item in taken if n == pass_number) == ["a", "b", "c"]


def test_cycle_lets_a_shuffling_source_reshuffle_every_pass():
    source = CountingIterable(range(8))
    stream = cycle(source)
    passes = [[next(stream)[1] for _ in range(8)] for _ in range(3)]
    assert all(sorted(order) == list(range(8)) for order in passes)
    assert len({tuple(order) for order in passes}) == 3


def test_cycle_reshuffles_a_torch_dataloader():
    loader = DataLoader(
        list(range(10)), batch_size=None, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    stream = cycle(loader)
    first, second = ([int(next(stream)) for _ in range(10)] for _ in range(2))
    assert sorted(first) == sorted(second) == list(range(10))
    assert first != second


def test_cycle_caches_nothing():
    data = [1, 2]
    stream = cycle(data)
    assert [next(stream) for _ in range(3)] == [1, 2, 1]
    data[1] = 20
    data.append(3)
    assert [next(stream) for _ in range(4)] == [20, 3, 1, 20]


def test_cycle_raises_on_an_empty_iterable_instead_of_spinning():
    stream = cycle([])
    with pytest.raises(ValueError, match=r"`iterable` \(list\) yielded no items in pass 1"):
        next(stream)


def test_cycle_raises_when_an_exhausted_iterator_yields_nothing_on_the_next_pass():
    stream = cycle(iter([1, 2]))
    assert [next(stream), next(stream)] == [1, 2]
    with pytest.raises(ValueError, match=r"yielded no items in pass 2.*exhausted iterator"):
        next(stream)


def test_cycle_rejects_a_non_iterable_at_call_time():
    with pytest.raises(TypeError, match=r"`iterable` must be iterable, got int"):
        cycle(5)


# --- initializer_builder --------------------------------------------------------------------------


def test_initializer_builder_draws_linear_and_embedding_weights_from_the_normal():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(400, 100), nn.Linear(100, 300), nn.LayerNorm(300))
    model.apply(initializer_builder(0.5))
    for weight in (model[0].weight, model[1].weight):
        assert abs(weight.mean().item()) < 0.01
        assert weight.std().item() == pytest.approx(0.5, rel=0.02)
    assert torch.equal(model[1].bias, torch.zeros(300))
    assert torch.equal(model[2].weight, torch.ones(300))  # other modules are untouched
    assert torch.equal(model[2].bias, torch.zeros(300))


def test_initializer_builder_consumes_the_torch_rng_like_one_normal_draw_per_weight():
    layer = nn.Linear(3, 4)
    torch.manual_seed(1)
    layer.apply(initializer_builder(0.02))
    after_init = torch.get_rng_state()
    torch.manual_seed(1)
    expected = torch.empty(4, 3).normal_(0.0, 0.02)
    assert torch.equal(layer.weight, expected)
    assert torch.equal(after_init, torch.get_rng_state())


def test_initializer_builder_handles_a_linear_without_bias():
    layer = nn.Linear(3, 4, bias=False)
    layer.apply(initializer_builder(1))
    assert layer.bias is None


@pytest.mark.parametrize("std", [0, -0.1, float("inf"), float("nan")])
def test_initializer_builder_rejects_a_non_positive_std(std):
    with pytest.raises(ValueError, match=r"`std` must be a positive finite number, got"):
        initializer_builder(std)


@pytest.mark.parametrize("std", ["0.02", True, None])
def test_initializer_builder_rejects_a_std_that_is_not_a_number(std):
    with pytest.raises(TypeError, match=r"`std` must be a positive number, got .* of type"):
        initializer_builder(std)


# --- set_seed -----------------------------------------------------------------------------------


def test_set_seed_seeds_python_numpy_and_torch_like_their_own_seeded_generators():
    set_seed(1234)
    drawn = (random.random(), np.random.rand(), torch.rand(3))
    assert drawn[0] == random.Random(1234).random()
    assert drawn[1] == np.random.RandomState(1234).rand()
    assert torch.equal(drawn[2], torch.rand(3, generator=torch.Generator().manual_seed(1234)))


def test_set_seed_twice_repeats_a_shuffled_dataloader_and_dropout():
    def draw():
        set_seed(7)
        loader = DataLoader(list(range(10)), batch_size=10, shuffle=True)
        order = next(iter(loader)).tolist()
        mask = nn.functional.dropout(torch.ones(20), p=0.5)
        return order, mask, random.sample(range(100), 5), np.random.choice(5, size=4).tolist()

    first, second = draw(), draw()
    assert first[0] == second[0]
    assert first[2:] == second[2:]
    assert torch.equal(first[1], second[1])
    assert first[0] != list(range(10))  # shuffled indeed


def test_set_seed_seeds_every_cuda_device(monkeypatch):
    seen = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", seen.append)
    set_seed(2**32 - 1)
    # torch.manual_seed seeds CUDA too (lazily); set_seed also calls it explicitly.
    assert seen
    assert set(seen) == {2**32 - 1}


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_set_seed_rejects_a_seed_out_of_range(seed):
    with pytest.raises(
        ValueError, match=r"`seed`=.* is out of range: it must be in \[0, 2\*\*32 - 1\]"
    ):
        set_seed(seed)


@pytest.mark.parametrize("seed", [True, 1.0, "1", None], ids=repr)
def test_set_seed_rejects_a_seed_that_is_not_an_int(seed):
    with pytest.raises(TypeError, match=r"`seed`=.* must be an int"):
        set_seed(seed)
