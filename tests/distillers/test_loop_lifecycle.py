"""The loop with evaluation, the checkpoint lifecycle and run reporting: real runs, real files."""

import logging
import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

import textbrewer
from tests.conftest import (
    checkpoint_steps,
    leave_process_group,
    make_batches,
    make_models,
    simple_adaptor,
    training_config,
)
from tests.tensorboard_events import read_scalars


def distiller_for(tmp_path, distill=None, **config):
    teacher, student = make_models()
    distiller = textbrewer.BasicDistiller(
        training_config(tmp_path, **config),
        distill or textbrewer.DistillationConfig(),
        teacher,
        student,
        simple_adaptor,
        simple_adaptor,
    )
    return distiller, student


def metrics_by_step(table, calls=None):
    def callback(model, step):
        if calls is not None:
            calls.append(step)
        return {"accuracy": table[step], "name": "dev"} if step in table else None

    return callback


def files(tmp_path):
    return sorted(os.listdir(tmp_path / "out"))


def train_steps(distiller, student, num_steps, **kwargs):
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05)
    return distiller.train(optimizer, None, make_batches(3), None, num_steps=num_steps, **kwargs)


# --------------------------------------------------------------------- defaults
def test_defaults_write_the_same_files_and_tags_and_return_a_result(tmp_path):
    distiller, student = distiller_for(
        tmp_path, ckpt_steps=2, log_dir=str(tmp_path / "tb"), log_train_scalars=False
    )
    result = train_steps(distiller, student, 5, callback=lambda model, step: None)
    assert files(tmp_path) == ["gs2.pkl", "gs4.pkl", "gs5.pkl"]
    scalars = read_scalars(tmp_path / "tb")
    assert sorted(scalars) == [
        "scalar/total_loss",
        "scalar/unweighted_hard_label_loss",
        "scalar/unweighted_kd_loss",
    ]
    assert result.global_step == 5
    assert result.metrics == {}
    assert result.best_checkpoint is None
    assert not result.stopped_early
    assert result.checkpoints == [str(tmp_path / "out" / f"gs{s}.pkl") for s in (2, 4, 5)]
    # last_losses: the mean over the last read-back (the checkpoint at 5 read back step 5).
    last_total = scalars["scalar/total_loss"][-1][1]
    assert result.last_losses["total_loss"] == pytest.approx(last_total, rel=1e-6)


def test_a_log_dir_alone_also_writes_the_train_scalars(tmp_path):
    distiller, student = distiller_for(tmp_path, ckpt_steps=2, log_dir=str(tmp_path / "tb"))
    train_steps(distiller, student, 4)
    scalars = read_scalars(tmp_path / "tb")
    assert {"train/learning_rate", "train/kd_loss_weight", "train/grad_norm"} <= set(scalars)
    assert [step for step, _ in scalars["train/learning_rate"]] == [1, 2, 3, 4]


# --------------------------------------------------------------------- keep last N and best
def test_limit_two_with_a_best_metric_keeps_the_last_two_and_the_best(tmp_path, caplog):
    table = {2: 0.5, 4: 0.9, 6: 0.7, 8: 0.8, 10: 0.6}
    distiller, student = distiller_for(
        tmp_path,
        ckpt_steps=2,
        save_total_limit=2,
        metric_for_best_model="accuracy",
        save_training_state=True,
        log_dir=str(tmp_path / "tb"),
    )
    with caplog.at_level(logging.INFO, logger="textbrewer"):
        result = train_steps(distiller, student, 10, callback=metrics_by_step(table))
    out = tmp_path / "out"
    assert files(tmp_path) == [f"gs{s}.{e}" for s in (10, 4, 8) for e in ("pkl", "state.pt")]
    assert result.best_checkpoint == str(out / "gs4.pkl")
    assert result.best_metric == 0.9
    assert result.metrics == {"accuracy": 0.6}
    assert result.checkpoints == [str(out / f"gs{s}.pkl") for s in (4, 8, 10)]
    assert read_scalars(tmp_path / "tb")["eval/accuracy"] == [
        (step, pytest.approx(value)) for step, value in table.items()
    ]
    messages = [r.getMessage() for r in caplog.records]
    assert "Evaluation at step 4: accuracy=0.9" in messages
    assert f"  best: 0.9 at {out / 'gs4.pkl'}" in messages[-1].splitlines()


