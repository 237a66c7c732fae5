"""Input checks and conversions of the losses: shapes, masks, temperatures, dtypes, autocast.

Kept apart from ``textbrewer.losses`` so that the public module holds only the losses themselves;
these helpers are pure functions of tensors and never import ``textbrewer.losses``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Callable, Optional, Union

import torch

# A KD temperature: a number, a 0-dim tensor, or a tensor with one temperature per row of logits.
Temperature = Union[float, torch.Tensor]

# An optional mask: a KD loss's (batch, length) ``logits_mask``, a match loss's ``mask``.
Mask = Optional[torch.Tensor]


# Without a mask, the attention losses treat entries at or below this value as padding (as 0.2.x
# does: BERT-style models add -10000 to the scores of masked keys).
_PADDING_SCORE = -1e-3


_FULL_PRECISION = (torch.float32, torch.float64)


def _without_autocast(loss_fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Runs ``loss_fn`` with autocast off on its inputs' device: the math stays full precision."""

    @functools.wraps(loss_fn)
    def wrapper(S, T, *args, **kwargs):
        # Entering the context costs as much as a small operator: skip it when autocast is off.
        if not _any_autocast():
            return loss_fn(S, T, *args, **kwargs)
        device = (S if isinstance(S, torch.Tensor) else S[0]).device.type
        with torch.autocast(device_type=device, enabled=False):
            return loss_fn(S, T, *args, **kwargs)

    return wrapper


def _any_autocast() -> bool:
    """Whether autocast is on for any device (one cheap call, no device lookup)."""
    check = getattr(torch._C, "_is_any_autocast_enabled", None)
    if check is not None:
        return check()
    return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()  # older torch


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (low-precision inputs compute in float32)."""
    for tensor in tensors:
        if tensor.dtype is torch.float64:
            return torch.float64
    return torch.float32


def _as(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor.to(dtype)`` without the dispatcher's cost when it already has that dtype."""
    return tensor if tensor.dtype is dtype else tensor.to(dtype)


_PROJECTION_HINT = " (add a projection to the match)"


# Attention maps compare position by position: no projection applies to them.
_HEADS_HINT = (
    "; for different head counts use 'attention_mse_sum' or 'attention_ce_mean', which reduce "
    "the heads first"
)


def _check_same_shape(S: torch.Tensor, T: torch.Tensor, what: str, hint: str = "") -> None:
    """Equal shapes, or a ValueError naming both; ``hint`` says how to fix it where one can."""
    if S.shape != T.shape:
        raise ValueError(
            f"{what}: the student's shape {tuple(S.shape)} differs from the teacher's "
            f"{tuple(T.shape)}; this loss needs equal shapes{hint}"
        )


def _check_position_mask(mask: torch.Tensor, positions: torch.Size, what: str) -> None:
    if mask.shape != positions:
        raise ValueError(
            f"{what}: mask of shape {tuple(mask.shape)} does not match the input positions "
            f"{tuple(positions)} (expected a (batch, length) mask)"
        )


