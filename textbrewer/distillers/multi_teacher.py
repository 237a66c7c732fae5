"""``MultiTeacherDistiller``: distils the averaged logits of several teachers into one student."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from textbrewer.configurations import DistillationConfig, TrainingConfig
from textbrewer.distillers._batches import AdaptorResult, Route
from textbrewer.distillers._kd import LossParts, combine_parts, select_rows, to_float32
from textbrewer.distillers.base import _check_module, _checked_adaptor
from textbrewer.distillers.basic import BasicDistiller


class MultiTeacherDistiller(BasicDistiller):
    """Distils several teachers of the same task into one student.

    The teachers' logits are averaged element-wise (``sum(l_T) / len(l_T)``) after selection by
    teacher 0's ``logits_mask`` (the other teachers' masks are ignored), then distilled as in
    ``BasicDistiller``; a temperature scheduler sees the average. Intermediate matches are not
    supported. ``is_caching_logits`` works in epoch mode. A batch dict's ``'teacher_cache'`` must
    hold a list with one output per teacher; the teachers then do not run.

    Args:
        train_config: training settings.
        distill_config: distillation settings.
        model_T: list of teachers.
        model_S: the student.
        adaptor_T: one adaptor for every teacher, or a list with one per teacher.
        adaptor_S: the student's adaptor.

    Example:
        >>> teachers = [torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)]
        >>> adaptor = lambda batch, outputs: {"logits": outputs}
        >>> distiller = MultiTeacherDistiller(
        ...     TrainingConfig(device="cpu", output_dir=tmp_dir, progress_bar=False),
        ...     DistillationConfig(), teachers, torch.nn.Linear(4, 3), adaptor, adaptor)
        >>> len(distiller.teachers())
        2
    """

    def __init__(
        self,
        train_config: TrainingConfig,
        distill_config: DistillationConfig,
        model_T: list[nn.Module],
        model_S: nn.Module,
        adaptor_T: Any,
        adaptor_S: Any,
    ) -> None:
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
        """KD against the teachers' averaged logits, plus the hard-label term."""
        return combine_parts(self.terms.parts(results_S, _averaged(results_T)))


def _averaged(results_T: list[AdaptorResult]) -> AdaptorResult:
    if not all("logits" in result for result in results_T):
        return {}
    masks = results_T[0].get("logits_mask")
    count = len(results_T[0]["logits"])
    for index, result in enumerate(results_T[1:], start=1):
        if len(result["logits"]) != count:
            raise ValueError(
                f"adaptor_T[{index}] returned {len(result['logits'])} logits tensor(s), teacher 0 "
                f"returned {count}; every teacher must return as many"
            )
    averaged = []
    for position in range(count):
        mask = None if not masks else masks[0] if len(masks) == 1 else masks[position]
        selected = [
            select_rows(to_float32(result["logits"][position]), mask) for result in results_T
        ]
        averaged.append(sum(selected) / len(selected))
    return {"logits": averaged}
