"""The 0.2.x subclass protocol and module paths (SPEC §5), attribute by attribute."""

import importlib

import pytest
import torch
from torch import nn

import textbrewer
import textbrewer.distiller_utils
from tests.conftest import make_batches, make_models, simple_adaptor, training_config
from tests.tensorboard_events import read_scalars

MODULES = [
    "textbrewer.distiller_utils",
    "textbrewer.distiller_basic",
    "textbrewer.distiller_general",
    "textbrewer.distiller_multiteacher",
    "textbrewer.distiller_multitask",
    "textbrewer.distiller_train",
    "textbrewer.distillers",
]
SPEC_NAMES = [
    "BasicDistiller", "GeneralDistiller", "MultiTeacherDistiller", "MultiTaskDistiller",
    "BasicTrainer", "AbstractDistiller", "CustomMatch", "get_outputs_from_batch", "post_adaptor",
    "move_to_device", "auto_forward", "select_logits_with_mask", "probability_shift_",
]  # fmt: skip
STAR_NAMES = [
    "torch", "nn", "np", "Optional", "Dict", "Union", "KD_LOSS_MAP", "MATCH_LOSS_MAP",
    "PROJ_MAP", "WEIGHT_SCHEDULER", "TEMPERATURE_SCHEDULER", "TrainingConfig",
    "DistillationConfig", "logger",
]  # fmt: skip


@pytest.mark.parametrize("module", MODULES)
def test_0_2_x_module_paths_alias_the_one_implementation(module):
    imported = importlib.import_module(module)
    for name in SPEC_NAMES:
        assert getattr(imported, name) is getattr(textbrewer.distiller_utils, name), name
    assert imported.BasicDistiller is textbrewer.BasicDistiller


def test_the_star_import_brings_what_0_2_x_subclass_scripts_use():
    namespace = {}
    exec("from textbrewer.distiller_utils import *", namespace)
    assert set(SPEC_NAMES + STAR_NAMES) <= set(namespace)
    assert namespace["torch"] is torch
    assert namespace["nn"] is nn


def test_post_adaptor_wraps_single_tensors_of_list_keys_in_place():
    logits, hidden = torch.zeros(2, 3), [torch.ones(2, 4)]
    result = {"logits": logits, "losses": [torch.tensor(1.0)], "hidden": hidden}
    assert textbrewer.distiller_utils.post_adaptor(result) is result
    assert result["logits"][0] is logits
    assert len(result["losses"]) == 1
    assert result["hidden"] is hidden


def test_select_logits_with_mask_keeps_the_masked_rows_of_3d_logits():
    logits = torch.arange(2 * 3 * 2, dtype=torch.float64).reshape(2, 3, 2)
    mask = torch.tensor([[1, 0, 1], [0, 1, 0]])
    selected, flat = textbrewer.distiller_utils.select_logits_with_mask(
        [logits, logits[:, 0]], [mask]
    )
    assert selected.tolist() == [[0.0, 1.0], [4.0, 5.0], [8.0, 9.0]]
    assert torch.equal(flat, logits[:, 0])  # 2-D logits pass through


def test_probability_shift_swaps_in_place():
    logits = torch.tensor([[1.0, 5.0, 2.0], [3.0, 0.0, 1.0]])
    out = textbrewer.distiller_utils.probability_shift_(logits, torch.tensor([2, 0]))
    assert out is logits
    assert logits.tolist() == [[1.0, 2.0, 5.0], [3.0, 0.0, 1.0]]


def test_auto_forward_calls_like_the_distillers():
    model = lambda a, b, scale=1: (a + b) * scale  # noqa: E731
    auto_forward = textbrewer.distiller_utils.auto_forward
    assert auto_forward(model, (1, 2), {"scale": 3}) == 9
    assert auto_forward(model, {"a": 1, "b": 2}, {}) == 3


def _basic(tmp_path, distill_config=None, **overrides):
    teacher, student = make_models()
    return textbrewer.BasicDistiller(
        training_config(tmp_path, **overrides),
        distill_config or textbrewer.DistillationConfig(),
        teacher,
        student,
        simple_adaptor,
        simple_adaptor,
    )


