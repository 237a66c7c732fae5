"""Every input the migration table (docs/migration.rst) lists as accepted, accepted.

Each test gives the 0.2.x form and the canonical form and checks they build the same config, or
train to the same weights (torch.equal), or do what the table says.
"""

import logging
import pathlib
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import textbrewer
from tests.conftest import checkpoint_steps, make_batches, make_models, simple_adaptor


def _training(tmp_path, **overrides):
    settings = {"device": "cpu", "output_dir": str(tmp_path / "out"), "progress_bar": False}
    return textbrewer.TrainingConfig(**{**settings, **overrides})


MATCH = {"layer_T": 1, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1}


# ---------------------------------------------------------------- TrainingConfig
@pytest.mark.parametrize(
    "field", ["gradient_accumulation_steps", "ckpt_frequency", "ckpt_epoch_frequency",
              "log_every_n_steps", "eval_steps", "save_total_limit"]
)  # fmt: skip
@pytest.mark.parametrize("given", [2.0, np.int64(2), np.float32(2.0)], ids=repr)
def test_a_whole_number_of_any_numeric_type_is_a_count(tmp_path, field, given):
    config = _training(tmp_path, **{field: given})
    assert getattr(config, field) == 2
    assert type(getattr(config, field)) is int
    assert config == _training(tmp_path, **{field: 2})


@pytest.mark.parametrize("field", ["gradient_accumulation_steps", "ckpt_frequency"])
def test_true_is_the_count_one(tmp_path, field):
    assert _training(tmp_path, **{field: True}) == _training(tmp_path, **{field: 1})


def test_local_rank_from_numpy_or_float_is_an_int(tmp_path):
    assert _training(tmp_path, local_rank=np.int32(-1)).local_rank == -1
    assert _training(tmp_path, local_rank=-1.0) == _training(tmp_path)


@pytest.mark.parametrize("given", [3.0, np.float64(3.0), np.int16(3)], ids=repr)
def test_a_whole_float_ckpt_steps_is_an_int(tmp_path, given):
    assert _training(tmp_path, ckpt_steps=given) == _training(tmp_path, ckpt_steps=3)


@pytest.mark.parametrize("field", ["fp16", "data_parallel", "save_training_state", "progress_bar"])
@pytest.mark.parametrize(("given", "meant"), [(0, False), (1, True), (np.bool_(True), True)])
def test_flags_given_as_0_1_or_numpy_bools(tmp_path, field, given, meant):
    if field == "fp16" and meant:
        pytest.skip("fp16 on CPU is covered by the precision tests")
    config = _training(tmp_path, **{field: given})
    assert getattr(config, field) is meant


def test_paths_may_be_pathlib(tmp_path):
    config = _training(tmp_path, output_dir=tmp_path / "out", log_dir=pathlib.Path(tmp_path))
    assert config == _training(tmp_path, output_dir=str(tmp_path / "out"), log_dir=str(tmp_path))


@pytest.mark.parametrize("device", [torch.device("cpu"), "cpu", "cuda:0", torch.device("cuda", 0)])
def test_devices_as_strings_or_torch_devices(tmp_path, device):
    assert _training(tmp_path, device=device).device == str(device)


# ---------------------------------------------------------------- DistillationConfig
@pytest.mark.parametrize(
    ("field", "given", "canonical"),
    [
        ("temperature", 4, 4.0),
        ("temperature", np.float32(8.0), 8.0),
        ("kd_loss_weight", 1, 1.0),
        ("kd_loss_weight", np.int64(2), 2),
        ("hard_label_weight", np.float64(0.5), 0.5),
    ],
    ids=repr,
)
def test_numbers_of_any_numeric_type(field, given, canonical):
    config = textbrewer.DistillationConfig(**{field: given})
    assert getattr(config, field) == canonical
    assert not isinstance(getattr(config, field), np.generic)  # JSON-serialisable
    assert config == textbrewer.DistillationConfig(**{field: canonical})


