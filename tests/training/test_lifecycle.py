"""CheckpointLifecycle: rotation on real files, the best checkpoint, early stopping, resume."""

import logging

import pytest

from tests.conftest import training_config
from textbrewer.training import checkpoint as ckpt
from textbrewer.training.lifecycle import (
    CheckpointLifecycle,
    check_continuation,
    greater_is_better,
    resume_source,
)


def write_checkpoint(directory, step, with_state=True):
    path = ckpt.checkpoint_path(directory, step)
    path.write_bytes(b"weights")
    if with_state:
        ckpt.state_path_for(path).write_bytes(b"state")
    return path


def files_in(directory):
    return sorted(p.name for p in directory.iterdir())


def run_evaluations(lifecycle, directory, metrics_by_step):
    """Evaluates, writes and rotates at each step as the loop does; returns the stop step."""
    for step, value in metrics_by_step:
        path = ckpt.checkpoint_path(directory, step)
        lifecycle.observe(step, {"accuracy": value}, path)
        write_checkpoint(directory, step)
        lifecycle.record_checkpoint(path)
        lifecycle.delete_surplus()
        if lifecycle.should_stop:
            return step
    return None


def test_limit_keeps_the_last_checkpoints_with_their_states(tmp_path):
    config = training_config(tmp_path, save_total_limit=2)
    lifecycle = CheckpointLifecycle(config)
    out = tmp_path / "out"
    for step in (2, 4, 6, 8):
        lifecycle.record_checkpoint(write_checkpoint(out, step))
        lifecycle.delete_surplus()
    assert files_in(out) == ["gs6.pkl", "gs6.state.pt", "gs8.pkl", "gs8.state.pt"]
    assert lifecycle.kept == [str(out / "gs6.pkl"), str(out / "gs8.pkl")]


def test_nothing_is_deleted_before_delete_surplus(tmp_path):
    lifecycle = CheckpointLifecycle(training_config(tmp_path, save_total_limit=1))
    out = tmp_path / "out"
    lifecycle.record_checkpoint(write_checkpoint(out, 1))
    lifecycle.record_checkpoint(write_checkpoint(out, 2))
    assert files_in(out) == ["gs1.pkl", "gs1.state.pt", "gs2.pkl", "gs2.state.pt"]
    assert lifecycle.delete_surplus() == [str(out / "gs1.pkl")]
    assert files_in(out) == ["gs2.pkl", "gs2.state.pt"]


def test_no_limit_keeps_everything_as_before(tmp_path):
    lifecycle = CheckpointLifecycle(training_config(tmp_path))
    out = tmp_path / "out"
    for step in (1, 2, 3):
        lifecycle.record_checkpoint(write_checkpoint(out, step, with_state=False))
        lifecycle.delete_surplus()
    assert files_in(out) == ["gs1.pkl", "gs2.pkl", "gs3.pkl"]


def test_best_checkpoint_survives_the_limit(tmp_path):
    config = training_config(tmp_path, save_total_limit=2, metric_for_best_model="accuracy")
    lifecycle = CheckpointLifecycle(config)
    out = tmp_path / "out"
    run_evaluations(lifecycle, out, [(2, 0.5), (4, 0.9), (6, 0.7), (8, 0.8), (10, 0.6)])
    assert files_in(out) == [f"gs{s}.{e}" for s in (10, 4, 8) for e in ("pkl", "state.pt")]
    assert lifecycle.best_checkpoint == str(out / "gs4.pkl")
    assert (lifecycle.best_metric, lifecycle.best_step) == (0.9, 4)


def test_best_among_the_last_leaves_exactly_the_limit(tmp_path):
    config = training_config(tmp_path, save_total_limit=2, metric_for_best_model="accuracy")
    lifecycle = CheckpointLifecycle(config)
    out = tmp_path / "out"
    run_evaluations(lifecycle, out, [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.4)])
    assert files_in(out) == ["gs3.pkl", "gs3.state.pt", "gs4.pkl", "gs4.state.pt"]


def test_a_former_best_is_rotated_out_once_superseded(tmp_path):
    config = training_config(tmp_path, save_total_limit=1, metric_for_best_model="accuracy")
    lifecycle = CheckpointLifecycle(config)
    out = tmp_path / "out"
    run_evaluations(lifecycle, out, [(1, 0.5), (2, 0.1), (3, 0.2), (4, 0.6), (5, 0.0)])
    assert files_in(out) == ["gs4.pkl", "gs4.state.pt", "gs5.pkl", "gs5.state.pt"]