def test_kd_loss_is_readable_and_assigning_it_changes_the_kd_term(tmp_path):
    distiller = _basic(tmp_path)
    assert distiller.kd_loss is textbrewer.KD_LOSS_MAP["ce"]
    halved = lambda s, t, temperature: 0.5 * textbrewer.KD_LOSS_MAP["ce"](s, t, temperature)  # noqa: E731
    results_S = {"logits": [torch.randn(4, 3)]}
    results_T = {"logits": [torch.randn(4, 3)]}
    before = distiller.compute_loss(results_S, results_T)[0]
    distiller.kd_loss = halved
    assert distiller.kd_loss is halved
    assert torch.allclose(distiller.compute_loss(results_S, results_T)[0], before / 2)
    with pytest.raises(TypeError, match="`kd_loss`=3 must be callable"):
        distiller.kd_loss = 3


def test_d_config_shows_the_scheduled_weights_and_never_changes_the_users_config(tmp_path):
    config = textbrewer.DistillationConfig(kd_loss_weight_scheduler="linear_decay", temperature=3)
    distiller = _basic(tmp_path, config)
    assert distiller.d_config.kd_loss_weight == 1
    distiller.train(torch.optim.SGD(distiller.model_S.parameters(), lr=0.1), make_batches(4), 1)
    assert distiller.d_config.kd_loss_weight == pytest.approx(0.0)  # 1 - 4/4 after 4 steps
    assert config.kd_loss_weight == 1  # the user's object is untouched
    assert distiller.d_config.temperature == 3
    assert distiller.d_config == config


def test_d_config_is_caching_logits_is_settable_and_honoured(tmp_path):
    config = textbrewer.DistillationConfig(is_caching_logits=True)
    distiller = _basic(tmp_path, config, ckpt_steps=2)
    distiller.d_config.is_caching_logits = False  # as 0.2.x subclasses do
    assert distiller.d_config.is_caching_logits is False
    # With caching on, step mode raises; turned off through d_config, step mode trains.
    optimizer = torch.optim.SGD(distiller.model_S.parameters(), lr=0.1)
    distiller.train(optimizer, make_batches(2), None, num_steps=2)


def test_d_config_fields_resolved_at_build_time_cannot_be_silently_changed(tmp_path):
    distiller = _basic(tmp_path)
    with pytest.raises(AttributeError, match=r"`d_config.temperature` cannot be changed"):
        distiller.d_config.temperature = 8


def test_the_0_2_x_attributes_are_readable(tmp_path):
    distiller = _basic(tmp_path)
    assert isinstance(distiller.t_config, textbrewer.TrainingConfig)
    assert isinstance(distiller.model_T, nn.Module)
    assert distiller.adaptor_T is simple_adaptor
    assert distiller.adaptor_S is simple_adaptor
    assert distiller.projs == []
    assert distiller.projs_group == []


@pytest.mark.parametrize(
    ("projs", "message"),
    [
        (lambda x: x, r"projs=<function .*> must be a list of nn.Module"),
        ([nn.Linear(2, 2), torch.tanh], r"projs\[1\]=.* must be an nn.Module or None"),
    ],
)
def test_projections_the_library_cannot_train_raise(tmp_path, projs, message):
    distiller = _basic(tmp_path)
    with pytest.raises(TypeError, match=message):
        distiller.projs = projs


def test_a_projs_group_that_does_not_fit_the_projs_raises_at_train(tmp_path):
    distiller = _basic(tmp_path)
    distiller.projs = [nn.Linear(8, 8)]
    distiller.projs_group = [{"lr": 0.1}, {"lr": 0.2}]
    with pytest.raises(ValueError, match=r"projs_group has 2 entries for 1 projs"):
        distiller.train(torch.optim.SGD(distiller.model_S.parameters(), lr=0.1), make_batches(2), 1)


def test_assigned_projections_get_their_own_param_groups_on_the_device(tmp_path):
    distiller = _basic(tmp_path)
    distiller.projs_group = [{"lr": 0.5}]  # before projs, as some subclasses do
    distiller.projs = [None, nn.Linear(8, 8).double()]
    optimizer = torch.optim.SGD(distiller.model_S.parameters(), lr=0.1)
    distiller.train(optimizer, make_batches(2), 1)
    assert len(optimizer.param_groups) == 2
    assert optimizer.param_groups[1]["lr"] == 0.5
    assert optimizer.param_groups[1]["params"][0] is distiller.projs[1].weight


