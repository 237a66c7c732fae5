"""Evaluation: when the callback runs, and the metrics it may return.

The callback keeps its TextBrewer 0.2.x signature, ``callback(model=..., step=...)``, and is
called at every checkpoint as before. It may now return a dict of metrics (``None``, what 0.2.x
callbacks return, means no metrics); ``TrainingConfig(eval_steps=N)`` also calls it every ``N``
optimizer steps. Returned metrics go to tensorboard as ``eval/<name>`` at the optimizer step, to
one INFO line, and to the checkpoint lifecycle (best checkpoint, early stopping).
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Mapping
from typing import Any, Callable

import torch

from textbrewer.configurations import TrainingConfig
from textbrewer.training.call_errors import add_note, is_signature_mismatch

logger = logging.getLogger(__name__)


def check_evaluation(config: TrainingConfig, callback: Callable[..., Any] | None) -> None:
    """Raises a ``ValueError`` when evaluation settings need a callback and none is given."""
    if callback is not None:
        return
    for field in ("eval_steps", "metric_for_best_model"):
        value = getattr(config, field)
        if value is not None:
            raise ValueError(
                f"TrainingConfig `{field}`={value!r} needs a `callback` for train(): "
                "callback(model=..., step=...) that evaluates the student and returns a dict of "
                "metrics, e.g. {'accuracy': 0.91}"
            )


class Evaluation:
    """Calls the callback and turns what it returns into metrics.

    Args:
        callback: ``callback(model=..., step=...)``, or ``None``.
        eval_steps: evaluate every this many optimizer steps besides checkpoints, or ``None``.
        engine: the training engine; when distributed, rank 0's metrics are used on every rank so
            that every rank takes the same decisions (best checkpoint, early stopping).
    """

    def __init__(
        self, callback: Callable[..., Any] | None, eval_steps: int | None, engine: Any = None
    ) -> None:
        self.callback = callback
        self.eval_steps = eval_steps
        self.engine = engine
        self.last_metrics: dict[str, float] = {}
        self._warned: set[str] = set()

    def is_due(self, step: int) -> bool:
        """Whether optimizer step ``step`` is an evaluation step (besides checkpoints)."""
        return self.eval_steps is not None and step % self.eval_steps == 0

    def __call__(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        """Runs the callback on ``model`` (then puts it back in train mode); returns its metrics."""
        if self.callback is None:
            return {}
        try:
            returned = self.callback(model=model, step=step)
        except Exception as error:
            if is_signature_mismatch(error):
                raise TypeError(
                    f"the callback is called as callback(model=..., step=...), by keyword, and "
                    f"failed: {error}; define it as def callback(model, step): ..."
                ) from error
            add_note(
                error,
                f"(raised by the callback at optimizer step {step}; a checkpoint of this step "
                "was written before the callback ran)",
            )
            raise
        model.train()
        metrics = self.metrics_from(returned)
        if self.engine is not None and self.engine.distributed:
            metrics = self.engine.gather_objects(metrics)[0]
        if metrics:
            self.last_metrics = metrics
        return metrics

    def metrics_from(self, returned: Any) -> dict[str, float]:
        """``{name: float}`` from a callback's return value; what is not a number is left out.

        ``None`` gives ``{}``. A value that is not a dict, and dict values that are not real
        numbers (or one-element tensors), are ignored with a warning (once each).
        """
        if returned is None:
            return {}
        if not isinstance(returned, Mapping):
            self._warn_once(
                "return",
                f"the callback returned {type(returned).__name__}, not a dict of metrics; it is "
                "ignored (return None or e.g. {'accuracy': 0.91})",
            )
            return {}
        metrics = {}
        for name, value in returned.items():
            number = _as_number(value)
            if number is None:
                self._warn_once(
                    str(name),
                    f"the callback's metric {name!r}={value!r} is not a number; it is ignored",
                )
                continue
            metrics[str(name)] = number
        return metrics

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)


def report_metrics(metrics: dict[str, float], step: int, writer: Any) -> None:
    """Writes ``eval/<name>`` scalars at ``step`` and logs the metrics in one INFO line."""
    if not metrics:
        return
    if writer is not None:
        for name, value in metrics.items():
            writer.add_scalar(f"eval/{name}", value, step)
    listed = ", ".join(f"{name}={value:.6g}" for name, value in metrics.items())
    logger.info("Evaluation at step %d: %s", step, listed)


def _as_number(value: Any) -> float | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.detach().cpu())
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)