# --------------------------------------------------------------------- early stopping
def test_early_stopping_stops_at_the_predicted_step_with_a_final_checkpoint(tmp_path, caplog):
    # Evaluations every 2 steps; best 0.6 at step 4; 6 and 8 do not beat it -> stop at 8.
    table = {2: 0.5, 4: 0.6, 6: 0.55, 8: 0.6, 10: 0.9}
    calls = []
    distiller, student = distiller_for(
        tmp_path,
        ckpt_steps=100,
        eval_steps=2,
        save_total_limit=1,
        metric_for_best_model="accuracy",
        early_stopping_patience=2,
    )
    with caplog.at_level(logging.INFO, logger="textbrewer"):
        result = train_steps(distiller, student, 20, callback=metrics_by_step(table, calls))
    assert calls == [2, 4, 6, 8]
    assert result.global_step == 8
    assert result.stopped_early
    # gs2 (best at the time) was written, then deleted when gs4 became the best and the last;
    # gs8 is the final model, written because the run stops there.
    assert files(tmp_path) == ["gs4.pkl", "gs8.pkl"]
    final = torch.load(tmp_path / "out" / "gs8.pkl")
    assert all(torch.equal(final[k], v) for k, v in student.state_dict().items())
    reason = (
        "early stopping at step 8: `accuracy` did not improve on 0.6 (step 4) in 2 "
        "evaluation(s) (early_stopping_patience=2)"
    )
    assert result.stop_reason == reason
    assert f"Stopping: {reason}" in [r.getMessage() for r in caplog.records]


def test_eval_steps_without_metrics_call_the_callback_without_writing_files(tmp_path):
    calls = []
    distiller, student = distiller_for(tmp_path, ckpt_steps=3, eval_steps=2)
    train_steps(distiller, student, 6, callback=lambda model, step: calls.append(step))
    assert calls == [2, 3, 4, 6]
    assert checkpoint_steps(tmp_path / "out") == [3, 6]


def test_evaluation_settings_without_a_callback_fail_before_training(tmp_path):
    distiller, student = distiller_for(tmp_path, ckpt_steps=2, metric_for_best_model="f1")
    with pytest.raises(ValueError, match="`metric_for_best_model`='f1' needs a `callback`"):
        train_steps(distiller, student, 4)
    assert files(tmp_path) == []


# --------------------------------------------------------------------- resume flags
class Stop(Exception):
    pass


def stop_after(batches):
    seen = []

    def postprocess(batch):
        seen.append(batch)
        if len(seen) > batches:
            raise Stop
        return batch

    return postprocess


def test_resume_true_needs_a_checkpoint_and_auto_starts_fresh(tmp_path):
    distiller, student = distiller_for(tmp_path, ckpt_steps=2, save_training_state=True)
    with pytest.raises(FileNotFoundError, match="`resume_from`=True"):
        train_steps(distiller, student, 4, resume_from=True)
    result = train_steps(distiller, student, 4, resume_from="auto")
    assert result.global_step == 4
    assert checkpoint_steps(tmp_path / "out") == [2, 4]


def test_restarting_a_finished_job_with_auto_trains_nothing_more(tmp_path):
    distiller, student = distiller_for(tmp_path, ckpt_steps=2, save_training_state=True)
    train_steps(distiller, student, 4)
    finished = {k: v.clone() for k, v in student.state_dict().items()}
    restarted, student = distiller_for(tmp_path, ckpt_steps=2, save_training_state=True)
    result = train_steps(restarted, student, 4, resume_from="auto")
    assert result.global_step == 4
    assert checkpoint_steps(tmp_path / "out") == [2, 4]
    for k, v in finished.items():
        assert torch.equal(student.state_dict()[k], v)


def test_an_early_stopped_job_stays_stopped_until_patience_grows(tmp_path):
    table = {2: 0.5, 4: 0.4, 6: 0.9, 8: 0.3}
    settings = {
        "ckpt_steps": 100,
        "eval_steps": 2,
        "save_training_state": True,
        "metric_for_best_model": "accuracy",
    }
    first, student = distiller_for(tmp_path, early_stopping_patience=1, **settings)
    assert train_steps(first, student, 8, callback=metrics_by_step(table)).global_step == 4
    restarted, student = distiller_for(tmp_path, early_stopping_patience=1, **settings)
    calls = []
    result = train_steps(
        restarted, student, 8, callback=metrics_by_step(table, calls), resume_from="auto"
    )
    assert (result.global_step, calls, result.stopped_early) == (4, [], True)
    patient, student = distiller_for(tmp_path, early_stopping_patience=3, **settings)
    result = train_steps(
        patient, student, 8, callback=metrics_by_step(table, calls), resume_from=True
    )
    assert (result.global_step, calls, result.best_checkpoint) == (
        8,
        [6, 8],
        str(tmp_path / "out" / "gs6.pkl"),
    )


