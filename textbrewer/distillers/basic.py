"""``BasicDistiller``: single-teacher distillation of logits plus the hard-label loss."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from torch import nn

from textbrewer.configurations import DistillationConfig, TrainingConfig
from textbrewer.distillers._batches import (
    AdaptorResult,
    Route,
    move_to_device,
    split_batch,
    teacher_forward,
)
from textbrewer.distillers._kd import (
    DistillationTerms,
    LossParts,
    UsesDistillationTerms,
    combine_parts,
)
from textbrewer.distillers._protocol import DistillerAttributes
from textbrewer.distillers._subclass_projections import OwnProjections
from textbrewer.distillers.base import AbstractDistiller, _check_module, _checked_adaptor
from textbrewer.training.arguments import TrainCall
from textbrewer.training.plans import CachedPasses, Plan

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class _CachedBatch:
    """A batch stored on the device with its teachers' logits (on the CPU) by logits caching."""

    batch: Any
    logits_T: list[list[torch.Tensor]]


class BasicDistiller(DistillerAttributes, OwnProjections, UsesDistillationTerms, AbstractDistiller):
    """Distils a teacher's logits into a student: ``kd_loss_weight * KD + hard_label_weight * HL``.

    Args:
        train_config: training settings.
        distill_config: distillation settings (intermediate matches are not used here).
        model_T: the teacher, run in eval mode without gradients.
        model_S: the student.
        adaptor_T: ``adaptor_T(batch, teacher_outputs) -> dict``.
        adaptor_S: ``adaptor_S(batch, student_outputs) -> dict``.

    Example:
        >>> teacher, student = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
        >>> adaptor = lambda batch, outputs: {"logits": outputs}
        >>> distiller = BasicDistiller(
        ...     TrainingConfig(device="cpu", output_dir=tmp_dir, progress_bar=False),
        ...     DistillationConfig(temperature=2), teacher, student, adaptor, adaptor)
        >>> data = [(torch.randn(8, 4),) for _ in range(4)]
        >>> optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
        >>> with distiller:
        ...     result = distiller.train(optimizer, None, data, num_epochs=2)
        >>> sorted(os.listdir(tmp_dir)), result.global_step
        (['gs4.pkl', 'gs8.pkl'], 8)
    """

    _supports_caching = True

    def __init__(
        self,
        train_config: TrainingConfig,
        distill_config: DistillationConfig,
        model_T: nn.Module,
        model_S: nn.Module,
        adaptor_T: Any,
        adaptor_S: Any,
    ) -> None:
        _check_module("model_T", model_T)
        super().__init__(
            train_config, distill_config, model_S, _checked_adaptor("adaptor_S", adaptor_S)
        )
        self.terms = DistillationTerms(distill_config)
        self.model_T = model_T.to(self.device)
        self.adaptor_T = _checked_adaptor("adaptor_T", adaptor_T)
        if distill_config.is_caching_logits and not self._supports_caching:
            logger.warning(
                "%s ignores is_caching_logits=True: caching works in BasicDistiller and "
                "MultiTeacherDistiller",
                type(self).__name__,
            )

    def teachers(self) -> list[nn.Module]:
        """The teacher model."""
        return [self.model_T]

    def teacher_adaptors(self) -> list[Any]:
        """The teacher's adaptor."""
        return [self.adaptor_T]

    def compute_loss(
        self, results_S: AdaptorResult, results_T: AdaptorResult
    ) -> tuple[torch.Tensor, LossParts]:
        """KD on the logits (when both adaptors return them) plus the hard-label term.

        Returns:
            ``(total, parts)`` with parts ``unweighted_kd_loss`` and
            ``unweighted_hard_label_loss`` where their inputs are present.
        """
        return combine_parts(self.terms.parts(results_S, results_T))

    # ----------------------------------------------------------------- logits caching
    def _route(self, batch: Any) -> Route:
        route = super()._route(batch)
        if isinstance(batch, _CachedBatch):
            route.batch, route.cached_logits = batch.batch, batch.logits_T
        return route

    def _build_plan(self, call: TrainCall) -> Plan:
        if not self.d_config.is_caching_logits or not self._supports_caching:
            return super()._build_plan(call)
        if call.num_steps is not None:
            raise ValueError(
                "is_caching_logits=True works in epoch mode only (train with num_epochs); the "
                f"call asks for num_steps={call.num_steps}"
            )
        entries = self._cache_teacher_logits(call)
        return self._epoch_plan(
            dataclasses.replace(call, batch_postprocessor=None), CachedPasses(entries), len(entries)
        )

    def _cache_teacher_logits(self, call: TrainCall) -> list[_CachedBatch]:
        logger.info("Caching the teacher's logits over the dataloader")
        previous = [teacher.training for teacher in self.teachers()]
        for teacher in self.teachers():
            teacher.eval()
        entries = []
        try:
            for raw in call.data:
                if call.batch_postprocessor is not None:
                    raw = call.batch_postprocessor(raw)
                batch = move_to_device(raw, self.device)
                entries.append(_CachedBatch(batch, self._teacher_logits(batch, call.model_args)))
        finally:
            for teacher, was_training in zip(self.teachers(), previous):
                teacher.train(was_training)
        return entries

    def _teacher_logits(self, batch: Any, args: dict[str, Any]) -> list[list[torch.Tensor]]:
        route = self._route(batch)
        raw_T, _, _ = split_batch(batch)
        logits = []
        for teacher, adaptor, name in zip(route.teachers, route.adaptors_T, route.names_T):
            with self._engine.autocast():
                outputs = teacher_forward(teacher, raw_T, args)
            result = self._check_result(adaptor(raw_T, outputs), name)
            if "logits" not in result:
                raise ValueError(f"is_caching_logits=True needs {name} to return 'logits'")
            logits.append([self._to_host(tensor) for tensor in result["logits"]])
        return logits

    def _to_host(self, tensor: torch.Tensor) -> torch.Tensor:
        # Pinned host memory lets the per-step copy back to the GPU run without a sync.
        host = tensor.detach().cpu()
        return host.pin_memory() if self.device.type == "cuda" else host
