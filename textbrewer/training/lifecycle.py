"""The checkpoint lifecycle: keep the last N, keep the best, stop early (all opt-in).

The loop tells the lifecycle what happened at an evaluation (``observe``) and which checkpoint
it wrote (``record_checkpoint``); the lifecycle answers whether that step needs a checkpoint it
would not otherwise get (the best model, or the final one of an early stop), which files to
delete, and whether to stop. Files are deleted only after the new checkpoint (and its training
state) is on disk: ``record_checkpoint`` only decides, ``delete_surplus`` deletes.

Its state (kept files, best metric, patience counter) is saved with the training state, so a
resumed run keeps rotating the same files and counting the same patience.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path
from typing import Any

from textbrewer.configurations import TrainingConfig
from textbrewer.training.checkpoint import STATE_SUFFIX, find_state_file, state_path_for

logger = logging.getLogger(__name__)


def greater_is_better(config: TrainingConfig) -> bool:
    """``config.greater_is_better``, or by default ``True`` unless the metric ends in 'loss'."""
    if config.greater_is_better is not None:
        return config.greater_is_better
    return not str(config.metric_for_best_model).endswith("loss")


class CheckpointLifecycle:
    """Rotation of ``gs{step}.pkl`` files, the best checkpoint, and early stopping.

    Args:
        config: reads ``save_total_limit``, ``metric_for_best_model``, ``greater_is_better``,
            ``early_stopping_patience`` and ``early_stopping_threshold``.
        is_main: whether this process deletes surplus files and logs (rank 0).

    Attributes:
        kept: checkpoint paths (str) this run wrote and still keeps, oldest first.
        best_metric: the best value of ``metric_for_best_model`` so far, or ``None``.
        best_step: the optimizer step of that evaluation.
        best_checkpoint: the ``gs{best_step}.pkl`` path (str), or ``None``.
        evaluations_without_improvement: the patience counter.
        stop_reason: a sentence saying why training stops early, or ``None``.
    """

    def __init__(self, config: TrainingConfig, is_main: bool = True) -> None:
        self.limit = config.save_total_limit
        self.metric = config.metric_for_best_model
        self.greater = greater_is_better(config) if self.metric is not None else True
        self.patience = config.early_stopping_patience
        self.threshold = config.early_stopping_threshold
        self.is_main = is_main
        self.kept: list[str] = []
        self.best_metric: float | None = None
        self.best_step: int | None = None
        self.best_checkpoint: str | None = None
        self.evaluations_without_improvement = 0
        self.stop_reason: str | None = None
        self._surplus: list[str] = []
        self._wants_checkpoint = False
        self._warned_no_metrics = False

    # ----------------------------------------------------------------- evaluation
    def observe(self, step: int, metrics: dict[str, float], checkpoint: str | os.PathLike) -> None:
        """Takes one evaluation's metrics at optimizer step ``step``.

        Args:
            step: the optimizer step evaluated.
            metrics: name -> value, as the callback returned them (may be empty).
            checkpoint: the ``gs{step}.pkl`` path of this step (written or not).

        Raises:
            KeyError: ``metric_for_best_model`` is not among a non-empty ``metrics``.
        """
        self._wants_checkpoint = False
        if self.metric is None:
            return
        if not metrics:
            if not self._warned_no_metrics:
                self._warned_no_metrics = True
                logger.warning(
                    "`metric_for_best_model`=%r is set but the callback returned no metrics at "
                    "step %d: return a dict such as {%r: value} from it",
                    self.metric,
                    step,
                    self.metric,
                )
            return
        if self.metric not in metrics:
            raise KeyError(
                f"`metric_for_best_model`={self.metric!r} is not among the metrics the callback "
                f"returned at step {step} ({', '.join(map(repr, sorted(metrics)))}); return it "
                "from the callback or name one of these"
            )
        value = metrics[self.metric]
        if self._improves(value):
            self.best_metric, self.best_step = value, step
            self.best_checkpoint = str(checkpoint)
            self.evaluations_without_improvement = 0
            self._wants_checkpoint = True
            return
        self.evaluations_without_improvement += 1
        if self.patience is not None and self.evaluations_without_improvement >= self.patience:
            self.stop_reason = (
                f"early stopping at step {step}: `{self.metric}` did not improve on "
                f"{self.best_metric:.6g} (step {self.best_step}) in "
                f"{self.evaluations_without_improvement} evaluation(s) "
                f"(early_stopping_patience={self.patience})"
            )
            self._wants_checkpoint = True
            if self.is_main:
                logger.info("Stopping: %s", self.stop_reason)

    def _improves(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best_metric is None:
            return True
        if self.greater:
            return value > self.best_metric + self.threshold
        return value < self.best_metric - self.threshold

    def needs_checkpoint(self) -> bool:
        """Whether the last observed step must be written although it is not a checkpoint step.

        True when it became the best (the best model must be a file) or when the run stops
        there (the final model must be a file).
        """
        return self._wants_checkpoint

    @property
    def should_stop(self) -> bool:
        """Whether early stopping has triggered."""
        return self.stop_reason is not None

    # ----------------------------------------------------------------- rotation
    def record_checkpoint(self, checkpoint: str | os.PathLike) -> None:
        """Notes a written checkpoint and decides which older ones are now surplus.

        Nothing is deleted here: call ``delete_surplus`` once the checkpoint and its training
        state are safely on disk.
        """
        checkpoint = str(checkpoint)
        if checkpoint in self.kept:  # rewritten after a resume: it becomes the newest again
            self.kept.remove(checkpoint)
        self.kept.append(checkpoint)
        if self.limit is None:
            return
        # What stays is the last `limit` written plus the best, wherever it is.
        latest = self.kept[-self.limit :]
        surplus = [p for p in self.kept if p not in latest and p != self.best_checkpoint]
        self.kept = [path for path in self.kept if path not in surplus]
        self._surplus.extend(surplus)

    def delete_surplus(self) -> list[str]:
        """Deletes the surplus checkpoints and their ``.state.pt`` files; returns their paths."""
        surplus, self._surplus = self._surplus, []
        if self.is_main:
            for path in surplus:
                for doomed in (Path(path), state_path_for(path)):
                    with contextlib.suppress(FileNotFoundError):
                        doomed.unlink()
                logger.debug("Deleted checkpoint %s (save_total_limit=%d)", path, self.limit)
        return surplus

    # ----------------------------------------------------------------- resumable state
    def state_dict(self) -> dict[str, Any]:
        """Kept files, the best metric (value, step, path), patience counter, pending deletions."""
        return {
            "kept": list(self.kept),
            "best_metric": self.best_metric,
            "best_step": self.best_step,
            "best_checkpoint": self.best_checkpoint,
            "evaluations_without_improvement": self.evaluations_without_improvement,
            "surplus": list(self._surplus),
            "stop_reason": self.stop_reason,
        }

    @staticmethod
    def initial_state() -> dict[str, Any]:
        """The state of a lifecycle that has seen nothing (for state files that predate it)."""
        return {
            "kept": [],
            "best_metric": None,
            "best_step": None,
            "best_checkpoint": None,
            "evaluations_without_improvement": 0,
            "surplus": [],
            "stop_reason": None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores ``state_dict()``; deletions that were decided but not done happen next time.

        A run saved when it stopped early stays stopped while the patience counter still reaches
        this run's ``early_stopping_patience``; a larger patience lets it train on.
        """
        self.kept = list(state["kept"])
        self.best_metric = state["best_metric"]
        self.best_step = state["best_step"]
        self.best_checkpoint = state["best_checkpoint"]
        self.evaluations_without_improvement = state["evaluations_without_improvement"]
        self._surplus = list(state["surplus"])
        still_stopped = self.patience is not None and (
            self.evaluations_without_improvement >= self.patience
        )
        self.stop_reason = state.get("stop_reason") if still_stopped else None


