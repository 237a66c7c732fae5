"""``MultiTeacherDistiller``: distils several teachers into one student.

Logits are combined as ``combine_teachers`` says (the 0.2.x element-wise mean by default);
intermediate and custom matches name the teacher they read from.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from textbrewer.configurations import DistillationConfig, TrainingConfig
from textbrewer.distillers._batches import AdaptorResult, Route
from textbrewer.distillers._kd import LossParts, combine_parts
from textbrewer.distillers._matching import MatchComputer, MatchingHooks
from textbrewer.distillers._teachers import (
    MEAN_LOGITS,
    TeacherCombination,
    check_match_teachers,
    combined_kd_parts,
)
from textbrewer.distillers.base import _check_module, _checked_adaptor
from textbrewer.distillers.basic import BasicDistiller

logger = logging.getLogger(__name__)


class MultiTeacherDistiller(MatchingHooks, BasicDistiller):
    """Distils several teachers into one student.

    KD: by default (``combine_teachers='mean_logits'``, TextBrewer 0.2.x) the teachers' logits
    are selected by teacher 0's ``logits_mask`` (the other teachers' masks are ignored),
    averaged element-wise (``sum(l_T) / len(l_T)``, or weighted by ``teacher_weights``) and
    distilled as in ``BasicDistiller``; a temperature scheduler sees the average. With
    ``combine_teachers='mean_losses'`` each teacher is distilled on its own (its own mask and
    temperature-scheduler result) and the KD losses are averaged, weighted the same way.

    Intermediate matches (``distill_config.intermediate_matches``) and ``custom_matches`` work as
    in ``GeneralDistiller``, each reading the teacher its ``teacher`` index names (required when
    there are several teachers). ``is_caching_logits`` works in epoch mode when there are no
    matches (matches need every teacher's features at every step; it is then ignored with a
    warning). A batch dict's ``'teacher_cache'`` must hold a list with one output per teacher;
    the teachers then do not run.

    Args:
        train_config: training settings.
        distill_config: distillation settings.
        model_T: list of teachers.
        model_S: the student.
        adaptor_T: one adaptor for every teacher, or a list with one per teacher.
        adaptor_S: the student's adaptor.
        custom_matches: as in ``GeneralDistiller``, each with a ``teacher`` index.
        teacher_weights: one non-negative weight per teacher, normalised to sum to 1; ``None``
            (default) for equal weights.
        combine_teachers: ``'mean_logits'`` (default) or ``'mean_losses'``.

    Example:
        >>> teachers = [torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)]
        >>> adaptor = lambda batch, outputs: {"logits": outputs}
        >>> distiller = MultiTeacherDistiller(
        ...     TrainingConfig(device="cpu", output_dir=tmp_dir, progress_bar=False),
        ...     DistillationConfig(), teachers, torch.nn.Linear(4, 3), adaptor, adaptor,
        ...     teacher_weights=[2, 1], combine_teachers="mean_losses")
        >>> len(distiller.teachers()), distiller.combination.weights
        (2, [0.6666666666666666, 0.3333333333333333])
    """

    def __init__(
        self,
        train_config: TrainingConfig,
        distill_config: DistillationConfig,
        model_T: list[nn.Module],
        model_S: nn.Module,
        adaptor_T: Any,
        adaptor_S: Any,
        custom_matches: list[Any] | None = None,
        *,
        teacher_weights: Sequence[float] | None = None,
        combine_teachers: str = MEAN_LOGITS,
    ) -> None:
        if isinstance(model_T, nn.ModuleList):  # iterated by 0.2.x like a list
            model_T = list(model_T)
        if isinstance(model_T, nn.Module) or not isinstance(model_T, (list, tuple)) or not model_T:
            raise TypeError("`model_T` must be a non-empty list of teacher nn.Modules")
        for index, teacher in enumerate(model_T):
            _check_module(f"model_T[{index}]", teacher)
        adaptors = list(adaptor_T) if isinstance(adaptor_T, (list, tuple)) else None
        if adaptors is not None and len(adaptors) != len(model_T):
            raise ValueError(
                f"`adaptor_T` has {len(adaptors)} adaptors for {len(model_T)} teachers; give "
                "one adaptor for all or one per teacher"
            )
        for index, adaptor in enumerate(adaptors or [adaptor_T]):
            _checked_adaptor(f"adaptor_T[{index}]" if adaptors else "adaptor_T", adaptor)
        self.combination = TeacherCombination(combine_teachers, teacher_weights, len(model_T))
        super().__init__(
            train_config,
            distill_config,
            model_T[0],
            model_S,
            adaptor_T if adaptors is None else adaptors[0],
            adaptor_S,
        )
        self.model_T = [teacher.to(self.device) for teacher in model_T]
        self.adaptor_T = adaptor_T
        self._teacher_adaptors = adaptors or [adaptor_T] * len(model_T)
        self.matches = MatchComputer(
            distill_config.intermediate_matches or [], custom_matches, self.device
        )
        check_match_teachers(
            self.matches.matches, self.matches.custom, self.model_T, "MultiTeacherDistiller"
        )
        if self.matches.matches or self.matches.custom:
            # Matches need every teacher's features at every step, which a logits cache drops.
            self._supports_caching = False
            if distill_config.is_caching_logits:
                logger.warning(
                    "MultiTeacherDistiller ignores is_caching_logits=True when there are "
                    "intermediate or custom matches: they need the teachers' features every step"
                )

    def teachers(self) -> list[nn.Module]:
        """The teacher models."""
        return list(self.model_T)

    def teacher_adaptors(self) -> list[Any]:
        """One adaptor per teacher."""
        return self._teacher_adaptors

    def _route(self, batch: Any) -> Route:
        route = super()._route(batch)
        route.several = True
        route.names_T = [f"adaptor_T[{index}]" for index in range(len(self.model_T))]
        return route

    def compute_loss(
        self, results_S: AdaptorResult, results_T: list[AdaptorResult]
    ) -> tuple[torch.Tensor, LossParts]:
        """KD against the combined teachers, the hard-label term, then every match."""
        results_T = list(results_T)
        parts = combined_kd_parts(self.terms, self.combination, results_S, results_T)
        parts.extend(self.matches(results_S, results_T))
        return combine_parts(parts)
