"""``MultiTaskDistiller``: distils one teacher per task into a single multi-task student."""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from textbrewer.configurations import DistillationConfig, TrainingConfig
from textbrewer.distillers._batches import Route
from textbrewer.distillers._kd import DistillationTerms, UsesDistillationTerms
from textbrewer.distillers._matching import MatchComputer, MatchingHooks
from textbrewer.distillers.base import AbstractDistiller, _check_module, _checked_adaptor
from textbrewer.training.arguments import MULTI_TASK, TrainCall, check_postprocessors
from textbrewer.training.plans import StepPlan, TaskBatch, TaskSampler

logger = logging.getLogger(__name__)


class MultiTaskDistiller(MatchingHooks, UsesDistillationTerms, AbstractDistiller):
    """Distils several single-task teachers into one student, sampling a task per micro-batch.

    Training is by steps only. Before each micro-batch one task is drawn with
    ``numpy.random.choice(task_names, p=weights)``, ``weights[k] = n_k**tau / sum_j n_j**tau``
    (``n`` = ``len(dataloader)``; uniform, ``p=None``, if a dataloader has no length), and that
    task's dataloader (cycled) supplies the batch. Intermediate matches work as in
    ``GeneralDistiller``; ``is_caching_logits`` is ignored with a warning.

    ``train(optimizer, scheduler, dataloaders, num_steps, tau=1, callback=None,
    batch_postprocessors=None, **args)``, or in TextBrewer 0.2.x order ``train(optimizer,
    dataloaders, num_steps, scheduler_class=..., scheduler_args=..., ...)``.

    Args:
        train_config: training settings (``ckpt_steps`` required).
        distill_config: distillation settings.
        model_T: task name -> teacher.
        model_S: the student.
        adaptor_T: task name -> teacher adaptor.
        adaptor_S: task name -> student adaptor.

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
    ) -> None:
        for name, value in (
            ("model_T", model_T),
            ("adaptor_T", adaptor_T),
            ("adaptor_S", adaptor_S),
        ):
            if not isinstance(value, dict) or not value:
                raise TypeError(f"`{name}` must be a non-empty dict keyed by task name")
        _check_same_tasks({"model_T": model_T, "adaptor_T": adaptor_T, "adaptor_S": adaptor_S})
        for task in model_T:
            _check_module(f"model_T[{task!r}]", model_T[task])
            _checked_adaptor(f"adaptor_T[{task!r}]", adaptor_T[task])
            _checked_adaptor(f"adaptor_S[{task!r}]", adaptor_S[task])
        super().__init__(train_config, distill_config, model_S, adaptor_S)
        self.terms = DistillationTerms(distill_config)
        self.model_T = {task: teacher.to(self.device) for task, teacher in model_T.items()}
        self.adaptor_T = adaptor_T
        self.matches = MatchComputer(distill_config.intermediate_matches or [], None, self.device)
        if distill_config.is_caching_logits:
            logger.warning("MultiTaskDistiller ignores is_caching_logits=True (it trains by steps)")

    @property
    def tasks(self) -> list[str]:
        """The task names, in the order of ``model_T``."""
        return list(self.model_T)

    def teachers(self) -> list[nn.Module]:
        """The teachers of every task."""
        return list(self.model_T.values())

    def _route(self, batch: Any) -> Route:
        if not isinstance(batch, TaskBatch):
            raise TypeError(
                "MultiTaskDistiller.train_on_batch takes a TaskBatch(task, batch), got "
                f"{type(batch).__name__}"
            )
        task = batch.task
        return Route(
            batch.batch,
            [self.model_T[task]],
            [self.adaptor_T[task]],
            self.adaptor_S[task],
            names_T=[f"adaptor_T[{task!r}]"],
            name_S=f"adaptor_S[{task!r}]",
        )

    def _build_plan(self, call: TrainCall) -> StepPlan:
        if not isinstance(call.data, dict) or not call.data:
            raise TypeError("`dataloaders` must be a non-empty dict: task name -> dataloader")
        _check_same_tasks({"model_T": self.model_T, "dataloaders": call.data})
        postprocessors = call.batch_postprocessor
        check_postprocessors(postprocessors, list(self.model_T))
        sampler = TaskSampler(call.data, call.tau, postprocessors)
        return self._step_plan(call, sampler)


def _check_same_tasks(named: dict[str, dict]) -> None:
    (first_name, first), *others = named.items()
    for name, value in others:
        if set(value) != set(first):
            raise KeyError(
                f"task names differ: `{first_name}` has {sorted(first)}, `{name}` has "
                f"{sorted(value)}; every dict must be keyed by the same tasks"
            )
