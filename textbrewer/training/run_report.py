"""What a run shows: the start banner, per-step training scalars, the end summary, the result.

Everything here is host-side bookkeeping: counting samples reads a batch's shape, learning rates
and loss weights are Python numbers, and the gradient norm and temperature stay device tensors
that the loss log reads back with the losses. Nothing here waits for the device.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any

import torch

from textbrewer.configurations import TrainingConfig
from textbrewer.training.lifecycle import greater_is_better

logger = logging.getLogger(__name__)

_LISTED_CHECKPOINTS = 6


@dataclasses.dataclass
class TrainResult:
    """What ``train()`` returns (TextBrewer 0.2.x returned ``None``; scripts ignore it).

    Attributes:
        global_step: optimizer steps taken, counted across a resume.
        last_losses: mean ``total_loss`` and mean of each named part over the last read-back
            (at most ``log_every_n_steps`` optimizer steps), unweighted as logged.
        metrics: the last metrics the callback returned (``{}`` if it never returned any).
        best_metric: the best value of ``metric_for_best_model``, or ``None``.
        best_checkpoint: the path of its ``gs{step}.pkl``, or ``None``.
        stop_reason: why training stopped early, or ``None`` when it ran to the end.
        checkpoints: the checkpoint paths this run wrote that are still kept, oldest first.
        elapsed_seconds: wall time of the training loop.
        samples_per_second: samples over ``elapsed_seconds`` (all ranks), or ``None`` when
            batches have no tensor to count samples in.
    """

    global_step: int
    last_losses: dict[str, float]
    metrics: dict[str, float]
    best_metric: float | None = None
    best_checkpoint: str | None = None
    stop_reason: str | None = None
    checkpoints: list[str] = dataclasses.field(default_factory=list)
    elapsed_seconds: float = 0.0
    samples_per_second: float | None = None

    @property
    def stopped_early(self) -> bool:
        """Whether early stopping ended the run."""
        return self.stop_reason is not None


def batch_size_of(batch: Any) -> int | None:
    """The leading dimension of the first tensor found in ``batch`` (depth first), or ``None``."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() > 0 else None
    if isinstance(batch, (list, tuple)):  # before the (slower) Mapping ABC check
        children = batch
    elif isinstance(batch, Mapping):
        children = batch.values()
    elif dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        children = (getattr(batch, field.name) for field in dataclasses.fields(batch))
    else:
        return None
    for child in children:
        size = batch_size_of(child)
        if size is not None:
            return size
    return None


def trainable_parameters(parameters: Any) -> int:
    """Number of elements of the parameters that require gradients (each counted once)."""
    seen: dict[int, int] = {}
    for parameter in parameters:
        if parameter.requires_grad:
            seen[id(parameter)] = parameter.numel()
    return sum(seen.values())


def planned_checkpoints(plan: Any, after_step: int = 0) -> list[int] | None:
    """The optimizer steps after ``after_step`` at which the plan checkpoints, if it can tell."""
    mode = getattr(plan, "mode", None)
    if mode == "step":
        total, interval = plan.total_steps, plan.ckpt_steps
        steps = list(range(interval, total + 1, interval))
        if plan.is_checkpoint(total) and (not steps or steps[-1] != total):
            steps.append(total)
    elif mode == "epoch":
        per_epoch, steps = plan.steps_per_epoch, []
        for epoch in range(plan.num_epochs):
            if not plan.checkpoints_in_epoch(epoch + 1):
                continue
            steps += sorted(epoch * per_epoch + (offset or per_epoch) for offset in plan.offsets)
    else:
        return None
    return [step for step in steps if step > after_step]


class RunMonitor:
    """Times the run, counts samples, and gathers the per-step ``train/*`` scalars.

    Args:
        config: reads ``log_train_scalars``.
        world_size: processes training together (samples are counted on this rank and
            multiplied by it).
    """

    def __init__(self, config: TrainingConfig, world_size: int = 1) -> None:
        self.log_train_scalars = config.writes_train_scalars
        self.world_size = world_size
        self.started = time.perf_counter()
        self.samples = 0
        self.counting = True
        self._window_started = self.started
        self._window_samples = 0

    def start(self) -> None:
        """(Re)starts the clock: the run's time excludes building and resuming."""
        self.started = self._window_started = time.perf_counter()

    def count(self, batch: Any) -> None:
        """Adds one micro-batch's samples (its leading dimension)."""
        if not self.counting:
            return
        first = batch[0] if type(batch) in (tuple, list) and batch else None
        if isinstance(first, torch.Tensor) and first.dim() > 0:  # the usual (ids, mask, ...)
            size = first.shape[0]
        else:
            size = batch_size_of(batch)
        if size is None:
            # No tensor to count in: report no throughput rather than a wrong one.
            self.counting = False
            return
        self.samples += size
        self._window_samples += size

    def step_scalars(self, optimizer: Any, values: dict[str, Any]) -> dict[str, Any]:
        """The ``train/*`` values of one optimizer step (empty unless ``log_train_scalars``).

        Args:
            optimizer: its param groups' ``lr`` give ``learning_rate`` (``learning_rate_{i}``
                for groups after the first).
            values: numbers or device tensors such as ``kd_loss_weight``, ``grad_norm`` and
                ``temperature``; ``None`` values are left out.
        """
        if not self.log_train_scalars:
            return {}
        scalars: dict[str, Any] = {}
        for index, group in enumerate(optimizer.param_groups):
            scalars["learning_rate" if index == 0 else f"learning_rate_{index}"] = group["lr"]
        scalars.update({name: value for name, value in values.items() if value is not None})
        return scalars

    def throughput(self) -> dict[str, float]:
        """``{'samples_per_second': ...}`` since the last call (all ranks), when counted."""
        now = time.perf_counter()
        elapsed, samples = now - self._window_started, self._window_samples
        self._window_started, self._window_samples = now, 0
        if not (self.log_train_scalars and self.counting) or elapsed <= 0:
            return {}
        return {"samples_per_second": samples * self.world_size / elapsed}

    def elapsed(self) -> float:
        """Seconds since the monitor was created."""
        return time.perf_counter() - self.started

    def samples_per_second(self) -> float | None:
        """Samples per second over the whole run (all ranks), or ``None``."""
        elapsed = self.elapsed()
        if not self.counting or elapsed <= 0:
            return None
        return self.samples * self.world_size / elapsed