def _attention_mask(
    mask: torch.Tensor, scores: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Views of a (batch, length) mask that broadcast against (batch, *heads, length, length).

    Returns:
        ``(m, m_q, m_k, heads)``: the mask as ``dtype`` (batch, length), its query view
        (batch, 1.., length, 1), its key view (batch, 1.., 1, length), and the number of heads (the
        product of the middle dimensions, 1 for 3-D scores).
    """
    fits = (
        mask.dim() == 2
        and scores.dim() >= 3
        and scores.size(0) == mask.size(0)
        and scores.shape[-2:] == (mask.size(-1), mask.size(-1))
    )
    if not fits:
        raise ValueError(
            f"attention mask of shape {tuple(mask.shape)} does not fit scores of shape "
            f"{tuple(scores.shape)}: expected a (batch, length) mask and (batch, [heads,] length, "
            "length) scores"
        )
    batch, length = mask.shape
    ones = [1] * (scores.dim() - 3)
    m = mask.to(device=scores.device, dtype=dtype)
    m_q = m.reshape(batch, *ones, length, 1)
    m_k = m.reshape(batch, *ones, 1, length)
    return m, m_q, m_k, math.prod(scores.shape[1:-2])


def _row_temperature(
    temperature: Temperature, logits: torch.Tensor, dtype: torch.dtype
) -> Temperature:
    """The temperature as a number, or a tensor that broadcasts over the classes of ``logits``."""
    if not isinstance(temperature, torch.Tensor):
        return temperature
    if temperature.dim() != 0 and temperature.shape != logits.shape[:-1]:
        raise ValueError(
            f"temperature of shape {tuple(temperature.shape)} does not fit logits of shape "
            f"{tuple(logits.shape)}: give a number, a 0-dim tensor, or one temperature per row, "
            f"shape {tuple(logits.shape[:-1])}"
        )
    temperature = temperature.to(device=logits.device, dtype=dtype)
    return temperature if temperature.dim() == 0 else temperature.unsqueeze(-1)


def _logits_row_weight(
    logits_mask: torch.Tensor | None, logits: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor | None:
    """0/1 weights (rows,) of the rows of 3-D logits a ``logits_mask`` keeps; ``None`` for none.

    A mask has no effect on 2-D logits (as the distillers' row selection). Rows are kept where the
    mask is nonzero, as ``logits[mask.bool()]`` keeps them; weighting instead of selecting keeps the
    shapes independent of the mask's values, so a GPU never waits for them.
    """
    if logits_mask is None or logits.dim() != 3:
        return None
    misfit = _logits_mask_misfit(logits_mask, logits)
    if misfit:
        raise ValueError(
            f"logits_mask of {misfit} does not fit logits of shape {tuple(logits.shape)}: "
            f"expected a (batch, length) mask of shape {tuple(logits.shape[:-1])}, nonzero at the "
            "rows to keep"
        )
    return (logits_mask != 0).reshape(-1).to(device=logits.device, dtype=dtype)


def _logits_mask_misfit(logits_mask: object, logits: torch.Tensor) -> str:
    """Why ``logits_mask`` does not fit 3-D ``logits``: its shape or its type; ``""`` if it fits.

    A fitting mask is a (batch, length) tensor, ``logits.shape[:-1]``. The reason reads
    ``"shape (...)"`` or ``"type ..."``, to follow ``"a logits_mask of "`` in a message.
    """
    if not isinstance(logits_mask, torch.Tensor):
        return f"type {type(logits_mask).__name__}"
    return "" if logits_mask.shape == logits.shape[:-1] else f"shape {tuple(logits_mask.shape)}"


def _pair(tensors: Sequence[torch.Tensor], what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(tensors, torch.Tensor) or len(tensors) != 2:
        raise ValueError(f"{what} must be a pair (a list or tuple) of two tensors")
    return tensors[0], tensors[1]


def _check_beta(beta: float) -> float:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta <= 1:
        raise ValueError(
            f"jsd: `beta`={beta!r} must be a number in [0, 1] (the teacher's share of the "
            "mixture; 0.5 is the symmetric Jensen-Shannon divergence)"
        )
    return float(beta)


def _slice_rows(tensor: Temperature | None, start: int, stop: int) -> Temperature | None:
    """Rows ``start:stop`` of a per-row tensor; numbers and broadcast (size-1) tensors unchanged."""
    if not isinstance(tensor, torch.Tensor) or tensor.dim() == 0 or tensor.size(0) == 1:
        return tensor
    return tensor[start:stop]


def _tempered(logits: torch.Tensor, temperature: Temperature, dtype: torch.dtype) -> torch.Tensor:
    logits = _as(logits, dtype)
    if isinstance(temperature, torch.Tensor) or temperature != 1:
        return logits / temperature
    return logits


def _divided(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits if temperature == 1 else logits / temperature


def _rows(logits: torch.Tensor) -> int:
    return logits.numel() // max(1, logits.size(-1))
