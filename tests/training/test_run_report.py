"""What a run shows: sample counting, planned checkpoints, per-step scalars, the summary."""

import logging

import torch

from tests.conftest import training_config
from textbrewer.training.plans import EpochPlan, StepPlan
from textbrewer.training.run_report import (
    RunMonitor,
    TrainResult,
    batch_size_of,
    describe_checkpoints,
    log_end_summary,
    planned_checkpoints,
    trainable_parameters,
)


def test_batch_size_is_the_leading_dimension_of_the_first_tensor():
    ids = torch.zeros(5, 3)
    assert batch_size_of(ids) == 5
    assert batch_size_of((ids, torch.zeros(2))) == 5
    assert batch_size_of({"meta": "x", "student": {"input_ids": ids}}) == 5
    assert batch_size_of([["text"], {"labels": torch.zeros(7)}]) == 7
    assert batch_size_of({"text": ["a", "b"]}) is None
    assert batch_size_of(torch.tensor(1.0)) is None


def test_planned_checkpoints_follow_the_spec_examples():
    # SPEC: 10 batches, ckpt_frequency=2, 3 epochs -> checkpoints at 5, 10, 15, 20, 25, 30.
    plan = EpochPlan(None, 3, 10, 1, 2, 1)
    assert planned_checkpoints(plan) == [5, 10, 15, 20, 25, 30]
    assert planned_checkpoints(plan, after_step=20) == [25, 30]
    # 7 steps per epoch, 3 per epoch at offsets {0, 2, 4}; only epochs 2, 4 and the last (5).
    plan = EpochPlan(None, 5, 14, 2, 3, 2)
    assert plan.offsets == {0, 2, 4}
    assert planned_checkpoints(plan) == [9, 11, 14, 23, 25, 28, 30, 32, 35]
    assert planned_checkpoints(StepPlan(None, None, 10, 4, 1)) == [4, 8, 10]
    assert planned_checkpoints(StepPlan(None, None, 12, 4, 1)) == [4, 8, 12]
    assert planned_checkpoints(object()) is None


def test_planned_checkpoints_agree_with_the_plan_it_describes():
    plan = EpochPlan(None, 5, 14, 2, 3, 2)
    expected = []
    for step in range(1, plan.total_steps + 1):
        plan.epoch = (step - 1) // plan.steps_per_epoch
        if plan.is_checkpoint(step):
            expected.append(step)
    assert planned_checkpoints(plan) == expected


def test_describe_checkpoints_shortens_long_lists():
    assert describe_checkpoints([2, 4], []) == "2 at steps 2, 4"
    text = describe_checkpoints(list(range(10, 110, 10)), ["keep the last 2"])
    assert text == "10 at steps 10, 20, 30, 40, 50, ..., 100 (keep the last 2)"


def test_trainable_parameters_count_each_parameter_once():
    layer = torch.nn.Linear(3, 2)  # 6 + 2
    frozen = torch.nn.Linear(4, 4).requires_grad_(False)
    assert trainable_parameters([*layer.parameters(), *layer.parameters()]) == 8
    assert trainable_parameters([*layer.parameters(), *frozen.parameters()]) == 8


def test_step_scalars_are_off_without_a_log_dir_and_list_every_group(tmp_path):
    optimizer = torch.optim.SGD(
        [{"params": [torch.nn.Parameter(torch.zeros(1))]}, {"params": [], "lr": 0.5}], lr=0.1
    )
    norm = torch.tensor(2.0)
    values = {"kd_loss_weight": 0.3, "hard_label_weight": 0.7, "grad_norm": norm}
    assert RunMonitor(training_config(tmp_path)).step_scalars(optimizer, values) == {}
    monitor = RunMonitor(training_config(tmp_path, log_train_scalars=True))
    scalars = monitor.step_scalars(optimizer, {**values, "temperature": None})
    assert scalars == {
        "learning_rate": 0.1,
        "learning_rate_1": 0.5,
        "kd_loss_weight": 0.3,
        "hard_label_weight": 0.7,
        "grad_norm": norm,
    }


def test_samples_are_counted_per_micro_batch_and_times_world_size(tmp_path):
    monitor = RunMonitor(training_config(tmp_path, log_train_scalars=True), world_size=2)
    for _ in range(3):
        monitor.count((torch.zeros(4, 2), torch.zeros(4)))
    assert monitor.samples == 12
    rate = monitor.throughput()["samples_per_second"]
    assert rate > 0
    assert monitor.throughput() == {"samples_per_second": 0.0}
    before = monitor.elapsed()
    rate = monitor.samples_per_second()
    assert 24 / monitor.elapsed() <= rate <= 24 / before
    monitor.count({"text": ["no tensor"]})
    assert monitor.samples_per_second() is None
    assert monitor.throughput() == {}


def test_end_summary_names_steps_losses_and_the_best(caplog):
    result = TrainResult(
        global_step=12,
        last_losses={"total_loss": 0.5, "unweighted_kd_loss": 0.25},
        metrics={"acc": 0.8},
        best_metric=0.9,
        best_checkpoint="out/gs8.pkl",
        stop_reason="early stopping at step 12: ...",
        elapsed_seconds=3.0,
        samples_per_second=40.0,
    )
    with caplog.at_level(logging.INFO, logger="textbrewer"):
        log_end_summary(result)
    assert caplog.records[0].getMessage().splitlines() == [
        "Training done after 12 optimizer steps in 3.0 s, 40.0 samples/s",
        "  last losses: total_loss=0.5, unweighted_kd_loss=0.25",
        "  last metrics: acc=0.8",
        "  best: 0.9 at out/gs8.pkl",
        "  stopped: early stopping at step 12: ...",
    ]
    assert result.stopped_early