@pytest.mark.slow
def test_auto_resume_after_a_crash_matches_an_uninterrupted_run_and_keeps_rotating(tmp_path):
    settings = {"ckpt_steps": 2, "save_training_state": True, "save_total_limit": 2}
    full, full_student = distiller_for(tmp_path / "full", **settings)
    train_steps(full, full_student, 10)

    crashed, student = distiller_for(tmp_path / "job", **settings)
    with pytest.raises(Stop):
        train_steps(crashed, student, 10, batch_postprocessor=stop_after(7))
    assert checkpoint_steps(tmp_path / "job" / "out") == [4, 6]
    restarted, student = distiller_for(tmp_path / "job", **settings)  # a fresh process
    result = train_steps(restarted, student, 10, resume_from="auto")
    assert result.global_step == 10
    assert checkpoint_steps(tmp_path / "job" / "out") == [8, 10]
    for k, v in full_student.state_dict().items():
        assert torch.equal(student.state_dict()[k], v)


@pytest.mark.slow
def test_a_finished_run_continues_to_more_steps_as_if_never_stopped(tmp_path):
    settings = {"ckpt_steps": 2, "save_training_state": True}
    full, full_student = distiller_for(tmp_path / "full", **settings)
    train_steps(full, full_student, 8)
    first, student = distiller_for(tmp_path / "job", **settings)
    train_steps(first, student, 4)
    again, student = distiller_for(tmp_path / "job", **settings)
    result = train_steps(again, student, 8, resume_from=True)
    assert result.global_step == 8
    assert checkpoint_steps(tmp_path / "job" / "out") == [2, 4, 6, 8]
    for k, v in full_student.state_dict().items():
        assert torch.equal(student.state_dict()[k], v)
    shorter, student = distiller_for(tmp_path / "job", **settings)
    with pytest.raises(ValueError, match="cannot resume"):  # shorter than the saved step
        train_steps(shorter, student, 6, resume_from=True)


@pytest.mark.slow
def test_a_finished_epoch_run_continues_to_more_epochs(tmp_path):
    def run(directory, epochs, **kwargs):
        distiller, student = distiller_for(directory, save_training_state=True)
        optimizer = torch.optim.SGD(student.parameters(), lr=0.05)
        distiller.train(optimizer, None, make_batches(3), epochs, **kwargs)
        return student

    full = run(tmp_path / "full", 3)
    run(tmp_path / "job", 2)
    continued = run(tmp_path / "job", 3, resume_from=True)
    assert checkpoint_steps(tmp_path / "job" / "out") == [3, 6, 9]
    for k, v in full.state_dict().items():
        assert torch.equal(continued.state_dict()[k], v)


