"""The shared loop: checkpoint schedules, callbacks, modes, logging, progress and syncs."""

import logging

import pytest
import torch

import textbrewer
from tests.conftest import (
    checkpoint_steps,
    make_batches,
    make_models,
    simple_adaptor,
    training_config,
)
from textbrewer.training import loss_log as _logging


def basic_distiller(tmp_path, dtype=torch.float64, **config):
    teacher, student = make_models(dtype=dtype)
    distiller = textbrewer.BasicDistiller(
        training_config(tmp_path, **config),
        textbrewer.DistillationConfig(),
        teacher,
        student,
        simple_adaptor,
        simple_adaptor,
    )
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01)
    return distiller, optimizer


@pytest.mark.parametrize(
    ("batches", "epochs", "config", "expected"),
    [
        (10, 3, {"ckpt_frequency": 2}, [5, 10, 15, 20, 25, 30]),
        (10, 5, {"ckpt_epoch_frequency": 2}, [20, 40, 50]),
        (10, 2, {"gradient_accumulation_steps": 3}, [3, 6]),
        (10, 2, {"gradient_accumulation_steps": 3, "ckpt_frequency": 3}, [1, 2, 3, 4, 5, 6]),
        (7, 1, {"ckpt_frequency": 3}, [2, 4, 7]),
    ],
)
def test_epoch_mode_checkpoint_steps(tmp_path, batches, epochs, config, expected):
    distiller, optimizer = basic_distiller(tmp_path, **config)
    calls = []
    distiller.train(
        optimizer,
        None,
        make_batches(batches),
        epochs,
        callback=lambda model, step: calls.append((step, model.training)),
    )
    assert checkpoint_steps(tmp_path / "out") == expected
    assert [step for step, _ in calls] == expected


def test_step_mode_checkpoints_every_ckpt_steps_and_at_the_end(tmp_path):
    distiller, optimizer = basic_distiller(tmp_path, ckpt_steps=4)
    steps = []
    distiller.train(
        optimizer,
        None,
        make_batches(3),
        None,
        num_steps=10,
        callback=lambda model, step: steps.append(step),
    )
    assert checkpoint_steps(tmp_path / "out") == [4, 8, 10]
    assert steps == [4, 8, 10]


def test_step_mode_reads_a_generator_without_len_and_reiterates_each_pass(tmp_path):
    distiller, optimizer = basic_distiller(tmp_path, ckpt_steps=5)
    passes = []

    class Source:
        def __iter__(self):
            passes.append(1)
            return iter(make_batches(2))

    distiller.train(optimizer, None, Source(), None, num_steps=5)
    assert len(passes) == 3


def test_checkpoint_is_the_plain_student_state_dict_and_the_only_file(tmp_path):
    distiller, optimizer = basic_distiller(tmp_path)
    distiller.train(optimizer, None, make_batches(2), 1)
    saved = torch.load(tmp_path / "out" / "gs2.pkl")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gs2.pkl"]
    for key, value in distiller.model_S.state_dict().items():
        assert torch.equal(saved[key], value)


def test_callback_sees_student_and_student_is_back_in_train_mode(tmp_path):
    distiller, optimizer = basic_distiller(tmp_path)
    seen, modes = [], []

    def callback(model, step):
        seen.append(model is distiller.model_S)
        model.eval()

    def postprocess(batch):
        modes.append(distiller.model_S.training)
        return batch

    distiller.train(
        optimizer, None, make_batches(2), 2, callback=callback, batch_postprocessor=postprocess
    )
    assert seen == [True, True]
    assert modes == [True, True, True, True]


def test_train_sets_modes_and_restores_them(tmp_path):
    distiller, optimizer = basic_distiller(tmp_path)
    distiller.model_T.train()
    distiller.model_S.eval()
    modes = []

    def postprocess(batch):
        modes.append((distiller.model_T.training, distiller.model_S.training))
        return batch

    distiller.train(optimizer, None, make_batches(2), 1, batch_postprocessor=postprocess)
    assert modes == [(False, True), (False, True)]
    assert distiller.model_T.training
    assert not distiller.model_S.training


