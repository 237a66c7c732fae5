"""Resumable training: a run resumed from any checkpoint ends bitwise equal to one never stopped."""

import os

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import textbrewer
from tests.conftest import (
    checkpoint_steps,
    make_batches,
    make_models,
    simple_adaptor,
    training_config,
)
from textbrewer.training import checkpoint as _checkpoint

MATCHES = [
    {
        "layer_T": 3,
        "layer_S": 2,
        "feature": "hidden",
        "loss": "hidden_mse",
        "weight": 1,
        "proj": ["linear", 6, 8, {"lr": 0.01}],
    },
]


def shuffled_loader():
    ids, masks, labels = zip(*make_batches(7, batch_size=2))
    dataset = TensorDataset(torch.cat(ids), torch.cat(masks), torch.cat(labels))
    return DataLoader(dataset, batch_size=2, shuffle=True)


def run(tmp_path, name, mode, resume_from=None):
    torch.manual_seed(0)
    teacher, student = make_models(teacher_dim=8, student_dim=6, dropout=0.2)
    config = training_config(
        tmp_path / name,
        save_training_state=True,
        gradient_accumulation_steps=2,
        ckpt_frequency=2,
        ckpt_steps=3,
        log_every_n_steps=2,
    )
    distiller = textbrewer.GeneralDistiller(
        config,
        textbrewer.DistillationConfig(
            kd_loss_weight_scheduler="linear_decay", intermediate_matches=MATCHES
        ),
        teacher,
        student,
        simple_adaptor,
        simple_adaptor,
    )
    distiller.matches.projections.double()
    optimizer = torch.optim.AdamW(student.parameters(), lr=0.01)
    steps = []
    torch.manual_seed(1)
    lengths = {"num_epochs": 3} if mode == "epoch" else {"num_epochs": None, "num_steps": 10}
    distiller.train(
        optimizer,
        shuffled_loader(),
        scheduler_class=torch.optim.lr_scheduler.StepLR,
        scheduler_args={"step_size": 2, "gamma": 0.7},
        callback=lambda model, step: (steps.append(step), torch.rand(1)),
        resume_from=resume_from,
        **lengths,
    )
    return student, distiller, steps


@pytest.mark.parametrize("mode", ["epoch", "step"])
def test_resume_from_any_checkpoint_gives_identical_weights(tmp_path, mode):
    reference, reference_distiller, steps = run(tmp_path, "full", mode)
    written = checkpoint_steps(tmp_path / "full" / "out")
    assert written == steps
    assert len(written) >= 3
    for step in written[:-1]:
        checkpoint = tmp_path / "full" / "out" / f"gs{step}.pkl"
        resumed, distiller, later = run(tmp_path, f"from{step}", mode, resume_from=checkpoint)
        assert later == [s for s in written if s > step]
        for key, value in reference.state_dict().items():
            assert torch.equal(resumed.state_dict()[key], value), (step, key)
        for a, b in zip(
            reference_distiller.matches.projections.parameters(),
            distiller.matches.projections.parameters(),
        ):
            assert torch.equal(a, b)
        final = f"gs{written[-1]}.pkl"
        original = torch.load(tmp_path / "full" / "out" / final)
        again = torch.load(tmp_path / f"from{step}" / "out" / final)
        assert all(torch.equal(original[k], again[k]) for k in original)


def test_state_files_sit_beside_checkpoints_and_are_opt_in(tmp_path):
    run(tmp_path, "full", "step")
    names = sorted(os.listdir(tmp_path / "full" / "out"))
    assert names == [
        "gs10.pkl",
        "gs10.state.pt",
        "gs3.pkl",
        "gs3.state.pt",
        "gs6.pkl",
        "gs6.state.pt",
        "gs9.pkl",
        "gs9.state.pt",
    ]
    plain = torch.load(tmp_path / "full" / "out" / "gs3.pkl")
    assert all(isinstance(v, torch.Tensor) for v in plain.values())


def test_resume_from_directory_takes_the_latest_state(tmp_path):
    run(tmp_path, "full", "step")
    found = _checkpoint.find_state_file(tmp_path / "full" / "out")
    assert found.name == "gs10.state.pt"


def test_resume_without_state_explains_the_option(tmp_path):
    teacher, student = make_models()
    distiller = textbrewer.BasicDistiller(
        training_config(tmp_path),
        textbrewer.DistillationConfig(),
        teacher,
        student,
        simple_adaptor,
        simple_adaptor,
    )
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    distiller.train(optimizer, None, make_batches(2), 1)
    with pytest.raises(FileNotFoundError, match="save_training_state=True"):
        distiller.train(
            optimizer, None, make_batches(2), 1, resume_from=tmp_path / "out" / "gs2.pkl"
        )


def test_resume_with_a_different_plan_is_refused(tmp_path):
    run(tmp_path, "full", "step")
    with pytest.raises(ValueError, match="cannot resume"):
        run(tmp_path, "other", "epoch", resume_from=tmp_path / "full" / "out" / "gs3.pkl")


def test_atomic_save_never_leaves_a_truncated_file(tmp_path, monkeypatch):
    target = tmp_path / "gs1.pkl"
    _checkpoint.atomic_save({"w": torch.ones(3)}, target)

    def broken_save(obj, writer):
        writer.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        _checkpoint.atomic_save({"w": torch.zeros(3)}, target)
    monkeypatch.undo()
    assert torch.equal(torch.load(target)["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["gs1.pkl"]