@pytest.mark.parametrize("field", ["probability_shift", "is_caching_logits"])
@pytest.mark.parametrize(("given", "meant"), [(0, False), (1, True), (np.bool_(True), True)])
def test_distillation_flags_given_as_0_1_or_numpy_bools(field, given, meant):
    assert getattr(textbrewer.DistillationConfig(**{field: given}), field) is meant


@pytest.mark.parametrize(
    "field", ["temperature_scheduler", "kd_loss_weight_scheduler", "hard_label_weight_scheduler"]
)
def test_none_for_a_scheduler_means_none(field):
    config = textbrewer.DistillationConfig(**{field: None})
    assert getattr(config, field) == "none"
    assert config == textbrewer.DistillationConfig()


@pytest.mark.parametrize(
    "given",
    [
        {**MATCH, "layer_T": np.int64(1), "layer_S": "1"},
        {**MATCH, "layer_T": 1.0, "weight": np.float32(1.0)},
        {**MATCH, "note": "kept by the script, ignored by the match"},
    ],
    ids=["numpy-and-digit-layers", "whole-float-layer", "extra-key"],
)
def test_matches_written_for_0_2_x(given):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = textbrewer.DistillationConfig(intermediate_matches=(given,))  # a tuple too
    assert config == textbrewer.DistillationConfig(intermediate_matches=[MATCH])
    extra = [str(w.message) for w in caught if "no match reads" in str(w.message)]
    assert len(extra) == ("note" in given)


def test_projections_with_tuples_numpy_dims_and_none_options():
    given = {**MATCH, "layer_S": (0, 1), "layer_T": (1, 2), "loss": "nst",
             "proj": ("linear", np.int64(4), 8.0, None)}  # fmt: skip
    canonical = {**MATCH, "layer_S": [0, 1], "layer_T": [1, 2], "loss": "nst",
                 "proj": ["linear", 4, 8, {}]}  # fmt: skip
    config = textbrewer.DistillationConfig(intermediate_matches=[given])
    assert config == textbrewer.DistillationConfig(intermediate_matches=[canonical])
    assert type(config.intermediate_matches[0].proj[1]) is int


# ---------------------------------------------------------------- train() arguments
def _distil(tmp_path, name, call, config_overrides=None, distill=None):
    teacher, student = make_models()
    distiller = textbrewer.BasicDistiller(
        _training(tmp_path / name, **(config_overrides or {})),
        distill or textbrewer.DistillationConfig(kd_loss_weight_scheduler="linear_decay"),
        teacher,
        student,
        simple_adaptor,
        simple_adaptor,
    )
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    call(distiller, optimizer, make_batches(4))
    out = tmp_path / name / "out"
    return checkpoint_steps(out), student.state_dict()


def _same(a, b):
    assert a[0] == b[0]
    for key, value in a[1].items():
        assert torch.equal(value, b[1][key]), key


@pytest.mark.parametrize("epochs", [2.0, np.int64(2), np.float64(2.0)], ids=repr)
def test_num_epochs_as_a_whole_float_or_numpy_number(tmp_path, epochs):
    given = _distil(tmp_path, "given", lambda d, o, data: d.train(o, data, epochs))
    canonical = _distil(tmp_path, "int", lambda d, o, data: d.train(o, None, data, 2))
    assert given[0] == [4, 8]
    _same(given, canonical)


def test_num_steps_and_ckpt_steps_as_floats(tmp_path):
    given = _distil(
        tmp_path,
        "given",
        lambda d, o, data: d.train(o, data, 1, num_steps=6.0),
        {"ckpt_steps": 4.0},
    )
    canonical = _distil(
        tmp_path, "int", lambda d, o, data: d.train(o, None, data, None, 6), {"ckpt_steps": 4}
    )
    assert given[0] == [4, 6]
    _same(given, canonical)


