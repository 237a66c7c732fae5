"""Weight and temperature schedulers.

Weight schedulers map training progress ``x = global_step / total_steps`` in ``[0, 1]`` to a loss
weight. Temperature schedulers are called on detached logits as
``scheduler(logits_S, logits_T, base_temperature)`` and return a float or one temperature per row.
The built-in ones detach their inputs themselves (their temperature never has a gradient) and take
an optional ``logits_mask`` (batch, length): the mean they spread around is then over the rows it
keeps, the same number as for those rows selected first.
"""

from __future__ import annotations

from typing import Callable, Union

import torch

Temperature = Union[float, torch.Tensor]
TemperatureScheduler = Callable[[torch.Tensor, torch.Tensor, float], Temperature]


def linear_decay(x: float) -> float:
    """Decays the weight linearly from 1 to 0 over training.

    Example:
        >>> linear_decay(0.25)
        0.75
    """
    return 1 - x


def linear_growth(x: float) -> float:
    """Grows the weight linearly from 0 to 1 over training.

    Example:
        >>> linear_growth(0.25)
        0.25
    """
    return x


def constant_temperature_scheduler(
    logits_S: torch.Tensor, logits_T: torch.Tensor, base_temperature: float
) -> float:
    """Returns ``base_temperature`` unchanged (useful for testing the scheduler plumbing).

    Example:
        >>> constant_temperature_scheduler(torch.zeros(2, 3), torch.zeros(2, 3), 4.0)
        4.0
    """
    return base_temperature


def _spread_around_base(
    weights: torch.Tensor,
    base_temperature: float,
    beta: float,
    logits_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    # Rows with a larger weight than average get a lower temperature (sharper targets) and
    # vice versa; the mean temperature stays `base_temperature`. With a logits_mask the mean is
    # over the kept rows, as if only they had been passed (the other rows' values are unused).
    if logits_mask is None or weights.dim() != 2:
        mean = weights.mean()
    else:
        if logits_mask.shape != weights.shape:
            raise ValueError(
                f"logits_mask of shape {tuple(logits_mask.shape)} does not fit the rows of the "
                f"logits, shape {tuple(weights.shape)}: expected a (batch, length) mask"
            )
        kept = (logits_mask != 0).to(device=weights.device, dtype=weights.dtype)
        mean = (weights * kept).sum() / kept.sum()
    return base_temperature + (mean - weights) * beta


# Rows per chunk times classes: the per-row statistics below upcast low-precision logits one
# chunk at a time instead of copying the whole tensor to float32.
_CHUNK_ELEMENTS = 1 << 22


def _per_row(statistic: Callable[..., torch.Tensor], *logits: torch.Tensor) -> torch.Tensor:
    """``statistic`` of detached logits, row by row, in float32 (float64 stays float64).

    Temperature schedulers return a temperature without gradient (as TextBrewer 0.2.x), also
    when called directly on logits that require grad.
    """
    rows_shape = logits[0].shape[:-1]
    classes = logits[0].size(-1)
    dtype = torch.float64 if any(x.dtype == torch.float64 for x in logits) else torch.float32
    flat = [x.detach().reshape(-1, classes) for x in logits]
    step = max(1, _CHUNK_ELEMENTS // max(1, classes))
    with torch.no_grad():
        parts = [
            statistic(*(x[start : start + step].to(dtype) for x in flat))
            for start in range(0, flat[0].size(0), step)
        ]
    values = parts[0] if len(parts) == 1 else torch.cat(parts)
    return values.reshape(rows_shape)


def flsw_temperature_scheduler_builder(
    beta: float, gamma: float, eps: float = 1e-4
) -> TemperatureScheduler:
    """Builds the FLSW temperature scheduler of "Preparing Lessons" (Wen et al., 2019).

    Rows of both logits are normalised (``x / (||x|| + eps)``); with ``s . t`` their dot product,
    ``w = (1 - s . t) ** gamma`` and ``T = base_T + (mean(w) - w) * beta``, one per row.

    Args:
        beta: spread of the temperatures around the base temperature.
        gamma: focusing exponent.
        eps: added to the norms to avoid division by zero.

    Returns:
        ``scheduler(logits_S, logits_T, base_temperature)`` returning a tensor of shape
        ``logits.shape[:-1]``.

    Example:
        >>> scheduler = flsw_temperature_scheduler_builder(beta=1.0, gamma=1.0)
        >>> scheduler(torch.eye(2), torch.eye(2), 4.0).shape
        torch.Size([2])
    """

    def rows(logits_S: torch.Tensor, logits_T: torch.Tensor) -> torch.Tensor:
        student = logits_S / (logits_S.norm(dim=-1, keepdim=True) + eps)
        teacher = logits_T / (logits_T.norm(dim=-1, keepdim=True) + eps)
        return (1 - (student * teacher).sum(dim=-1)) ** gamma

    def flsw_temperature_scheduler(
        logits_S: torch.Tensor,
        logits_T: torch.Tensor,
        base_temperature: float,
        logits_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        weights = _per_row(rows, logits_S, logits_T)
        return _spread_around_base(weights, base_temperature, beta, logits_mask)

    flsw_temperature_scheduler.supports_logits_mask = True
    return flsw_temperature_scheduler


def cwsm_temperature_scheduler_builder(beta: float) -> TemperatureScheduler:
    """Builds the CWSM temperature scheduler of "Preparing Lessons" (Wen et al., 2019).

    With ``v = max_c softmax(logits_S)``, ``w = 1 / (v + 1e-3)`` and
    ``T = base_T + (mean(w) - w) * beta``, one per row.

    Args:
        beta: spread of the temperatures around the base temperature.

    Returns:
        ``scheduler(logits_S, logits_T, base_temperature)`` returning a tensor of shape
        ``logits.shape[:-1]``.

    Example:
        >>> scheduler = cwsm_temperature_scheduler_builder(beta=1.0)
        >>> scheduler(torch.zeros(3, 5), torch.zeros(3, 5), 2.0)
        tensor([2., 2., 2.])
    """

    def rows(logits_S: torch.Tensor) -> torch.Tensor:
        confidence = logits_S.softmax(dim=-1).max(dim=-1).values
        return 1 / (confidence + 1e-3)

    def cwsm_temperature_scheduler(
        logits_S: torch.Tensor,
        logits_T: torch.Tensor,
        base_temperature: float,
        logits_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        weights = _per_row(rows, logits_S)
        return _spread_around_base(weights, base_temperature, beta, logits_mask)

    cwsm_temperature_scheduler.supports_logits_mask = True
    return cwsm_temperature_scheduler