def test_a_general_distiller_subclass_replacing_projs_uses_them_in_its_matches(tmp_path):
    teacher, student = make_models(teacher_dim=8, student_dim=6)
    matches = [{"layer_T": 1, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse",
                "weight": 1, "proj": ["linear", 6, 8]}]  # fmt: skip

    class Replacing(textbrewer.GeneralDistiller):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.projs = [nn.Sequential(nn.Linear(6, 8), nn.Tanh()).double()]
            self.projs_group = [{"lr": 0.01}]

    distiller = Replacing(
        training_config(tmp_path), textbrewer.DistillationConfig(intermediate_matches=matches),
        teacher, student, simple_adaptor, simple_adaptor,
    )  # fmt: skip
    own = distiller.projs[0]
    assert isinstance(own, nn.Sequential)
    before = own[0].weight.detach().clone()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    distiller.train(optimizer, make_batches(3), 1)
    assert optimizer.param_groups[1]["lr"] == 0.01
    assert optimizer.param_groups[1]["params"][0] is own[0].weight
    assert not torch.equal(own[0].weight, before)  # trained through the match
    assert distiller.projs_group == [{"lr": 0.01}]


def test_train_on_batch_may_return_the_loss_alone(tmp_path):
    class LossOnly(textbrewer.BasicDistiller):
        def train_on_batch(self, batch, args):
            return super().train_on_batch(batch, args)[0]

    teacher, student = make_models()
    distiller = LossOnly(
        training_config(tmp_path / "a"), textbrewer.DistillationConfig(), teacher, student,
        simple_adaptor, simple_adaptor,
    )  # fmt: skip
    distiller.train(torch.optim.SGD(student.parameters(), lr=0.1), make_batches(3), 1)
    reference = _basic(tmp_path / "b")
    reference.train(torch.optim.SGD(reference.model_S.parameters(), lr=0.1), make_batches(3), 1)
    for key, value in reference.model_S.state_dict().items():
        assert torch.equal(student.state_dict()[key], value)


def test_train_on_batch_returning_something_else_raises(tmp_path):
    class Wrong(textbrewer.BasicDistiller):
        def train_on_batch(self, batch, args):
            return 1.0

    teacher, student = make_models()
    distiller = Wrong(
        training_config(tmp_path), textbrewer.DistillationConfig(), teacher, student,
        simple_adaptor, simple_adaptor,
    )  # fmt: skip
    with pytest.raises(TypeError, match=r"Wrong.train_on_batch must return the total loss"):
        distiller.train(torch.optim.SGD(student.parameters(), lr=0.1), make_batches(2), 1)


@pytest.mark.parametrize(
    ("side", "message"),
    [
        ("S", r"adaptor_T returned 'logits' but adaptor_S did not"),
        ("T", r"adaptor_S returned 'logits' but adaptor_T did not"),
    ],
)
def test_logits_from_one_side_only_is_an_error_naming_the_side(tmp_path, side, message):
    def no_logits(batch, outputs):
        return {k: v for k, v in simple_adaptor(batch, outputs).items() if k != "logits"}

    teacher, student = make_models()
    adaptors = (simple_adaptor, no_logits) if side == "S" else (no_logits, simple_adaptor)
    distiller = textbrewer.BasicDistiller(
        training_config(tmp_path), textbrewer.DistillationConfig(), teacher, student, *adaptors
    )
    with pytest.raises(ValueError, match=message):
        distiller.train(torch.optim.SGD(student.parameters(), lr=0.1), make_batches(2), 1)