def test_a_fractional_ckpt_steps_saves_every_whole_part_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match=r"`ckpt_steps`=2\.5 .* every int\(ckpt_steps\)=2"):
        steps, _ = _distil(
            tmp_path, "x", lambda d, o, data: d.train(o, data, None, num_steps=5),
            {"ckpt_steps": 2.5},
        )  # fmt: skip
    assert steps == [2, 4, 5]


def test_a_fractional_num_steps_trains_its_whole_part_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match=r"`num_steps`=5\.5 is not a whole number.*5 optimizer"):
        steps, _ = _distil(
            tmp_path, "x", lambda d, o, data: d.train(o, data, None, num_steps=5.5),
            {"ckpt_steps": 2},
        )  # fmt: skip
    assert steps == [2, 4]  # no step equals 5.5, so no final checkpoint (0.2.x)


@pytest.mark.parametrize("given", [None, np.float64(-1.0), 0])
def test_max_grad_norm_none_numpy_or_zero_means_no_clipping(tmp_path, given):
    run = _distil(tmp_path, "given", lambda d, o, data: d.train(o, data, 1, max_grad_norm=given))
    _same(run, _distil(tmp_path, "default", lambda d, o, data: d.train(o, data, 1)))


def test_scheduler_class_with_scheduler_args_none(tmp_path):
    class Halving(torch.optim.lr_scheduler.StepLR):
        def __init__(self, optimizer):
            super().__init__(optimizer, step_size=1, gamma=0.5)

    given = _distil(
        tmp_path,
        "given",
        lambda d, o, data: d.train(o, data, 1, scheduler_class=Halving, scheduler_args=None),
    )
    canonical = _distil(
        tmp_path,
        "canonical",
        lambda d, o, data: d.train(
            o, data, 1, scheduler_class=torch.optim.lr_scheduler.StepLR,
            scheduler_args={"step_size": 1, "gamma": 0.5},
        ),
    )  # fmt: skip
    _same(given, canonical)


class _WrappedSGD:
    """An optimizer from another library: not a torch.optim.Optimizer, but works like one."""

    def __init__(self, params, lr):
        self.inner = torch.optim.SGD(params, lr=lr)
        self.param_groups = self.inner.param_groups

    def step(self):
        self.inner.step()

    def zero_grad(self, set_to_none=True):
        self.inner.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, group):
        self.inner.add_param_group(group)

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


def test_an_optimizer_that_works_like_one(tmp_path):
    def wrapped(d, optimizer, data):
        d.train(_WrappedSGD(d.model_S.parameters(), lr=0.1), data, 1)

    _same(
        _distil(tmp_path, "given", wrapped),
        _distil(tmp_path, "torch", lambda d, o, data: d.train(o, data, 1)),
    )


# ---------------------------------------------------------------- adaptors and teachers
def test_adaptor_values_that_are_none_are_absent(tmp_path):
    def with_nones(batch, outputs):
        result = simple_adaptor(batch, outputs)
        return {**result, "labels": None, "logits_mask": None, "inputs_mask": None}

    def without(batch, outputs):
        result = simple_adaptor(batch, outputs)
        return {k: v for k, v in result.items() if k not in ("labels", "inputs_mask")}

    runs = []
    for name, adaptor in (("nones", with_nones), ("absent", without)):
        teacher, student = make_models()
        distiller = textbrewer.BasicDistiller(
            _training(tmp_path / name), textbrewer.DistillationConfig(), teacher, student,
            adaptor, adaptor,
        )  # fmt: skip
        distiller.train(torch.optim.SGD(student.parameters(), lr=0.1), make_batches(3), 1)
        runs.append(([], student.state_dict()))
    _same(*runs)


@pytest.mark.parametrize("container", [tuple, nn.ModuleList])
def test_multi_teacher_teachers_as_a_tuple_or_module_list(tmp_path, container):
    teachers = [make_models(seed=s)[0] for s in (1, 2)]
    distiller = textbrewer.MultiTeacherDistiller(
        _training(tmp_path), textbrewer.DistillationConfig(), container(teachers),
        make_models()[1], simple_adaptor, simple_adaptor,
    )  # fmt: skip
    assert distiller.teachers() == teachers


