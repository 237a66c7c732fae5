"""Loss bookkeeping without per-step host-device syncs.

Losses are kept as device tensors and read back all at once every few optimizer steps (and before
each checkpoint): that single read feeds tensorboard (every micro-batch still gets its own scalar
at its own index), the progress bar, and the non-finite loss check.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The total loss became NaN or infinite; training stopped before writing another checkpoint."""


class LossLog:
    """Buffers per-micro-batch losses and flushes them in one read-back.

    Args:
        writer: a tensorboardX ``SummaryWriter`` or ``None``.
        progress: a tqdm bar (or ``None``) whose postfix shows the running loss.
    """

    def __init__(self, writer: Any = None, progress: Any = None) -> None:
        self.writer = writer
        self.progress = progress
        self._pending: list[tuple[int, int, list[str], list[torch.Tensor]]] = []
        self._pending_steps: list[tuple[int, dict[str, float], list[str], torch.Tensor]] = []
        self.last_losses: dict[str, float] = {}

    def record(
        self, micro_index: int, global_step: int, total: torch.Tensor, parts: dict[str, Any]
    ) -> None:
        """Keeps one micro-batch's losses (``global_step`` = the optimizer step it feeds)."""
        # Kept, not read: reading here would sync the device on every micro-batch. Stacking
        # waits for the flush too, which stacks every pending value at once (one operator per
        # flush, not one per micro-batch).
        values = [
            value.detach() if isinstance(value, torch.Tensor) else _detached(value)
            for value in (total, *parts.values())
        ]
        self._pending.append((micro_index, global_step, list(parts), values))

    def record_step(self, global_step: int, values: dict[str, Any]) -> None:
        """Keeps one optimizer step's scalars, written as ``train/<name>`` at ``global_step``.

        Host numbers are kept as they are; tensors (a gradient norm) stay on the device and are
        read back with the losses, in the same transfer.
        """
        host = {name: float(v) for name, v in values.items() if not isinstance(v, torch.Tensor)}
        names = [name for name, value in values.items() if isinstance(value, torch.Tensor)]
        tensors = [values[name].detach().reshape(()) for name in names]
        stacked = torch.zeros(0)
        if tensors:
            first = tensors[0]
            stacked = torch.stack([value.to(first.device, first.dtype) for value in tensors])
        self._pending_steps.append((global_step, host, names, stacked))

    def flush(self, engine: Any = None) -> None:
        """Reads everything pending back at once; writes scalars; raises on a non-finite total.

        Raises:
            NonFiniteLossError: naming the first bad micro-batch's step and its loss parts.
        """
        if not self._pending:
            bad = engine.any_rank(False) if engine is not None else False
            if bad:
                raise NonFiniteLossError("the total loss became non-finite on another rank")
            return
        pending, self._pending = self._pending, []
        steps, self._pending_steps = self._pending_steps, []
        device = pending[0][3][0].device
        dtype = torch.float32 if device.type == "mps" else torch.float64  # mps has no float64
        tensors = [_stacked([values for *_, values in pending]).to(dtype)]
        tensors += [stacked.to(device, dtype) for *_, stacked in steps]
        values = iter(torch.cat(tensors).tolist())
        rows = []
        for micro_index, step, names, _ in pending:
            total = next(values)
            rows.append((micro_index, step, total, {name: next(values) for name in names}))
        step_rows = [
            (step, {**host, **{name: next(values) for name in names}})
            for step, host, names, _ in steps
        ]
        self._check_finite(rows, engine)
        self._write(rows)
        self._write_steps(step_rows)

    def _check_finite(self, rows: list, engine: Any) -> None:
        bad = next((row for row in rows if not math.isfinite(row[2])), None)
        elsewhere = engine.any_rank(bad is not None) if engine is not None else bad is not None
        if bad is None and not elsewhere:
            return
        if bad is None:
            raise NonFiniteLossError("the total loss became non-finite on another rank")
        micro_index, step, total, parts = bad
        listed = ", ".join(f"{name}={value:.6g}" for name, value in parts.items())
        raise NonFiniteLossError(
            f"the total loss is {total} at optimizer step {step} (micro-batch {micro_index}); "
            f"loss parts: {listed or 'none'}. Training stopped; checkpoints written so far are "
            "intact"
        )

    def _write(self, rows: list) -> None:
        if self.writer is not None:
            for micro_index, _, total, parts in rows:
                self.writer.add_scalar("scalar/total_loss", total, micro_index)
                for name, value in parts.items():
                    self.writer.add_scalar(f"scalar/{name}", value, micro_index)
        if self.progress is not None and rows:
            running = sum(row[2] for row in rows) / len(rows)
            self.progress.set_postfix(loss=f"{running:.4g}", refresh=False)
        if rows:
            self.last_losses = _means(rows)

    def _write_steps(self, step_rows: list) -> None:
        if self.writer is None:
            return
        for step, scalars in step_rows:
            for name, value in scalars.items():
                self.writer.add_scalar(f"train/{name}", value, step)

    def close(self) -> None:
        """Drops anything not flushed (training failed) and closes the writer and progress bar."""
        self._pending = []
        self._pending_steps = []
        if self.writer is not None:
            self.writer.close()
        if self.progress is not None:
            self.progress.close()


def _detached(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    return torch.tensor(float(value))


def _stacked(records: list[list[torch.Tensor]]) -> torch.Tensor:
    """All records' values in one 1-D tensor, in order, each in its record's first dtype."""
    flat = [value for values in records for value in values]
    first = flat[0]
    if all(value.dtype == first.dtype and value.device == first.device for value in flat):
        return torch.stack(flat)
    # Mixed dtypes or devices: each value is converted to its record's total's dtype, as a
    # per-record stack would.
    return torch.stack(
        [value.to(values[0].device, values[0].dtype) for values in records for value in values]
    )


def _means(rows: list) -> dict[str, float]:
    """The mean total loss and mean of each part over the rows of one read-back."""
    means = {"total_loss": sum(row[2] for row in rows) / len(rows)}
    for name in rows[-1][3]:
        values = [row[3][name] for row in rows if name in row[3]]
        means[name] = sum(values) / len(values)
    return means
