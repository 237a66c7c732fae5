"""Faults of real jobs: file permissions, stale temporaries, NaN weights, damaged or foreign
state files, another optimizer on resume, Ctrl-C, an unwritable output_dir, finished runs."""

import logging
import os
import shutil
import stat

import numpy as np
import pytest
import torch

import textbrewer
from tests.conftest import checkpoint_steps, make_batches, make_models, simple_adaptor
from tests.conftest import training_config as config_for
from tests.tensorboard_events import read_scalars
from textbrewer.training import checkpoint
from textbrewer.training.checkpoint import CorruptStateError
from textbrewer.training.faults import NonFiniteWeightsError


def distiller_for(tmp_path, **settings):
    teacher, student = make_models()
    settings = {"ckpt_steps": 2, "save_training_state": True, **settings}
    distiller = textbrewer.BasicDistiller(
        config_for(tmp_path, **settings),
        textbrewer.DistillationConfig(hard_label_weight=1),
        teacher,
        student,
        simple_adaptor,
        simple_adaptor,
    )
    return distiller, student


def train(distiller, optimizer, num_steps=4, **kwargs):
    return distiller.train(optimizer, None, make_batches(3), None, num_steps=num_steps, **kwargs)


def sgd(student):
    return torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)


def snapshot(directory):
    return {name: os.stat(directory / name).st_mtime_ns for name in os.listdir(directory)}


# --------------------------------------------------------------------- permissions
@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_checkpoints_get_the_permissions_torch_save_gives(tmp_path, umask):
    previous = os.umask(umask)
    try:
        torch.save({"w": torch.ones(1)}, tmp_path / "plain.pt")
        distiller, student = distiller_for(tmp_path)
        train(distiller, sgd(student))
    finally:
        os.umask(previous)
    expected = stat.S_IMODE(os.stat(tmp_path / "plain.pt").st_mode)
    assert expected == 0o666 & ~umask
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == ["gs2.pkl", "gs2.state.pt", "gs4.pkl", "gs4.state.pt"]
    for name in os.listdir(out):
        assert stat.S_IMODE(os.stat(out / name).st_mode) == expected, name


# --------------------------------------------------------------------- stale temporaries
def test_stale_temporaries_of_our_naming_are_removed_when_training_starts(tmp_path):
    out = tmp_path / "out"
    distiller, student = distiller_for(tmp_path)
    ours = [".gs2.pkl.k3j_x9ab.tmp", ".gs10.state.pt.0f3a9c1e.tmp"]
    others = ["gs2.pkl.tmp", ".gs2.pkl", ".other.pkl.abcd1234.tmp", "notes.tmp", "gsx.pkl"]
    for name in ours + others:
        (out / name).write_bytes(b"half")
    train(distiller, sgd(student))
    assert sorted(os.listdir(out)) == sorted(
        others + ["gs2.pkl", "gs2.state.pt", "gs4.pkl", "gs4.state.pt"]
    )


# --------------------------------------------------------------------- non-finite weights
def test_nan_gradients_with_a_finite_loss_never_reach_a_checkpoint(tmp_path):
    distiller, student = distiller_for(tmp_path)
    poisoned = []
    student.head.weight.register_hook(lambda grad: grad * float("nan") if poisoned else grad)

    calls = []

    def poison_step_4(batch):  # the 4th micro-batch is step 4's: its gradient becomes NaN
        calls.append(1)
        if len(calls) == 4:
            poisoned.append(True)
        return batch

    with pytest.raises(NonFiniteWeightsError) as raised:
        train(distiller, sgd(student), batch_postprocessor=poison_step_4)
    message = str(raised.value)
    assert "NaN or inf at optimizer step 4" in message
    assert "head.weight" in message
    assert "gs4.pkl was NOT written and training stopped" in message
    assert "max_grad_norm" in message
    assert f"the latest is {str(tmp_path / 'out' / 'gs2.pkl')!r}" in message
    assert sorted(os.listdir(tmp_path / "out")) == ["gs2.pkl", "gs2.state.pt"]
    saved = torch.load(tmp_path / "out" / "gs2.pkl")
    assert all(torch.isfinite(value).all() for value in saved.values())
    assert not torch.isfinite(student.head.weight).all()  # the weights really were NaN


