"""Session helpers of the loop: optimizer preparation, logging, and the resumable state."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from textbrewer.configurations import TrainingConfig
from textbrewer.training import checkpoint as ckpt
from textbrewer.training.arguments import TrainCall
from textbrewer.training.engine import Engine, unwrap
from textbrewer.training.loss_log import LossLog

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Progress:
    """Counters of one ``train()`` call: optimizer steps and micro-batches (for log indices)."""

    global_step: int = 0
    micro_index: int = 0


def prepare_optimizer(call: TrainCall, extra_groups: list[dict[str, Any]]) -> Any:
    """Adds the projection param groups, then builds the scheduler from ``scheduler_class``.

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
    return call.scheduler_class(optimizer=call.optimizer, **(call.scheduler_args or {}))


def open_log(engine: Engine, config: TrainingConfig, total_steps: int, initial: int) -> LossLog:
    """The loss log: tensorboard and a progress bar on rank 0, nothing elsewhere."""
    if not engine.is_main:
        return LossLog()
    writer = None
    if config.log_dir is not None:
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(log_dir=str(config.log_dir))
    bar = tqdm(
        total=total_steps,
        initial=initial,
        desc="Training",
        unit="step",
        disable=not config.progress_bar,
    )
    return LossLog(writer, bar)


def save_training_state(
    distiller: Any, call: TrainCall, plan: Any, scheduler: Any, progress: Progress, path: Path
) -> None:
    """Writes everything a resumed run needs to continue bit for bit (rank 0 writes)."""
    engine = distiller._engine
    per_rank = engine.gather_objects(
        {"position": plan.state_dict(), "rng": ckpt.capture_rng_state()}
    )
    if not engine.is_main:
        return
    state = {
        "format": 1,
        "plan": plan.describe(),
        "global_step": progress.global_step,
        "micro_index": progress.micro_index,
        "student": unwrap(distiller.model_S).state_dict(),
        "optimizer": call.optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": engine.scaler.state_dict(),
        "weights": {
            "kd_loss_weight": distiller.kd_loss_weight,
            "hard_label_weight": distiller.hard_label_weight,
        },
        "extra": distiller.extra_state(),
        "ranks": per_rank,
    }
    ckpt.atomic_save(state, path)


def resume_training(
    distiller: Any, call: TrainCall, plan: Any, scheduler: Any, progress: Progress
) -> None:
    """Restores a saved training state into the distiller, optimizer, scheduler and plan."""
    path = ckpt.find_state_file(call.resume_from)
    state = ckpt.load_state_file(path)
    if state.get("plan") != plan.describe():
        raise ValueError(
            f"cannot resume from {str(path)!r}: it was saved by a run with {state.get('plan')}, "
            f"this call trains with {plan.describe()}"
        )
    engine = distiller._engine
    unwrap(distiller.model_S).load_state_dict(state["student"])
    call.optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    if state["scaler"]:
        engine.scaler.load_state_dict(state["scaler"])
    distiller.load_extra_state(state["extra"])
    distiller.kd_loss_weight = state["weights"]["kd_loss_weight"]
    distiller.hard_label_weight = state["weights"]["hard_label_weight"]
    progress.global_step, progress.micro_index = state["global_step"], state["micro_index"]
    mine = state["ranks"][min(engine.rank, len(state["ranks"]) - 1)]
    plan.load_state_dict(mine["position"])
    ckpt.restore_rng_state(mine["rng"])  # after repositioning the data, which draws too
    logger.info("Resumed from %s at global step %d", path, progress.global_step)
