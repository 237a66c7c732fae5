"""Weight and temperature schedulers.

Weight schedulers map training progress ``x = global_step / total_steps`` in ``[0, 1]`` to a loss
weight. Temperature schedulers are called on detached logits as
``scheduler(logits_S, logits_T, base_temperature)`` and return a float or one temperature per row.
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
    weights: torch.Tensor, base_temperature: float, beta: float
) -> torch.Tensor:
    # Rows with a larger weight than average get a lower temperature (sharper targets) and
    # vice versa; the mean temperature stays `base_temperature`.
    return base_temperature + (weights.mean() - weights) * beta


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

    def flsw_temperature_scheduler(
        logits_S: torch.Tensor, logits_T: torch.Tensor, base_temperature: float
    ) -> torch.Tensor:
        student = logits_S / (logits_S.norm(dim=-1, keepdim=True) + eps)
        teacher = logits_T / (logits_T.norm(dim=-1, keepdim=True) + eps)
        weights = (1 - (student * teacher).sum(dim=-1)) ** gamma
        return _spread_around_base(weights, base_temperature, beta)

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

    def cwsm_temperature_scheduler(
        logits_S: torch.Tensor, logits_T: torch.Tensor, base_temperature: float
    ) -> torch.Tensor:
        confidence = logits_S.softmax(dim=-1).max(dim=-1).values
        weights = 1 / (confidence + 1e-3)
        return _spread_around_base(weights, base_temperature, beta)

    return cwsm_temperature_scheduler