def test_context_manager_sets_and_restores_modes(tmp_path):
    distiller, _ = basic_distiller(tmp_path)
    distiller.model_T.train()
    distiller.model_S.eval()
    with distiller:
        assert not distiller.model_T.training
        assert distiller.model_S.training
    assert distiller.model_T.training
    assert not distiller.model_S.training


def test_user_config_is_never_mutated_by_weight_schedules(tmp_path):
    teacher, student = make_models()
    config = textbrewer.DistillationConfig(
        kd_loss_weight_scheduler="linear_decay", hard_label_weight_scheduler="linear_growth"
    )
    before = config.to_dict()
    distiller = textbrewer.BasicDistiller(
        training_config(tmp_path), config, teacher, student, simple_adaptor, simple_adaptor
    )
    distiller.train(torch.optim.SGD(student.parameters(), lr=0.01), None, make_batches(4), 1)
    assert config.to_dict() == before
    assert distiller.kd_loss_weight == 0.0
    assert distiller.hard_label_weight == 1.0


class FakeWriter:
    instances = []

    def __init__(self, log_dir):
        self.log_dir, self.scalars, self.closed = log_dir, [], False
        FakeWriter.instances.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, step, value))

    def close(self):
        self.closed = True


@pytest.fixture
def fake_writer(monkeypatch):
    import tensorboardX

    FakeWriter.instances = []
    monkeypatch.setattr(tensorboardX, "SummaryWriter", FakeWriter)
    return FakeWriter


def test_tensorboard_gets_every_micro_batch_with_spec_names(tmp_path, fake_writer):
    teacher, student = make_models(teacher_dim=8, student_dim=8)
    config = textbrewer.DistillationConfig(
        hard_label_weight=1,
        intermediate_matches=[
            {"layer_T": [0, 1], "layer_S": [0, 1], "feature": "hidden", "loss": "fsp", "weight": 1},
            {
                "layer_T": 2,
                "layer_S": 1,
                "feature": "attention",
                "loss": "attention_mse",
                "weight": 1,
            },
        ],
    )
    distiller = textbrewer.GeneralDistiller(
        training_config(
            tmp_path,
            log_dir=str(tmp_path / "logs"),
            gradient_accumulation_steps=2,
            log_every_n_steps=2,
        ),
        config,
        teacher,
        student,
        simple_adaptor,
        simple_adaptor,
    )
    distiller.train(torch.optim.SGD(student.parameters(), lr=0.01), None, make_batches(5), 2)
    (writer,) = fake_writer.instances
    assert writer.closed
    # The SPEC's loss tags; the run-health train/* tags are tested in test_lifecycle.
    tags = {tag for tag, _, _ in writer.scalars if tag.startswith("scalar/")}
    assert tags == {
        "scalar/total_loss",
        "scalar/unweighted_kd_loss",
        "scalar/unweighted_hard_label_loss",
        "scalar/unweighted_hidden_fsp_0-1_0-1",
        "scalar/unweighted_attention_attention_mse_1_2",
    }
    steps = [step for tag, step, _ in writer.scalars if tag == "scalar/total_loss"]
    assert steps == list(range(10))
    parts = {tag: v for tag, step, v in writer.scalars if step == 9 and tag.startswith("scalar/")}
    expected = sum(v for t, v in parts.items() if t != "scalar/total_loss")
    assert parts["scalar/total_loss"] == pytest.approx(expected, rel=1e-9)


