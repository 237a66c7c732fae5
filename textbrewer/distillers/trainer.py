"""``BasicTrainer``: supervised training of one model through the same loop as the distillers."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from textbrewer.configurations import TrainingConfig
from textbrewer.distillers._batches import AdaptorResult, Route
from textbrewer.distillers._kd import LossParts, sum_of_means
from textbrewer.distillers._subclass_projections import OwnProjections
from textbrewer.distillers.base import AbstractDistiller, _checked_adaptor


class BasicTrainer(OwnProjections, AbstractDistiller):
    """Trains ``model`` on the losses its adaptor returns (e.g. to train a teacher).

    The loss is ``sum(loss.mean() for loss in adaptor(batch, outputs)['losses'])``. ``train()`` is
    the distillers' ``train()``: same call styles, checkpoints, callbacks and logging (only
    ``scalar/total_loss`` is written to tensorboard).

    Args:
        train_config: training settings.
        model: the model to train.
        adaptor: ``adaptor(batch, model_outputs) -> {'losses': [...], ...}``.

    Example:
        >>> class Classifier(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.linear = torch.nn.Linear(4, 2)
        ...     def forward(self, features, labels):
        ...         return self.linear(features)
        >>> model = Classifier()
        >>> def adaptor(batch, outputs):
        ...     return {"losses": torch.nn.functional.cross_entropy(outputs, batch[1])}
        >>> trainer = BasicTrainer(TrainingConfig(device="cpu", output_dir=tmp_dir,
        ...                                       progress_bar=False), model, adaptor)
        >>> data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(3)]
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> result = trainer.train(optimizer, None, data, num_epochs=1)
        >>> sorted(os.listdir(tmp_dir))
        ['gs3.pkl']
    """

    def __init__(self, train_config: TrainingConfig, model: nn.Module, adaptor: Any) -> None:
        super().__init__(train_config, None, model, _checked_adaptor("adaptor", adaptor))

    @property
    def model(self) -> nn.Module:
        """The model being trained (the same object as ``model_S``)."""
        return self.model_S

    @property
    def adaptor(self) -> Any:
        """The model's adaptor."""
        return self.adaptor_S

    def _route(self, batch: Any) -> Route:
        return Route(batch, [], [], self.adaptor_S, names_T=[], name_S="adaptor")

    def compute_loss(
        self, results_S: AdaptorResult, results_T: Any
    ) -> tuple[torch.Tensor, LossParts]:
        """``sum(loss.mean())`` over the adaptor's ``losses``; no named parts."""
        if "losses" not in results_S:
            raise ValueError(
                "BasicTrainer trains on the adaptor's 'losses', but the adaptor returned only "
                f"{sorted(results_S)}"
            )
        return sum_of_means(results_S["losses"]), {}