def test_multi_task_tau_without_lengths_is_ignored_with_a_warning(tmp_path, caplog):
    teacher, student = make_models()
    distiller = textbrewer.MultiTaskDistiller(
        _training(tmp_path, ckpt_steps=2), textbrewer.DistillationConfig(),
        {"a": teacher}, student, {"a": simple_adaptor}, {"a": simple_adaptor},
    )  # fmt: skip
    stream = iter(make_batches(3))  # a generator-like source: no __len__
    with caplog.at_level(logging.WARNING, logger="textbrewer"):
        distiller.train(
            torch.optim.SGD(student.parameters(), lr=0.1), None, {"a": stream}, 2, tau=0.5
        )
    assert "`tau`=0.5 is ignored: dataloaders ['a'] have no __len__" in caplog.text


def test_zero_dimensional_tensors_are_numbers_too(tmp_path):
    config = textbrewer.DistillationConfig(temperature=torch.tensor(4.0))
    assert config == textbrewer.DistillationConfig(temperature=4.0)
    assert _training(tmp_path, ckpt_steps=torch.tensor(3)).ckpt_steps == 3


def test_the_fractional_epochs_warning_points_at_the_train_call(tmp_path):
    teacher, student = make_models()
    distiller = textbrewer.BasicDistiller(
        _training(tmp_path), textbrewer.DistillationConfig(), teacher, student,
        simple_adaptor, simple_adaptor,
    )  # fmt: skip
    with pytest.warns(UserWarning, match="`num_epochs`=1.5") as caught:
        distiller.train(torch.optim.SGD(student.parameters(), lr=0.1), make_batches(2), 1.5)
    assert caught[0].filename == __file__


def test_scheduler_args_may_be_any_mapping(tmp_path):
    import types

    args = types.MappingProxyType({"step_size": 1, "gamma": 0.5})
    given = _distil(
        tmp_path, "given",
        lambda d, o, data: d.train(o, data, 1, scheduler_class=torch.optim.lr_scheduler.StepLR,
                                   scheduler_args=args),
    )  # fmt: skip
    canonical = _distil(
        tmp_path, "canonical",
        lambda d, o, data: d.train(o, data, 1, scheduler_class=torch.optim.lr_scheduler.StepLR,
                                   scheduler_args=dict(args)),
    )  # fmt: skip
    _same(given, canonical)


def test_callbacks_as_partials_and_methods_are_called_with_model_and_step(tmp_path):
    import functools

    calls = []

    def predict(model, eval_datasets, step, args):  # the MNLI example's callback signature
        calls.append(("partial", step, eval_datasets, args))

    class Evaluator:
        def __call__(self, model, step, **others):
            calls.append(("method", step))

    def train(d, o, data):
        d.train(o, data, 1, callback=functools.partial(predict, eval_datasets=["dev"], args=None))
        d.train(o, data, 1, callback=Evaluator())

    _distil(tmp_path, "x", train)
    assert calls == [("partial", 4, ["dev"], None), ("method", 4)]


def test_num_epochs_and_num_steps_together_train_by_steps(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="textbrewer"):
        given = _distil(
            tmp_path, "both", lambda d, o, data: d.train(o, data, 3, num_steps=2.0),
            {"ckpt_steps": 1},
        )  # fmt: skip
    assert given[0] == [1, 2]
    assert "training by num_steps, num_epochs is ignored" in caplog.text


def test_config_warnings_point_at_the_users_line(tmp_path):
    with pytest.warns(UserWarning, match="`ckpt_steps`=2.5") as caught:
        _training(tmp_path, ckpt_steps=2.5)
    assert caught[0].filename == __file__
    with pytest.warns(UserWarning, match="no match reads") as caught:
        textbrewer.DistillationConfig(intermediate_matches=[{**MATCH, "extra": 1}])
    assert caught[0].filename == __file__