def test_early_stopping_stops_at_the_predicted_evaluation(tmp_path, caplog):
    config = training_config(tmp_path, metric_for_best_model="accuracy", early_stopping_patience=3)
    lifecycle = CheckpointLifecycle(config)
    values = [(2, 0.5), (4, 0.7), (6, 0.6), (8, 0.7), (10, 0.8), (12, 0.1), (14, 0.8), (16, 0.2)]
    stopped = run_evaluations(lifecycle, tmp_path / "out", values + [(18, 0.9)])
    # 0.7 at step 8 equals the best (no improvement); 0.8 at 10 resets; 12, 14, 16 do not improve.
    assert stopped == 16
    assert lifecycle.evaluations_without_improvement == 3
    assert lifecycle.stop_reason == (
        "early stopping at step 16: `accuracy` did not improve on 0.8 (step 10) in 3 "
        "evaluation(s) (early_stopping_patience=3)"
    )


def test_threshold_and_direction(tmp_path):
    config = training_config(
        tmp_path,
        metric_for_best_model="eval_loss",
        early_stopping_patience=2,
        early_stopping_threshold=0.1,
    )
    assert greater_is_better(config) is False
    lifecycle = CheckpointLifecycle(config)
    lifecycle.observe(1, {"eval_loss": 1.0}, "gs1.pkl")
    lifecycle.observe(2, {"eval_loss": 0.95}, "gs2.pkl")  # better, but by less than 0.1
    assert lifecycle.best_step == 1
    assert lifecycle.evaluations_without_improvement == 1
    lifecycle.observe(3, {"eval_loss": 0.85}, "gs3.pkl")
    assert lifecycle.best_step == 3
    assert lifecycle.evaluations_without_improvement == 0
    explicit = training_config(tmp_path, metric_for_best_model="eval_loss", greater_is_better=True)
    assert greater_is_better(explicit) is True
    assert greater_is_better(training_config(tmp_path, metric_for_best_model="f1")) is True


def test_needs_checkpoint_on_improvement_and_on_stop_only(tmp_path):
    config = training_config(tmp_path, metric_for_best_model="f1", early_stopping_patience=2)
    lifecycle = CheckpointLifecycle(config)
    answers = []
    for step, value in [(1, 0.5), (2, 0.4), (3, 0.6), (4, 0.1), (5, 0.2)]:
        lifecycle.observe(step, {"f1": value}, f"gs{step}.pkl")
        answers.append(lifecycle.needs_checkpoint())
    assert answers == [True, False, True, False, True]
    assert lifecycle.should_stop


def test_nan_never_improves(tmp_path):
    lifecycle = CheckpointLifecycle(training_config(tmp_path, metric_for_best_model="f1"))
    lifecycle.observe(1, {"f1": float("nan")}, "gs1.pkl")
    assert lifecycle.best_metric is None
    assert lifecycle.evaluations_without_improvement == 1


def test_missing_metric_names_the_field_and_what_was_returned(tmp_path):
    lifecycle = CheckpointLifecycle(training_config(tmp_path, metric_for_best_model="acc"))
    with pytest.raises(KeyError, match=r"`metric_for_best_model`='acc'.*'accuracy', 'loss'"):
        lifecycle.observe(3, {"loss": 1.0, "accuracy": 0.5}, "gs3.pkl")


def test_no_metrics_warns_once_and_changes_nothing(tmp_path, caplog):
    lifecycle = CheckpointLifecycle(training_config(tmp_path, metric_for_best_model="acc"))
    with caplog.at_level(logging.WARNING, logger="textbrewer"):
        lifecycle.observe(1, {}, "gs1.pkl")
        lifecycle.observe(2, {}, "gs2.pkl")
    assert sum("returned no metrics" in r.getMessage() for r in caplog.records) == 1
    assert lifecycle.best_metric is None
    assert lifecycle.evaluations_without_improvement == 0


