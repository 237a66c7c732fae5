"""``MultiTaskDistiller``: distils one teacher (or several) per task into one multi-task student."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from textbrewer.configurations import DistillationConfig, TrainingConfig
from textbrewer.distillers._batches import AdaptorResult, Route
from textbrewer.distillers._kd import (
    DistillationTerms,
    LossParts,
    UsesDistillationTerms,
    combine_parts,
)
from textbrewer.distillers._matching import MatchComputer, MatchingHooks
from textbrewer.distillers._protocol import DistillerAttributes
from textbrewer.distillers._teachers import (
    MEAN_LOGITS,
    TeacherCombination,
    check_match_teachers,
    combined_kd_parts,
)
from textbrewer.distillers.base import AbstractDistiller, _check_module, _checked_adaptor
from textbrewer.training.arguments import MULTI_TASK, TrainCall, check_postprocessors
from textbrewer.training.plans import StepPlan, TaskBatch, TaskSampler

logger = logging.getLogger(__name__)


class MultiTaskDistiller(
    MatchingHooks, DistillerAttributes, UsesDistillationTerms, AbstractDistiller
):
    """Distils several single-task teachers into one student, sampling a task per micro-batch.

    Training is by steps only. Before each micro-batch one task is drawn with
    ``numpy.random.choice(task_names, p=weights)``, ``weights[k] = n_k**tau / sum_j n_j**tau``
    (``n`` = ``len(dataloader)``; uniform, ``p=None``, if a dataloader has no length), and that
    task's dataloader (cycled) supplies the batch. Intermediate matches work as in
    ``GeneralDistiller``; ``is_caching_logits`` is ignored with a warning.

    A task may have several teachers: a list in ``model_T`` (with one adaptor for all of them or
    a list in ``adaptor_T``). Their KD terms are combined as in ``MultiTeacherDistiller``
    (``combine_teachers``, ``teacher_weights[task]``), and a match's ``teacher`` index counts in
    the task's list (it must exist in every task; a task with one teacher accepts 0 or none).

    ``train(optimizer, scheduler, dataloaders, num_steps, tau=1, callback=None,
    batch_postprocessors=None, **args)``, or in TextBrewer 0.2.x order ``train(optimizer,
    dataloaders, num_steps, scheduler_class=..., scheduler_args=..., ...)``.

    Args:
        train_config: training settings (``ckpt_steps`` required).
        distill_config: distillation settings.
        model_T: task name -> teacher, or a list of teachers.
        model_S: the student.
        adaptor_T: task name -> teacher adaptor, or a list with one per teacher of that task.
        adaptor_S: task name -> student adaptor.
        teacher_weights: ``None``, or task name -> one non-negative weight per teacher of that
            task (normalised to sum to 1); a task left out has equal weights.
        combine_teachers: ``'mean_logits'`` (default) or ``'mean_losses'``, for every task with
            several teachers.

    Example:
        >>> teachers = {"a": torch.nn.Linear(4, 3), "b": torch.nn.Linear(4, 2)}
        >>> adaptor = lambda batch, outputs: {"logits": outputs}
        >>> distiller = MultiTaskDistiller(
        ...     TrainingConfig(device="cpu", output_dir=tmp_dir, ckpt_steps=2),
        ...     DistillationConfig(), teachers, torch.nn.Linear(4, 3),
        ...     {"a": adaptor, "b": adaptor},
        ...     {"a": adaptor, "b": lambda b, o: {"logits": o[:, :2]}})
        >>> sorted(distiller.model_T)
        ['a', 'b']
    """

    _call_style = MULTI_TASK

    def __init__(
        self,
        train_config: TrainingConfig,
        distill_config: DistillationConfig,
        model_T: dict[str, nn.Module],
        model_S: nn.Module,
        adaptor_T: dict[str, Any],
        adaptor_S: dict[str, Any],
        *,
        teacher_weights: dict[str, Sequence[float]] | None = None,
        combine_teachers: str = MEAN_LOGITS,
    ) -> None:
        for name, value in (
            ("model_T", model_T),
            ("adaptor_T", adaptor_T),
            ("adaptor_S", adaptor_S),
        ):
            if not isinstance(value, dict) or not value:
                raise TypeError(f"`{name}` must be a non-empty dict keyed by task name")
        _check_same_tasks({"model_T": model_T, "adaptor_T": adaptor_T, "adaptor_S": adaptor_S})
        teachers_of = {task: _task_teachers(task, model_T[task]) for task in model_T}
        adaptors_of = {
            task: _task_adaptors(task, adaptor_T[task], len(teachers_of[task])) for task in model_T
        }
        for task in model_T:
            _checked_adaptor(f"adaptor_S[{task!r}]", adaptor_S[task])
        self._combinations = _task_combinations(teacher_weights, combine_teachers, teachers_of)
        super().__init__(train_config, distill_config, model_S, adaptor_S)
        self.terms = DistillationTerms(distill_config)
        # A task's teachers stay as given (a module, or a list of modules), on the device.
        self.model_T = {task: _to_device(model_T[task], self.device) for task in model_T}
        self._teachers_of = {task: _task_teachers(task, self.model_T[task]) for task in model_T}
        self._adaptors_of = adaptors_of
        self.adaptor_T = adaptor_T
        self.matches = MatchComputer(distill_config.intermediate_matches or [], None, self.device)
        for task, teachers in self._teachers_of.items():
            check_match_teachers(
                self.matches.matches,
                [],
                teachers,
                f"MultiTaskDistiller task {task!r}",
                f"model_T[{task!r}]",
            )
        if distill_config.is_caching_logits:
            logger.warning("MultiTaskDistiller ignores is_caching_logits=True (it trains by steps)")

    @property
    def tasks(self) -> list[str]:
        """The task names, in the order of ``model_T``."""
        return list(self.model_T)

    def teachers(self) -> list[nn.Module]:
        """The teachers of every task."""
        return [teacher for teachers in self._teachers_of.values() for teacher in teachers]

    def train_on_batch(self, batch: Any, args: dict[str, Any]) -> tuple[torch.Tensor, LossParts]:
        """The forward template of ``AbstractDistiller``, with the batch's task for the loss."""
        results_S, results_T = self.adapted_outputs(batch, args)
        with torch.autocast(self.device.type, enabled=False):  # losses in float32, as the base
            return self.compute_loss(results_S, results_T, task=batch.task)

    def compute_loss(
        self,
        results_S: AdaptorResult,
        results_T: AdaptorResult | list[AdaptorResult],
        task: str | None = None,
    ) -> tuple[torch.Tensor, LossParts]:
        """KD and hard-label terms, then every match, for one task's teacher(s).

        Args:
            results_S: the student adaptor's result.
            results_T: the teacher adaptor's result, or a list with one per teacher of a task
                with several.
            task: the task, which names the ``teacher_weights`` of a list of results.
        """
        if isinstance(results_T, list):
            if task not in self._combinations:
                raise KeyError(
                    f"`task`={task!r}: a list of teacher results is combined with a task's "
                    f"teacher weights; give one of {sorted(self._combinations)}"
                )
            parts = combined_kd_parts(self.terms, self._combinations[task], results_S, results_T)
        else:
            parts = self.terms.parts(results_S, results_T)
        parts.extend(self.matches(results_S, results_T))
        return combine_parts(parts)

    def _route(self, batch: Any) -> Route:
        if not isinstance(batch, TaskBatch):
            raise TypeError(
                "MultiTaskDistiller.train_on_batch takes a TaskBatch(task, batch), got "
                f"{type(batch).__name__}"
            )
        task = batch.task
        several = isinstance(self.model_T[task], list)
        return Route(
            batch.batch,
            self._teachers_of[task],
            self._adaptors_of[task],
            self.adaptor_S[task],
            several=several,
            names_T=[
                f"adaptor_T[{task!r}]" + (f"[{i}]" if several else "")
                for i in range(len(self._teachers_of[task]))
            ],
            name_S=f"adaptor_S[{task!r}]",
        )

    def _build_plan(self, call: TrainCall) -> StepPlan:
        if not isinstance(call.data, dict) or not call.data:
            raise TypeError("`dataloaders` must be a non-empty dict: task name -> dataloader")
        _check_same_tasks({"model_T": self.model_T, "dataloaders": call.data})
        postprocessors = call.batch_postprocessor
        check_postprocessors(postprocessors, list(self.model_T))
        sampler = TaskSampler(call.data, call.tau, postprocessors, self._keeps_rng)
        return self._step_plan(call, sampler)


