"""One ``train()`` call's session: its arguments, plan, scheduler, counters, log and saved state.

The loop reads and advances a ``Session``; checkpoints save it and ``resume_from`` restores it.
Everything that must survive a restart is one entry of ``Session.stateful`` (name -> object with
``state_dict``/``load_state_dict``), saved and loaded by the same two functions, so adding a
resumable part is one line and a file that lacks a part (or has one this run does not) is an
error rather than a silent skip. What differs per rank (the data position and the RNG states) is
gathered from every rank and restored on each.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from textbrewer.configurations import TrainingConfig
from textbrewer.training import checkpoint as ckpt
from textbrewer.training.arguments import TrainCall
from textbrewer.training.call_checks import build_scheduler
from textbrewer.training.call_errors import add_note
from textbrewer.training.engine import Engine
from textbrewer.training.evaluation import Evaluation, check_evaluation, report_metrics
from textbrewer.training.lifecycle import CheckpointLifecycle, check_continuation, resume_source
from textbrewer.training.loss_log import LossLog
from textbrewer.training.plans import Plan
from textbrewer.training.run_report import RunMonitor, TrainResult, log_end_summary, start_facts
from textbrewer.training.state_parts import OptimizerPart, SchedulerPart

logger = logging.getLogger(__name__)

_STATE_FORMAT = 2


class Stateful(Protocol):
    """Anything saved in the training state: a module, an optimizer, a scheduler, a counter."""

    def state_dict(self) -> dict[str, Any]:
        """The state to save."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what ``state_dict`` returned."""