def start_facts(session: Any, distiller: str, student: Any, extra_modules: list[Any]) -> dict:
    """The start banner's lines, ``{name: text}``, from a ``Session`` about to run.

    Args:
        session: the session (engine, plan, config, progress, call).
        distiller: the distiller's class name.
        student: the (unwrapped) student.
        extra_modules: the trainable modules besides the student (projections).
    """
    engine, plan, config = session.engine, session.plan, session.config
    facts = {
        "distiller": distiller,
        "device": f"{engine.device}, precision: {engine.precision}, "
        f"world size: {engine.world_size}",
        "steps": _describe_steps(plan, config.gradient_accumulation_steps),
        "checkpoints": describe_checkpoints(
            planned_checkpoints(plan, session.progress.global_step), _lifecycle_notes(config)
        )
        + f" in {config.output_dir}",
        "evaluation": _describe_evaluation(config, session.call.callback),
        "trainable parameters": f"student {trainable_parameters(student.parameters()):,}",
    }
    extra = trainable_parameters(p for module in extra_modules for p in module.parameters())
    if extra_modules:
        facts["trainable parameters"] += f", projections and extra modules {extra:,}"
    if session.resumed_from is not None:
        facts["resuming"] = f"at step {session.progress.global_step} from {session.resumed_from}"
    return {name: value for name, value in facts.items() if value is not None}


def _describe_steps(plan: Any, accumulation: int) -> str:
    if getattr(plan, "mode", None) == "epoch":
        text = (
            f"{plan.num_epochs} epoch{'s' * (plan.num_epochs != 1)} x {plan.steps_per_epoch} "
            "optimizer steps = "
            f"{plan.total_steps}"
        )
    else:
        text = f"{plan.total_steps} optimizer steps"
    return text + (f" (gradient accumulation {accumulation})" if accumulation > 1 else "")


def _lifecycle_notes(config: TrainingConfig) -> list[str]:
    notes = []
    if config.save_total_limit is not None:
        notes.append(f"keep the last {config.save_total_limit}")
    if config.metric_for_best_model is not None:
        direction = "greater" if greater_is_better(config) else "lower"
        notes.append(f"best by {config.metric_for_best_model!r}, {direction} is better")
    if config.early_stopping_patience is not None:
        notes.append(f"early stopping patience {config.early_stopping_patience}")
    if config.save_training_state:
        notes.append("resumable")
    return notes


def _describe_evaluation(config: TrainingConfig, callback: Any) -> str | None:
    if config.eval_steps is not None:
        return f"every {config.eval_steps} steps and at checkpoints"
    return "at checkpoints (callback)" if callback is not None else None


def describe_checkpoints(steps: list[int] | None, extras: list[str]) -> str:
    """``"6 at steps 5, 10, ..., 30 (keep last 2, best by 'accuracy')"`` for the banner."""
    if steps is None:
        text = "by the plan"
    elif len(steps) <= _LISTED_CHECKPOINTS:
        text = f"{len(steps)} at steps {', '.join(map(str, steps))}"
    else:
        head = ", ".join(map(str, steps[: _LISTED_CHECKPOINTS - 1]))
        text = f"{len(steps)} at steps {head}, ..., {steps[-1]}"
    return f"{text} ({'; '.join(extras)})" if extras else text


def log_end_summary(result: TrainResult) -> None:
    """Logs the end of a run: steps, time, throughput, last losses, best checkpoint."""
    rate = (
        f", {result.samples_per_second:.1f} samples/s"
        if result.samples_per_second is not None
        else ""
    )
    losses = ", ".join(f"{name}={value:.6g}" for name, value in result.last_losses.items())
    lines = [
        f"Training done after {result.global_step} optimizer steps "
        f"in {result.elapsed_seconds:.1f} s{rate}",
        f"  last losses: {losses or 'none read back'}",
    ]
    if result.metrics:
        metrics = ", ".join(f"{name}={value:.6g}" for name, value in result.metrics.items())
        lines.append(f"  last metrics: {metrics}")
    if result.best_checkpoint is not None:
        lines.append(f"  best: {result.best_metric:.6g} at {result.best_checkpoint}")
    if result.stop_reason is not None:
        lines.append(f"  stopped: {result.stop_reason}")
    logger.info("\n".join(lines))