# --------------------------------------------------------------------- what a run shows
class RecordingSGD(torch.optim.SGD):
    """SGD that records the gradient norm (float64, by hand) and LR of each step it takes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.norms, self.lrs = [], []

    def step(self, closure=None):
        grads = [p.grad for group in self.param_groups for p in group["params"]]
        self.norms.append(math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads)))
        self.lrs.append([group["lr"] for group in self.param_groups])
        return super().step(closure)


@pytest.mark.parametrize("max_grad_norm", [-1.0, 1e6])
def test_train_scalars_read_back_equal_the_schedules(tmp_path, monkeypatch, max_grad_norm):
    monkeypatch.setitem(
        textbrewer.TEMPERATURE_SCHEDULER,
        "by_row",
        lambda logits_S, logits_T, base: base + torch.arange(len(logits_S)).to(logits_S),
    )
    distill = textbrewer.DistillationConfig(
        temperature=2,
        temperature_scheduler="by_row",
        hard_label_weight=1,
        kd_loss_weight_scheduler="linear_decay",
        hard_label_weight_scheduler="linear_growth",
    )
    distiller, student = distiller_for(
        tmp_path,
        distill,
        ckpt_steps=3,
        log_dir=str(tmp_path / "tb"),
        log_train_scalars=True,
        log_every_n_steps=2,
    )
    optimizer = RecordingSGD(student.parameters(), lr=0.1)
    lr_factor = lambda step: 1 / (1 + step)  # noqa: E731
    result = distiller.train(
        optimizer,
        None,
        make_batches(3),
        None,
        num_steps=6,
        max_grad_norm=max_grad_norm,
        scheduler_class=torch.optim.lr_scheduler.LambdaLR,
        scheduler_args={"lr_lambda": lr_factor},
    )
    scalars = read_scalars(tmp_path / "tb")
    steps = list(range(1, 7))
    assert scalars["train/learning_rate"] == [
        (s, pytest.approx(0.1 * lr_factor(s - 1))) for s in steps
    ]
    assert [lr for (lr,) in optimizer.lrs] == [pytest.approx(0.1 * lr_factor(s - 1)) for s in steps]
    # The weights a step used: the configured ones at step 1, then schedule((step - 1) / 6).
    assert scalars["train/kd_loss_weight"] == [
        (s, pytest.approx(1.0 if s == 1 else 1 - (s - 1) / 6)) for s in steps
    ]
    assert scalars["train/hard_label_weight"] == [
        (s, pytest.approx(1.0 if s == 1 else (s - 1) / 6)) for s in steps
    ]
    # 4 rows per batch: temperatures 2, 3, 4, 5, mean 3.5.
    assert scalars["train/temperature"] == [(s, 3.5) for s in steps]
    assert scalars["train/grad_norm"] == [
        (s, pytest.approx(norm, rel=1e-6)) for s, norm in zip(steps, optimizer.norms)
    ]
    throughput = scalars["train/samples_per_second"]
    assert [s for s, _ in throughput] == [2, 4, 6]
    assert all(value > 0 for _, value in throughput)
    assert result.samples_per_second > 0


def test_start_banner_and_end_summary(tmp_path, caplog):
    distiller, student = distiller_for(
        tmp_path, ckpt_steps=2, save_total_limit=1, gradient_accumulation_steps=2
    )
    with caplog.at_level(logging.INFO, logger="textbrewer"):
        result = train_steps(distiller, student, 5)
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("textbrewer")]
    banner = next(m for m in messages if m.startswith("Training starts")).splitlines()
    parameters = sum(p.numel() for p in student.parameters())
    assert banner == [
        "Training starts",
        "  distiller: BasicDistiller",
        "  device: cpu, precision: fp32, world size: 1",
        "  steps: 5 optimizer steps (gradient accumulation 2)",
        f"  checkpoints: 3 at steps 2, 4, 5 (keep the last 1) in {tmp_path / 'out'}",
        f"  trainable parameters: student {parameters:,}",
    ]
    summary = messages[-1].splitlines()
    assert summary[0].startswith("Training done after 5 optimizer steps in ")
    assert summary[0].endswith(f"{result.samples_per_second:.1f} samples/s")
    assert summary[1].startswith("  last losses: total_loss=")
    # 10 micro-batches of 4 samples.
    assert result.samples_per_second * result.elapsed_seconds == pytest.approx(40, rel=0.05)


# --------------------------------------------------------------------- distributed decisions
def lifecycle_worker(rank, port, workdir, results):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2"
    )
    torch.set_num_threads(1)
    # Rank 0 plateaus after step 2; rank 1 keeps improving. Rank 0's metrics decide on both ranks,
    # so both stop after the evaluations at 3 and 4 (patience 2) and neither waits for the other.
    table = {1: 0.5, 2: 0.7, 3: 0.6, 4: 0.6} if rank == 0 else {s: s / 10 for s in range(1, 9)}
    distiller, student = distiller_for(
        workdir,
        local_rank=rank,
        ckpt_steps=100,
        eval_steps=1,
        save_total_limit=1,
        metric_for_best_model="accuracy",
        early_stopping_patience=2,
    )
    result = train_steps(distiller, student, 8, callback=metrics_by_step(table))
    torch.save(
        {"step": result.global_step, "best": result.best_checkpoint, "metrics": result.metrics},
        os.path.join(results, f"rank{rank}.pt"),
    )
    leave_process_group()


@pytest.mark.slow
def test_every_rank_follows_rank_0s_metrics(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    results = tmp_path / "results"
    results.mkdir()
    mp.spawn(lifecycle_worker, args=(port, tmp_path, str(results)), nprocs=2, join=True)
    ranks = [torch.load(results / f"rank{r}.pt") for r in range(2)]
    best = str(tmp_path / "out" / "gs2.pkl")
    assert ranks[0] == ranks[1] == {"step": 4, "best": best, "metrics": {"accuracy": 0.6}}
    assert files(tmp_path) == ["gs2.pkl", "gs4.pkl"]


def count_reads(monkeypatch, run):
    """Calls of the Tensor methods that read a value back to the host, during ``run()``."""
    calls = []
    for name in ("item", "tolist", "cpu", "__float__", "__bool__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, **kwargs):
            calls.append(1)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    run()
    monkeypatch.undo()
    return len(calls)


def test_train_scalars_add_no_read_back_per_step(tmp_path, monkeypatch):
    def reads(steps, log_every_n_steps=1000):
        distiller, student = distiller_for(
            tmp_path / f"{steps}-{log_every_n_steps}",
            textbrewer.DistillationConfig(temperature_scheduler=["flsw", 1, 1]),
            ckpt_steps=1000,
            log_every_n_steps=log_every_n_steps,
            log_train_scalars=True,
            log_dir=str(tmp_path / "tb"),
        )
        return count_reads(
            monkeypatch,
            lambda: train_steps(distiller, student, steps),  # the norm computed for logging
        )

    # Fixed costs (the final read-back, set-up) cancel out between 3 and 6 steps.
    assert reads(6) - reads(3) == 0
    # The counter does see read-backs: one per step when every step is read back.
    assert reads(6, log_every_n_steps=1) - reads(3, log_every_n_steps=1) >= 3