def _check_same_tasks(named: dict[str, dict]) -> None:
    (first_name, first), *others = named.items()
    for name, value in others:
        if set(value) != set(first):
            raise KeyError(
                f"task names differ: `{first_name}` has {sorted(first)}, `{name}` has "
                f"{sorted(value)}; every dict must be keyed by the same tasks"
            )


def _task_teachers(task: str, teachers: Any) -> list[nn.Module]:
    if isinstance(teachers, (list, tuple)):
        if not teachers:
            raise ValueError(f"`model_T[{task!r}]` is an empty list; give at least one teacher")
        for index, teacher in enumerate(teachers):
            _check_module(f"model_T[{task!r}][{index}]", teacher)
        return list(teachers)
    _check_module(f"model_T[{task!r}]", teachers)
    return [teachers]


def _task_adaptors(task: str, adaptors: Any, count: int) -> list[Any]:
    if not isinstance(adaptors, (list, tuple)):
        return [_checked_adaptor(f"adaptor_T[{task!r}]", adaptors)] * count
    if len(adaptors) != count:
        raise ValueError(
            f"`adaptor_T[{task!r}]` has {len(adaptors)} adaptors for {count} teacher(s); give "
            "one adaptor for all of the task's teachers or one per teacher"
        )
    return [
        _checked_adaptor(f"adaptor_T[{task!r}][{index}]", adaptor)
        for index, adaptor in enumerate(adaptors)
    ]


def _task_combinations(
    weights: Any, mode: str, teachers_of: dict[str, list[nn.Module]]
) -> dict[str, TeacherCombination]:
    if weights is not None and not isinstance(weights, dict):
        raise TypeError(
            f"`teacher_weights`={weights!r} must be a dict: task name -> one weight per teacher "
            "of that task"
        )
    weights = weights or {}
    unknown = sorted(set(weights) - set(teachers_of))
    if unknown:
        raise KeyError(
            f"`teacher_weights` has task(s) {unknown} not in model_T (tasks: {sorted(teachers_of)})"
        )
    return {
        task: TeacherCombination(
            mode, weights.get(task), len(teachers), f"teacher_weights[{task!r}]"
        )
        for task, teachers in teachers_of.items()
    }


def _to_device(teachers: Any, device: torch.device) -> Any:
    if isinstance(teachers, (list, tuple)):
        return [teacher.to(device) for teacher in teachers]
    return teachers.to(device)