def test_basic_trainer_logs_only_total_loss(tmp_path, fake_writer):
    _, model = make_models()
    trainer = textbrewer.BasicTrainer(
        training_config(tmp_path, log_dir=str(tmp_path / "l")), model, simple_adaptor
    )
    trainer.train(torch.optim.SGD(model.parameters(), lr=0.01), None, make_batches(3), 1)
    tags = {tag for tag, _, _ in fake_writer.instances[0].scalars}
    assert {tag for tag in tags if tag.startswith("scalar/")} == {"scalar/total_loss"}
    # No distillation terms to schedule, so none of their train/* tags either.
    assert {"train/learning_rate", "train/grad_norm"} <= tags
    assert not {"train/kd_loss_weight", "train/hard_label_weight"} & tags


def test_hot_path_reads_nothing_back_per_micro_batch(tmp_path, monkeypatch):
    distiller, optimizer = basic_distiller(
        tmp_path, dtype=torch.float32, log_every_n_steps=1000, ckpt_frequency=1
    )
    reads = []
    for name in ("item", "tolist", "cpu", "__float__", "__bool__"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    distiller.train(optimizer, None, make_batches(12, dtype_mask=torch.long), 1)
    # One read-back of all twelve micro-batches' losses, at the checkpoint.
    assert reads.count("tolist") == 1
    assert reads.count("item") == 0
    assert reads.count("__float__") == 0


def test_non_finite_loss_stops_with_step_and_parts_and_keeps_checkpoints(tmp_path):
    distiller, optimizer = basic_distiller(tmp_path, ckpt_steps=2, log_every_n_steps=1)
    batches = make_batches(3)
    calls = {"n": 0}

    def poison(batch):
        calls["n"] += 1
        if calls["n"] == 3:
            distiller.model_S.head.weight.data.fill_(float("nan"))
        return batch

    with pytest.raises(FloatingPointError, match=r"optimizer step 3 .*unweighted_kd_loss=nan"):
        distiller.train(optimizer, None, batches, None, num_steps=6, batch_postprocessor=poison)
    assert checkpoint_steps(tmp_path / "out") == [2]
    saved = torch.load(tmp_path / "out" / "gs2.pkl")
    assert all(torch.isfinite(v).all() for v in saved.values())


def test_progress_messages_use_the_textbrewer_logger(tmp_path, caplog):
    distiller, optimizer = basic_distiller(tmp_path)
    with caplog.at_level(logging.INFO, logger="textbrewer"):
        distiller.train(optimizer, None, make_batches(2), 1)
    assert any(
        r.name.startswith("textbrewer") and "gs2.pkl" in r.getMessage() for r in caplog.records
    )


def test_loss_log_flushes_all_pending_values_in_order():
    writer = FakeWriter("unused")
    log = _logging.LossLog(writer)
    for index in range(3):
        log.record(index, 1, torch.tensor(float(index)), {"a": torch.tensor(2.0 * index)})
    log.flush()
    assert writer.scalars == [
        ("scalar/total_loss", 0, 0.0),
        ("scalar/a", 0, 0.0),
        ("scalar/total_loss", 1, 1.0),
        ("scalar/a", 1, 2.0),
        ("scalar/total_loss", 2, 2.0),
        ("scalar/a", 2, 4.0),
    ]
    log.flush()
    assert len(writer.scalars) == 6


def test_progress_bar_counts_optimizer_steps_and_shows_the_running_loss(tmp_path, monkeypatch):
    from textbrewer.training import session as _session

    bars = []

    class FakeBar:
        def __init__(self, total, initial, **kwargs):
            self.total, self.n, self.postfixes, self.closed = total, initial, [], False
            bars.append(self)

        def update(self, count):
            self.n += count

        def set_postfix(self, **kwargs):
            self.postfixes.append(kwargs)

        def close(self):
            self.closed = True

    monkeypatch.setattr(_session, "tqdm", FakeBar)
    distiller, optimizer = basic_distiller(tmp_path, log_every_n_steps=2, progress_bar=True)
    distiller.train(optimizer, None, make_batches(4), 2)
    (bar,) = bars
    assert (bar.total, bar.n, bar.closed) == (8, 8, True)
    assert len(bar.postfixes) == 4
    assert all(float(postfix["loss"]) > 0 for postfix in bar.postfixes)