# --------------------------------------------------------------------- resume flags
AUTO = "auto"


def resume_source(
    resume_from: Any, output_dir: str | os.PathLike, save_training_state: bool = True
) -> Path | None:
    """The training-state file a ``train(..., resume_from=...)`` call resumes from, or ``None``.

    Args:
        resume_from: ``None``/``False`` (start fresh); ``True`` (the latest resumable checkpoint
            in ``output_dir``, which must exist); ``'auto'`` (that one if there is one, else
            start fresh: for preemptible jobs); or a path (``gs{N}.pkl``, ``gs{N}.state.pt``, or
            a directory meaning its latest resumable checkpoint).
        output_dir: ``TrainingConfig.output_dir``.
        save_training_state: the config's flag; without it a job restarted with ``True`` or
            ``'auto'`` would find nothing it wrote to resume from, so a warning says so.

    Raises:
        FileNotFoundError: ``True`` or a path, and nothing resumable there.
        TypeError: any other value.
    """
    if resume_from is None or resume_from is False:
        return None
    restarts = resume_from is True or (isinstance(resume_from, str) and resume_from == AUTO)
    if restarts and not save_training_state:
        logger.warning(
            "`resume_from`=%r but TrainingConfig `save_training_state`=False: this run's "
            "checkpoints cannot be resumed from; set save_training_state=True",
            resume_from,
        )
    if resume_from is True:
        try:
            return find_state_file(output_dir)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"`resume_from`=True: output_dir {str(output_dir)!r} holds no gs{{N}}.pkl with a "
                f"gs{{N}}{STATE_SUFFIX} beside it (train with save_training_state=True); use "
                "resume_from='auto' to start fresh when there is none"
            ) from None
    if isinstance(resume_from, str) and resume_from == AUTO:
        try:
            return find_state_file(output_dir)
        except FileNotFoundError:
            logger.info(
                "resume_from='auto': no resumable checkpoint in %s, starting fresh", output_dir
            )
            return None
    if not isinstance(resume_from, (str, os.PathLike)):
        raise TypeError(
            f"`resume_from`={resume_from!r} must be None, True, 'auto', or the path of a "
            "gs{N}.pkl, a gs{N}.state.pt or an output directory"
        )
    return find_state_file(resume_from)


def check_continuation(
    saved: dict[str, Any], current: dict[str, Any], global_step: int, path: Any = None
) -> None:
    """Accepts a resume whose plan differs from the saved one only by being longer.

    Args:
        saved: ``plan.describe()`` as saved in the training state.
        current: this call's ``plan.describe()``.
        global_step: the saved optimizer step.
        path: the state file, for messages.

    Raises:
        ValueError: another mode, another number of steps per epoch, or a plan shorter than
            ``global_step``.
    """
    if saved == current:
        return
    same_mode = saved.get("mode") == current.get("mode")
    if same_mode and current["mode"] == "epoch":
        same_mode = _steps_per_epoch(saved) == _steps_per_epoch(current)
    if not same_mode or current["total_steps"] < global_step:
        raise ValueError(
            f"cannot resume from {str(path)!r}: it was saved by a run with {saved} at step "
            f"{global_step}, this call trains with {current}; resume with the same data and "
            "mode, and as many or more epochs/steps"
        )
    logger.info(
        "Continuing a run saved with %s at step %d to %s: the weight schedules and checkpoints "
        "follow the new length",
        saved,
        global_step,
        current,
    )


def _steps_per_epoch(description: dict[str, Any]) -> int:
    return description["total_steps"] // description["num_epochs"]
