"""Factories for the layers that project student features to the teacher's dimension.

Each factory is called ``factory(dim_in, dim_out)`` with the student's and the teacher's feature
sizes and returns an ``nn.Module``. Initialisation matches TextBrewer 0.2.x draw for draw:
``nn.Linear``'s default initialisation runs first (consuming the torch RNG), then the weight is
redrawn from N(0, 0.02^2) and the bias zeroed, so seeded scripts get identical projections and an
identical RNG state afterwards.
"""

from __future__ import annotations

from typing import Callable

from torch import nn


def linear_projection(dim_in: int, dim_out: int) -> nn.Linear:
    """A linear layer ``(..., dim_in) -> (..., dim_out)`` with weight ~ N(0, 0.02^2), zero bias.

    Example:
        >>> linear_projection(4, 8).weight.shape
        torch.Size([8, 4])
    """
    layer = nn.Linear(dim_in, dim_out)
    layer.weight.data.normal_(mean=0.0, std=0.02)
    layer.bias.data.zero_()
    return layer


def _projection_with(activation: Callable[[], nn.Module]) -> Callable[[int, int], nn.Module]:
    def factory(dim_in: int, dim_out: int) -> nn.Sequential:
        return nn.Sequential(linear_projection(dim_in, dim_out), activation())

    return factory


relu_projection = _projection_with(nn.ReLU)
relu_projection.__doc__ = "``linear_projection`` followed by a ReLU."
relu_projection.__name__ = relu_projection.__qualname__ = "relu_projection"

tanh_projection = _projection_with(nn.Tanh)
tanh_projection.__doc__ = "``linear_projection`` followed by a tanh."
tanh_projection.__name__ = tanh_projection.__qualname__ = "tanh_projection"