def test_projections_appended_after_assignment_are_trained(tmp_path):
    # The 0.2.x idiom: `self.projs = []`, then `self.projs.append(...)` in a loop.
    class Appending(textbrewer.BasicDistiller):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.projs = []
            self.projs_group = []
            for _ in range(2):
                self.projs.append(nn.Linear(8, 8).double())
                self.projs_group.append({"lr": 0.3})

        def compute_loss(self, results_S, results_T):
            total, parts = super().compute_loss(results_S, results_T)
            hidden = results_S["hidden"][-1]
            extra = sum(proj(hidden).pow(2).mean() for proj in self.projs)
            return total + extra, parts

    teacher, student = make_models()
    distiller = Appending(
        training_config(tmp_path), textbrewer.DistillationConfig(), teacher, student,
        simple_adaptor, simple_adaptor,
    )  # fmt: skip
    before = [proj.weight.detach().clone() for proj in distiller.projs]
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    distiller.train(optimizer, make_batches(2), 1)
    assert [group["lr"] for group in optimizer.param_groups] == [0.1, 0.3, 0.3]
    for proj, start in zip(distiller.projs, before):
        assert not torch.equal(proj.weight, start)


def test_a_general_distiller_subclass_appending_to_its_projs_list(tmp_path):
    teacher, student = make_models(teacher_dim=8, student_dim=6)
    matches = [{"layer_T": 1, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse",
                "weight": 1}]  # fmt: skip

    class Appending(textbrewer.GeneralDistiller):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.projs = []
            self.projs.append(nn.Linear(6, 8).double())  # match 0 gets a projection

    distiller = Appending(
        training_config(tmp_path), textbrewer.DistillationConfig(intermediate_matches=matches),
        teacher, student, simple_adaptor, simple_adaptor,
    )  # fmt: skip
    own = distiller.projs[0]
    before = own.weight.detach().clone()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    distiller.train(optimizer, make_batches(2), 1)  # 6-dim student vs 8-dim teacher: projected
    assert optimizer.param_groups[1]["params"][0] is own.weight
    assert not torch.equal(own.weight, before)


def test_get_outputs_from_batch_with_the_config_device_auto():
    teacher, student = make_models()
    batch = make_batches(1)[0]
    (batch_T, outputs_T), (batch_S, outputs_S) = textbrewer.distiller_utils.get_outputs_from_batch(
        batch, "auto", teacher, student, {}
    )
    assert not outputs_T[0].requires_grad  # the teacher runs without gradients
    assert outputs_S[0].requires_grad
    assert batch_T is batch_S


def test_d_config_still_reads_as_a_distillation_config(tmp_path):
    import dataclasses

    config = textbrewer.DistillationConfig(kd_loss_weight=2, temperature=3)
    distiller = _basic(tmp_path, config)
    distiller.kd_loss_weight = 0.5  # a scheduled value, as after some steps
    assert isinstance(distiller.d_config, textbrewer.DistillationConfig)
    assert dataclasses.asdict(distiller.d_config)["kd_loss_weight"] == 0.5
    copied = dataclasses.replace(distiller.d_config, temperature=5)
    assert (copied.temperature, copied.kd_loss_weight) == (5, 0.5)
    assert config.kd_loss_weight == 2


def test_replacing_d_config_on_a_built_distiller_raises(tmp_path):
    distiller = _basic(tmp_path)
    distiller.d_config = distiller.d_config  # assigning the same config back is harmless
    with pytest.raises(AttributeError, match="`d_config` cannot be replaced on a built"):
        distiller.d_config = textbrewer.DistillationConfig(temperature=9)


def test_rank_local_rank_and_tb_writer_for_a_subclass_s_own_logging(tmp_path):
    silent = _basic(tmp_path / "silent")
    assert (silent.rank, silent.local_rank) == (0, -1)
    silent.tb_writer.add_scalar("ignored", 1.0, 0)  # no log_dir: nothing happens

    class Logging(textbrewer.BasicDistiller):
        def train_on_batch(self, batch, args):
            self.tb_writer.add_scalar("own/rank", self.rank, 0)
            return super().train_on_batch(batch, args)

    teacher, student = make_models()
    logged = Logging(
        training_config(tmp_path / "logged", log_dir=str(tmp_path / "runs")),
        textbrewer.DistillationConfig(), teacher, student, simple_adaptor, simple_adaptor,
    )  # fmt: skip
    logged.train(torch.optim.SGD(student.parameters(), lr=0.1), make_batches(2), 1)
    scalars = read_scalars(tmp_path / "runs")  # written by the end of train()
    assert scalars["own/rank"] == [(0, 0.0), (0, 0.0)]
    assert len(scalars["scalar/total_loss"]) == 2  # the loop's own scalars, beside them
