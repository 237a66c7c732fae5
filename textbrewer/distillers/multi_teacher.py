"""``MultiTeacherDistiller``: distils the averaged logits of several teachers into one student."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from textbrewer.configurations import DistillationConfig, TrainingConfig
from textbrewer.distillers._batches import AdaptorResult, call_model, move_to_device, split_batch
from textbrewer.distillers._kd import combine_parts, select_rows, to_float32
from textbrewer.distillers.base import LossParts, check_module, checked_adaptor
from textbrewer.distillers.basic import BasicDistiller, CachedBatch


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
            check_module(f"model_T[{index}]", teacher)
        adaptors = list(adaptor_T) if isinstance(adaptor_T, (list, tuple)) else None
        if adaptors is not None and len(adaptors) != len(model_T):
            raise ValueError(
                f"`adaptor_T` has {len(adaptors)} adaptors for {len(model_T)} teachers; give "
                "one adaptor for all or one per teacher"
            )
        for index, adaptor in enumerate(adaptors or [adaptor_T]):
            checked_adaptor(f"adaptor_T[{index}]" if adaptors else "adaptor_T", adaptor)
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

    def _adaptors_T(self) -> list[Any]:
        return self._teacher_adaptors

    def train_on_batch(self, batch: Any, args: dict[str, Any]) -> tuple[torch.Tensor, LossParts]:
        """Every teacher's forward, the student's forward, the adaptors, ``compute_loss``."""
        if isinstance(batch, CachedBatch):
            return self._train_on_cached(batch, args)
        raw_T, raw_S, cache = split_batch(batch)
        batch_T = move_to_device(raw_T, self.device)
        with self._engine.autocast():
            if cache is not None:
                outputs_T = self._cached_outputs(cache)
            else:
                outputs_T = [self._teacher_outputs(model, batch_T, args) for model in self.model_T]
            batch_S = batch_T if raw_S is raw_T else move_to_device(raw_S, self.device)
            outputs_S = call_model(self.model_S, batch_S, args)
        results_T = [
            self._check_result(adaptor(batch_T, outputs), f"adaptor_T[{index}]")
            for index, (adaptor, outputs) in enumerate(zip(self._teacher_adaptors, outputs_T))
        ]
        results_S = self._check_result(self.adaptor_S(batch_S, outputs_S), "adaptor_S")
        return self._loss_without_autocast(results_S, results_T)

    def _cached_outputs(self, cache: Any) -> list[Any]:
        if not isinstance(cache, (list, tuple)) or len(cache) != len(self.model_T):
            raise ValueError(
                f"MultiTeacherDistiller: batch['teacher_cache'] must be a list with one output per "
                f"teacher ({len(self.model_T)}), got {type(cache).__name__}"
            )
        return list(move_to_device(list(cache), self.device))

    def compute_loss(
        self, results_S: AdaptorResult, results_T: list[AdaptorResult]
    ) -> tuple[torch.Tensor, LossParts]:
        """KD against the teachers' averaged logits, plus the hard-label term."""
        return combine_parts(self._logits_and_label_parts(results_S, _averaged(results_T)))

    def _cached_teacher_results(self, results_T: list[AdaptorResult]) -> Any:
        return results_T


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