@dataclasses.dataclass
class Progress:
    """Counters of one ``train()`` call: optimizer steps, and micro-batches (for log indices)."""

    global_step: int = 0
    micro_index: int = 0

    def state_dict(self) -> dict[str, int]:
        """The two counters."""
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restores the two counters."""
        self.global_step, self.micro_index = state["global_step"], state["micro_index"]


class Session:
    """The state of one ``train()`` call, owned by the loop.

    Args:
        call: the parsed ``train()`` arguments.
        plan: where micro-batches come from and which steps are checkpoints.
        scheduler: the LR scheduler to step, or ``None``.
        engine: device, precision and distribution.
        config: the training settings.

    Attributes:
        progress: the step and micro-batch counters.
        log: the loss log (opened by ``open_log``).
        evaluation: when the callback runs and the metrics it returns.
        lifecycle: which checkpoints are kept, the best one, early stopping.
        monitor: timing, samples and the ``train/*`` scalars.
        stateful: name -> part saved in the training state and restored on resume.
    """

    def __init__(
        self, call: TrainCall, plan: Plan, scheduler: Any, engine: Engine, config: TrainingConfig
    ) -> None:
        check_evaluation(config, call.callback)
        self.call = call
        self.plan = plan
        self.scheduler = scheduler
        self.engine = engine
        self.config = config
        self.progress = Progress()
        self.log = LossLog()
        self.evaluation = Evaluation(call.callback, config.eval_steps, engine)
        self.lifecycle = CheckpointLifecycle(config, is_main=engine.is_main)
        self.monitor = RunMonitor(config, engine.world_size)
        self.resumed_from: Path | None = None
        self.stateful: dict[str, Stateful] = {
            "progress": self.progress,
            "optimizer": OptimizerPart(call.optimizer),
            "scaler": engine.scaler,
            "lifecycle": self.lifecycle,
        }
        if scheduler is not None:
            self.stateful["scheduler"] = SchedulerPart(scheduler)

    @property
    def optimizer(self) -> Any:
        """The optimizer being stepped."""
        return self.call.optimizer

    def open_log(self, config: TrainingConfig) -> None:
        """Tensorboard and a progress bar on rank 0, nothing elsewhere."""
        if not self.engine.is_main:
            return
        writer = None
        if config.log_dir is not None:
            from tensorboardX import SummaryWriter

            writer = SummaryWriter(log_dir=str(config.log_dir))
        bar = None
        if config.progress_bar:  # no bar object at all otherwise: nothing to update per step
            bar = tqdm(
                total=self.plan.total_steps,
                initial=self.progress.global_step,
                desc="Training",
                unit="step",
            )
        self.log = LossLog(writer, bar)

    def close(self) -> None:
        """Closes the log (writer and progress bar)."""
        self.log.close()

    def announce(self, distiller: str, student: Any, extra_modules: list[Any]) -> None:
        """Logs the start banner (rank 0) and starts the clock."""
        if self.engine.is_main:
            facts = start_facts(self, distiller, student, extra_modules)
            logger.info("Training starts\n%s", "\n".join(f"  {k}: {v}" for k, v in facts.items()))
        self.monitor.start()

    def record_step(self, values: Any) -> None:
        """Keeps the ``train/*`` scalars of the step being taken (``log_train_scalars`` only).

        Args:
            values: returns the distiller's own values (gradient norm, weights, temperature);
                called only when the scalars are logged.
        """
        if not self.monitor.log_train_scalars:
            return
        step = self.progress.global_step + 1
        scalars = self.monitor.step_scalars(self.optimizer, values())
        if step % self.config.log_every_n_steps == 0:
            scalars.update(self.monitor.throughput())
        self.log.record_step(step, scalars)

    def evaluate(self, model: Any, step: int) -> dict[str, float]:
        """Runs the callback; logs and writes the metrics it returns (rank 0); returns them."""
        metrics = self.evaluation(model, step)
        if self.engine.is_main:
            report_metrics(metrics, step, self.log.writer)
        return metrics

    def finish(self) -> TrainResult:
        """The run's result; the end summary is logged on rank 0."""
        lifecycle = self.lifecycle
        result = TrainResult(
            global_step=self.progress.global_step,
            last_losses=dict(self.log.last_losses),
            metrics=dict(self.evaluation.last_metrics),
            best_metric=lifecycle.best_metric,
            best_checkpoint=lifecycle.best_checkpoint,
            stop_reason=lifecycle.stop_reason,
            checkpoints=list(lifecycle.kept),
            elapsed_seconds=self.monitor.elapsed(),
            samples_per_second=self.monitor.samples_per_second(),
        )
        if self.engine.is_main:
            log_end_summary(result)
        return result

    def save(self, path: Path) -> None:
        """Writes every stateful part, the plan and each rank's position and RNG (rank 0 writes)."""
        per_rank = self.engine.gather_objects(
            {"position": self.plan.state_dict(), "rng": ckpt.capture_rng_state()}
        )
        if not self.engine.is_main:
            return
        state = {
            "format": _STATE_FORMAT,
            "plan": self.plan.describe(),
            "parts": {name: part.state_dict() for name, part in self.stateful.items()},
            "ranks": per_rank,
        }
        ckpt.atomic_save(state, path)

    def resume(self, resume_from: Any) -> None:
        """Restores a saved training state into every stateful part, the plan and the RNG.

        ``resume_from`` is read by ``lifecycle.resume_source`` (``True``, ``'auto'``, a path); a
        plan longer than the saved one continues the run (``lifecycle.check_continuation``).
        """
        config = self.config
        path = resume_source(resume_from, config.output_dir, config.save_training_state)
        if path is None:
            return
        state = _upgraded(ckpt.load_resumable(path), set(self.stateful))
        saved_step = state["parts"]["progress"]["global_step"]
        check_continuation(state.get("plan"), self.plan.describe(), saved_step, path)
        saved, expected = set(state["parts"]), set(self.stateful)
        if saved != expected:
            raise ValueError(
                f"cannot resume from {str(path)!r}: it holds the parts {sorted(saved)}, this run "
                f"has {sorted(expected)} (missing: {sorted(expected - saved)}, unknown: "
                f"{sorted(saved - expected)}); resume with the same distiller, optimizer and "
                "scheduler settings"
            )
        for name, part in self.stateful.items():
            try:
                part.load_state_dict(state["parts"][name])
            except Exception as error:
                add_note(error, f"(while restoring the part {name!r} from {str(path)!r})")
                raise
        if len(state["ranks"]) != self.engine.world_size and self.engine.is_main:
            logger.warning(
                "%s was saved by %d process(es), this run has %d: each rank resumes from the "
                "position of rank min(rank, %d), so the data order differs from the saved run's",
                path,
                len(state["ranks"]),
                self.engine.world_size,
                len(state["ranks"]) - 1,
            )
        mine = state["ranks"][min(self.engine.rank, len(state["ranks"]) - 1)]
        self.plan.load_state_dict(mine["position"])
        ckpt.restore_rng_state(mine["rng"])  # after repositioning the data, which draws too
        logger.info("Resumed from %s at global step %d", path, self.progress.global_step)
        self.resumed_from = path


def _upgraded(state: dict[str, Any], expected: set[str]) -> dict[str, Any]:
    """Reads a state file of format 1 (textbrewer 0.3.0) as format 2."""
    if state.get("format") != 1:
        return state
    extra = dict(state["extra"])
    parts = {
        "progress": {"global_step": state["global_step"], "micro_index": state["micro_index"]},
        "student": state["student"],
        "optimizer": state["optimizer"],
        "scaler": state["scaler"],
        "extra_modules": {"modules": extra.pop("modules", [])},
        "extra": extra,
    }
    if "distillation_terms" in expected:  # format 1 saved weights for BasicTrainer too
        parts["distillation_terms"] = state["weights"]
    if state["scheduler"] is not None:
        parts["scheduler"] = state["scheduler"]
    parts["lifecycle"] = CheckpointLifecycle.initial_state()  # format 1 had no lifecycle
    return {"plan": state["plan"], "parts": parts, "ranks": state["ranks"]}


def prepare_optimizer(call: TrainCall, extra_groups: list[dict[str, Any]]) -> Any:
    """Adds the extra param groups (projections), then builds the scheduler from its class.

    Groups whose parameters are already in the optimizer (a second ``train()`` call) are not
    added again. Returns the LR scheduler to step, or ``None``.
    """
    present = {id(p) for group in call.optimizer.param_groups for p in group["params"]}
    # A hook may hand parameters as a generator: materialise it before looking inside.
    extra_groups = [{**group, "params": list(group["params"])} for group in extra_groups]
    new_groups = [
        group for group in extra_groups if not any(id(p) in present for p in group["params"])
    ]
    if new_groups and call.scheduler is not None and call.scheduler_class is None:
        raise ValueError(
            "a pre-built `scheduler` cannot schedule the projection layers' param groups, "
            "which train() adds to the optimizer; pass `scheduler_class` and "
            "`scheduler_args` instead, e.g. scheduler_class=get_linear_schedule_with_warmup, "
            "scheduler_args={'num_warmup_steps': ..., 'num_training_steps': ...}"
        )
    for group in new_groups:
        call.optimizer.add_param_group(group)
    if call.scheduler_class is None:
        return call.scheduler
    if call.scheduler is not None:
        logger.warning("both `scheduler` and `scheduler_class` given: scheduler_class is used")
    return build_scheduler(call.scheduler_class, call.optimizer, call.scheduler_args)