def test_state_round_trip_keeps_rotating_and_finishes_pending_deletions(tmp_path):
    config = training_config(
        tmp_path, save_total_limit=1, metric_for_best_model="accuracy", early_stopping_patience=3
    )
    out = tmp_path / "out"
    first = CheckpointLifecycle(config)
    run_evaluations(first, out, [(1, 0.9), (2, 0.1)])
    first.observe(3, {"accuracy": 0.2}, out / "gs3.pkl")
    first.record_checkpoint(write_checkpoint(out, 3))
    state = first.state_dict()  # saved before the deletion, as the loop does; then a crash
    assert files_in(out) == [f"gs{s}.{e}" for s in (1, 2, 3) for e in ("pkl", "state.pt")]

    resumed = CheckpointLifecycle(config)
    resumed.load_state_dict(state)
    assert resumed.kept == [str(out / "gs1.pkl"), str(out / "gs3.pkl")]
    assert (resumed.best_metric, resumed.evaluations_without_improvement) == (0.9, 2)
    stopped = run_evaluations(resumed, out, [(4, 0.3)])
    assert stopped == 4
    assert files_in(out) == ["gs1.pkl", "gs1.state.pt", "gs4.pkl", "gs4.state.pt"]


# --------------------------------------------------------------------- resume flags
def test_resume_flags(tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    assert resume_source(None, out) is None
    assert resume_source(False, out) is None
    with pytest.raises(FileNotFoundError, match=r"`resume_from`=True.*resume_from='auto'"):
        resume_source(True, out)
    with caplog.at_level(logging.INFO, logger="textbrewer"):
        assert resume_source("auto", out) is None
    assert "starting fresh" in caplog.text
    write_checkpoint(out, 3)
    write_checkpoint(out, 12)
    write_checkpoint(out, 20, with_state=False)  # not resumable
    latest = out / "gs12.state.pt"
    assert resume_source(True, out) == latest
    assert resume_source("auto", out) == latest
    assert resume_source(out / "gs3.pkl", tmp_path) == out / "gs3.state.pt"
    assert resume_source(str(out), tmp_path) == latest
    with pytest.raises(TypeError, match=r"`resume_from`=3 must be None, True, 'auto'"):
        resume_source(3, out)


def test_continuation_accepts_a_longer_plan_only(caplog):
    step_plan = {"mode": "step", "total_steps": 10}
    check_continuation(step_plan, step_plan, 10)
    with caplog.at_level(logging.INFO, logger="textbrewer"):
        check_continuation(step_plan, {"mode": "step", "total_steps": 30}, 10)
    assert "Continuing a run" in caplog.text
    with pytest.raises(ValueError, match="cannot resume"):
        check_continuation(step_plan, {"mode": "step", "total_steps": 8}, 10)
    epochs = {"mode": "epoch", "num_epochs": 2, "total_steps": 10}
    check_continuation(epochs, {"mode": "epoch", "num_epochs": 4, "total_steps": 20}, 10)
    with pytest.raises(ValueError, match="cannot resume"):  # 6 steps per epoch, not 5
        check_continuation(epochs, {"mode": "epoch", "num_epochs": 4, "total_steps": 24}, 10)
    with pytest.raises(ValueError, match="cannot resume"):
        check_continuation(epochs, {"mode": "step", "total_steps": 20}, 10)


def test_a_run_saved_when_it_stopped_early_stays_stopped_unless_patience_grows(tmp_path):
    config = training_config(tmp_path, metric_for_best_model="f1", early_stopping_patience=1)
    stopped = CheckpointLifecycle(config)
    stopped.observe(1, {"f1": 0.5}, "gs1.pkl")
    stopped.observe(2, {"f1": 0.4}, "gs2.pkl")
    assert stopped.should_stop
    state = stopped.state_dict()
    same = CheckpointLifecycle(config)
    same.load_state_dict(state)
    assert same.stop_reason == stopped.stop_reason
    patient = CheckpointLifecycle(
        training_config(tmp_path, metric_for_best_model="f1", early_stopping_patience=3)
    )
    patient.load_state_dict(state)
    assert not patient.should_stop
    assert patient.evaluations_without_improvement == 1


def test_auto_without_saving_states_warns(tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    with caplog.at_level(logging.WARNING, logger="textbrewer"):
        assert resume_source("auto", out, save_training_state=False) is None
        assert resume_source(None, out, save_training_state=False) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "`resume_from`='auto' but TrainingConfig `save_training_state`=False: this run's "
        "checkpoints cannot be resumed from; set save_training_state=True"
    ]