# --------------------------------------------------------------------- damaged state files
def run_to_step_6(tmp_path):
    distiller, student = distiller_for(tmp_path)
    train(distiller, sgd(student), num_steps=6)
    return tmp_path / "out"


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_a_damaged_state_file_is_named_and_the_earlier_resumable_one_suggested(tmp_path, damage):
    out = run_to_step_6(tmp_path)
    state = out / "gs6.state.pt"
    data = state.read_bytes()
    state.write_bytes(
        {"truncate": data[: len(data) // 2], "garbage": b"not a zip" * 20, "empty": b""}[damage]
    )
    distiller, student = distiller_for(tmp_path)
    with pytest.raises(CorruptStateError) as raised:
        train(distiller, sgd(student), num_steps=8, resume_from=str(out))
    message = str(raised.value)
    assert f"the training state {str(state)!r}" in message
    assert "is truncated or damaged" in message
    assert f"resume_from={str(out / 'gs4.pkl')!r}" in message
    # The suggestion works.
    distiller, student = distiller_for(tmp_path)
    result = train(distiller, sgd(student), num_steps=8, resume_from=str(out / "gs4.pkl"))
    assert result.global_step == 8


def test_a_damaged_only_state_says_there_is_no_earlier_one(tmp_path):
    distiller, student = distiller_for(tmp_path)
    train(distiller, sgd(student), num_steps=2)
    (tmp_path / "out" / "gs2.state.pt").write_bytes(b"\x00" * 10)
    distiller, student = distiller_for(tmp_path)
    with pytest.raises(CorruptStateError, match="holds no earlier resumable checkpoint"):
        train(distiller, sgd(student), resume_from=True)


class Payload:
    """An object whose unpickling would run code."""

    def __reduce__(self):
        return (os.mkdir, ("/tmp/textbrewer-was-here",))


def test_state_files_load_with_weights_only_and_refuse_code(tmp_path):
    out = run_to_step_6(tmp_path)
    state = torch.load(out / "gs6.state.pt", weights_only=False)
    state["parts"]["extra"] = {"payload": Payload()}
    with open(out / "gs6.state.pt", "wb") as handle:
        torch.save(state, handle)
    distiller, student = distiller_for(tmp_path)
    with pytest.raises(CorruptStateError) as raised:
        train(distiller, sgd(student), num_steps=8, resume_from=True)
    assert f"holds a {os.mkdir.__module__}.mkdir object" in str(raised.value)
    assert "weights_only=True refuses" in str(raised.value)
    assert "add_safe_globals" in str(raised.value)  # torch 2.3: says to upgrade for it
    assert not os.path.exists("/tmp/textbrewer-was-here")


def test_a_state_file_is_tensors_and_plain_values_only(tmp_path):
    out = run_to_step_6(tmp_path)
    # torch's own weights_only loading reads it with no global allowed (torch 2.3 allows none).
    loaded = torch.load(out / "gs6.state.pt", weights_only=True)
    saved = loaded["ranks"][0]["rng"]["numpy"]
    assert saved["name"] == "MT19937"
    assert saved["keys"].shape == (624,)
    np.random.seed(3)
    expected = np.random.rand(3)
    np.random.seed(3)
    checkpoint.restore_rng_state(checkpoint.capture_rng_state())  # the round trip is exact
    assert np.array_equal(np.random.rand(3), expected)


def test_a_state_file_with_numpys_own_rng_tuple_still_resumes(tmp_path):
    """Files written before the RNG states were tensors hold np.random.get_state() itself."""
    if not hasattr(torch.serialization, "add_safe_globals"):
        pytest.skip("torch < 2.4 cannot allow NumPy's globals in weights_only loading")
    distiller, student = distiller_for(tmp_path)
    train(distiller, sgd(student), num_steps=8)
    out = tmp_path / "out"
    state_path = out / "gs6.state.pt"
    state = torch.load(state_path, weights_only=False)
    for rank in state["ranks"]:
        rank["rng"]["numpy"] = checkpoint._numpy_state(rank["rng"]["numpy"])
    torch.save(state, state_path)
    final = {k: v.clone() for k, v in torch.load(out / "gs8.pkl").items()}
    for name in ("gs8.pkl", "gs8.state.pt"):
        (out / name).unlink()
    distiller, student = distiller_for(tmp_path)
    assert train(distiller, sgd(student), num_steps=8, resume_from=str(state_path)).global_step == 8
    for key, value in final.items():
        assert torch.equal(student.state_dict()[key], value), key


# --------------------------------------------------------------------- another optimizer
def test_resuming_with_another_optimizer_class_is_a_clear_error(tmp_path):
    out = run_to_step_6(tmp_path)
    distiller, student = distiller_for(tmp_path)
    adam = torch.optim.Adam(student.parameters(), lr=0.01)
    with pytest.raises(ValueError, match="cannot resume") as raised:
        train(distiller, adam, num_steps=8, resume_from=str(out))
    message = str(raised.value)
    assert "saved with the optimizer SGD (torch.optim.sgd.SGD)" in message
    assert "this call passes a Adam (torch.optim.adam.Adam)" in message


def test_a_state_without_the_class_name_is_checked_by_its_options(tmp_path):
    out = run_to_step_6(tmp_path)
    state = torch.load(out / "gs6.state.pt", weights_only=False)
    del state["parts"]["optimizer"]["textbrewer_class"]  # as 0.3.x files were written
    with open(out / "gs6.state.pt", "wb") as handle:
        torch.save(state, handle)
    distiller, student = distiller_for(tmp_path)
    with pytest.raises(ValueError, match="saved by another optimizer class than Adam"):
        train(distiller, torch.optim.Adam(student.parameters()), num_steps=8, resume_from=True)
    distiller, student = distiller_for(tmp_path)
    assert train(distiller, sgd(student), num_steps=8, resume_from=True).global_step == 8


def test_resuming_with_other_param_groups_is_a_clear_error(tmp_path):
    out = run_to_step_6(tmp_path)
    distiller, student = distiller_for(tmp_path)
    head = list(student.head.parameters())
    rest = [p for n, p in student.named_parameters() if not n.startswith("head.")]
    optimizer = torch.optim.SGD([{"params": rest}, {"params": head, "lr": 0.1}], lr=0.05)
    with pytest.raises(ValueError, match="cannot resume") as raised:
        train(distiller, optimizer, num_steps=8, resume_from=str(out))
    assert "1 param group(s) with [7] parameter tensors" in str(raised.value)
    assert "this optimizer has 2 with [5, 2]" in str(raised.value)


# --------------------------------------------------------------------- Ctrl-C
def interrupt_at(count):
    calls = []

    def postprocess(batch):
        calls.append(1)
        if len(calls) == count:
            raise KeyboardInterrupt
        return batch

    return postprocess


def test_ctrl_c_flushes_the_scalars_closes_the_writer_and_says_how_to_resume(tmp_path, caplog):
    distiller, student = distiller_for(tmp_path, log_dir=str(tmp_path / "tb"))
    with caplog.at_level(logging.WARNING, logger="textbrewer"), pytest.raises(KeyboardInterrupt):
        train(distiller, sgd(student), num_steps=10, batch_postprocessor=interrupt_at(6))
    scalars = read_scalars(tmp_path / "tb")
    assert [step for step, _ in scalars["scalar/total_loss"]] == [0, 1, 2, 3, 4]
    latest = str(tmp_path / "out" / "gs4.pkl")
    assert "Training interrupted at optimizer step 5" in caplog.text
    assert f"resume_from={latest!r}" in caplog.text
    distiller, student = distiller_for(tmp_path)
    assert train(distiller, sgd(student), num_steps=10, resume_from=latest).global_step == 10


def test_ctrl_c_without_training_state_says_so(tmp_path, caplog):
    distiller, student = distiller_for(tmp_path, save_training_state=False)
    with caplog.at_level(logging.WARNING, logger="textbrewer"), pytest.raises(KeyboardInterrupt):
        train(distiller, sgd(student), batch_postprocessor=interrupt_at(3))
    assert "cannot be resumed from: TrainingConfig(save_training_state=True)" in caplog.text


# --------------------------------------------------------------------- output_dir
def test_an_unwritable_output_dir_is_reported_before_training(tmp_path, monkeypatch):
    distiller, student = distiller_for(tmp_path)
    out = tmp_path / "out"
    if os.geteuid() == 0:  # root writes anywhere: make the write itself fail, as EACCES would
        import tempfile

        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied", str(out))

        monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    else:
        out.chmod(0o500)
    batches = []
    try:
        with pytest.raises(PermissionError) as raised:
            train(distiller, sgd(student), batch_postprocessor=lambda b: batches.append(b) or b)
    finally:
        out.chmod(0o700)
    assert f"TrainingConfig `output_dir`={str(out)!r} cannot be written to" in str(raised.value)
    assert "Permission denied" in str(raised.value)
    assert batches == []  # reported before the first batch


def test_an_output_dir_that_is_a_file_is_reported(tmp_path):
    distiller, student = distiller_for(tmp_path)
    (tmp_path / "out").rmdir()
    (tmp_path / "out").write_text("a file")
    with pytest.raises(OSError, match="`output_dir`=.* cannot be written to"):
        train(distiller, sgd(student))


# --------------------------------------------------------------------- finished runs
def counting(optimizer):
    steps = []
    original = optimizer.step

    def step(*args, **kwargs):
        steps.append(1)
        return original(*args, **kwargs)

    optimizer.step = step
    return steps


@pytest.mark.parametrize("mode", ["epoch", "step"])
def test_resuming_a_finished_run_takes_no_step_and_writes_nothing(tmp_path, mode):
    lengths = {"num_epochs": 2} if mode == "epoch" else {"num_epochs": None, "num_steps": 6}
    distiller, student = distiller_for(tmp_path)
    distiller.train(sgd(student), None, make_batches(3), **lengths)
    before = snapshot(tmp_path / "out")
    weights = {k: v.clone() for k, v in student.state_dict().items()}
    distiller, student = distiller_for(tmp_path)
    optimizer = sgd(student)
    steps = counting(optimizer)
    result = distiller.train(optimizer, None, make_batches(3), resume_from=True, **lengths)
    assert result.global_step == 6
    assert steps == []
    assert snapshot(tmp_path / "out") == before
    assert all(torch.equal(student.state_dict()[k], v) for k, v in weights.items())


def test_resuming_a_finished_multi_task_run_takes_no_step_and_writes_nothing(tmp_path):
    def build():
        teacher, student = make_models()
        distiller = textbrewer.MultiTaskDistiller(
            config_for(tmp_path, ckpt_steps=2, save_training_state=True),
            textbrewer.DistillationConfig(),
            {"a": teacher, "b": teacher},
            student,
            {"a": simple_adaptor, "b": simple_adaptor},
            {"a": simple_adaptor, "b": simple_adaptor},
        )
        return distiller, student

    loaders = {"a": make_batches(2), "b": make_batches(3, seed=1)}
    distiller, student = build()
    distiller.train(sgd(student), None, loaders, 4)
    assert checkpoint_steps(tmp_path / "out") == [2, 4]
    before = snapshot(tmp_path / "out")
    distiller, student = build()
    optimizer = sgd(student)
    steps = counting(optimizer)
    assert distiller.train(optimizer, None, loaders, 4, resume_from=True).global_step == 4
    assert steps == []
    assert snapshot(tmp_path / "out") == before


def test_resuming_with_another_number_of_processes_warns(tmp_path, caplog):
    out = run_to_step_6(tmp_path)
    state = torch.load(out / "gs6.state.pt", weights_only=False)
    state["ranks"] = state["ranks"] * 2  # as if saved by 2 processes
    with open(out / "gs6.state.pt", "wb") as handle:
        torch.save(state, handle)
    distiller, student = distiller_for(tmp_path)
    with caplog.at_level(logging.WARNING, logger="textbrewer"):
        train(distiller, sgd(student), num_steps=8, resume_from=True)
    assert "was saved by 2 process(es), this run has 1" in caplog.text


def test_a_failed_write_names_the_file_and_keeps_the_earlier_one(tmp_path, monkeypatch):
    target = tmp_path / "gs1.pkl"
    checkpoint.atomic_save({"w": torch.ones(2)}, target)

    def disk_full(obj, handle):
        handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left on device") as raised:
        checkpoint.atomic_save({"w": torch.zeros(2)}, target)
    monkeypatch.undo()
    if hasattr(raised.value, "add_note"):
        assert raised.value.__notes__ == [
            f"(while writing {str(target)!r}; an earlier file there is intact)"
        ]
    assert os.listdir(tmp_path) == ["gs1.pkl"]
    assert torch.equal(torch.load(target)["w"], torch.ones(2))


def test_an_output_dir_removed_during_training_is_recreated(tmp_path):
    distiller, student = distiller_for(tmp_path)

    def remove_output_dir(model, step):
        if step == 2:  # a teammate "cleans up" after the first checkpoint
            shutil.rmtree(tmp_path / "out")

    train(distiller, sgd(student), callback=remove_output_dir)
    assert checkpoint_steps(tmp_path / "out") == [4]


def test_a_fresh_run_into_a_directory_with_checkpoints_warns(tmp_path, caplog):
    distiller, student = distiller_for(tmp_path)
    with caplog.at_level(logging.WARNING, logger="textbrewer"):
        train(distiller, sgd(student))
    assert "already holds" not in caplog.text
    distiller, student = distiller_for(tmp_path)
    with caplog.at_level(logging.WARNING, logger="textbrewer"):
        train(distiller, sgd(student))
    assert "already holds 2 checkpoint(s) (gs2.pkl ... gs4.pkl) and this run starts fresh" in (
        caplog.text
    )
    caplog.clear()
    distiller, student = distiller_for(tmp_path)
    with caplog.at_level(logging.WARNING, logger="textbrewer"):
        train(distiller, sgd(student), num_steps=6, resume_from="auto")
    assert "already holds" not in caplog.text


def test_the_errors_a_run_raises_are_top_level_names():
    # Users catch them around train(): `except textbrewer.NonFiniteWeightsError`.
    from textbrewer.training.checkpoint import CorruptStateError
    from textbrewer.training.faults import NonFiniteWeightsError

    assert textbrewer.NonFiniteWeightsError is NonFiniteWeightsError
    assert textbrewer.CorruptStateError is CorruptStateError
    assert {"NonFiniteWeightsError", "CorruptStateError", "NonFiniteLossError"} <= set(
        textbrewer.__all__
    )
