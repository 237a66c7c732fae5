"""Checks of a ``train()`` call that point at the real mistake, before anything trains.

Each check here replaces an error that would come later from deep inside torch or a model (or
no error at all: a run that trains nothing) with one that names the argument, the value and
what to pass instead. None rejects an input that TextBrewer 0.2.x trained on correctly.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from textbrewer.training.arguments import TrainCall
from textbrewer.training.call_errors import is_signature_mismatch

logger = logging.getLogger(__name__)


def check_call(
    call: TrainCall, data_name: str, student: nn.Module, teachers: list, extras: list | None = None
) -> None:
    """Checks the data sources, the scheduler slot and the optimizer; guards post-processors.

    Args:
        call: the parsed call; its ``batch_postprocessor`` (one callable or a dict of them) is
            replaced by a wrapper that refuses a ``None`` result.
        data_name: ``'dataloader'`` or ``'dataloaders'`` (MultiTask, a dict of sources).
        student: the student, unwrapped.
        teachers: the teachers, to name them when the optimizer holds theirs.
        extras: the distiller's other trainable modules (projections).
    """
    if data_name == "dataloaders" and isinstance(call.data, Mapping):
        for task, data in call.data.items():
            check_data_source(data, f"dataloaders[{task!r}]")
    elif data_name != "dataloaders":
        check_data_source(call.data, data_name)
    check_scheduler_slot(call.scheduler, call.optimizer)
    check_optimizer_trains_student(call.optimizer, student, teachers, extras or [])
    call.batch_postprocessor = guarded_postprocessors(call.batch_postprocessor)


def check_data_source(data: Any, name: str) -> None:
    """Refuses what is not a source of batches: ``None``, a tensor, a dict, a per-example dataset.

    A ``Dataset`` yields single examples, not batches. A ``TensorDataset``, a Hugging Face
    ``datasets.Dataset`` or a dataset whose first item holds a scalar (one example's label) is
    refused; another map-style ``Dataset`` is used as a sequence of batches (as TextBrewer 0.2.x
    did) with a warning, since it may well hold ready-made batches.

    Raises:
        TypeError: naming ``name``, the type, and ``DataLoader(dataset, batch_size=...)``.
    """
    fix = "wrap it: DataLoader(dataset, batch_size=..., collate_fn=...)"
    if data is None:
        raise TypeError(
            f"`{name}` is None: pass the DataLoader to train() (documented order: "
            "train(optimizer, scheduler, dataloader, num_epochs); TextBrewer 0.2.x order: "
            "train(optimizer, dataloader, num_epochs, ...))"
        )
    if isinstance(data, (str, bytes)):
        raise TypeError(
            f"`{name}`={data!r} is a {type(data).__name__}, not a source of batches: load the "
            "data and pass a DataLoader over it"
        )
    if isinstance(data, torch.Tensor):
        raise TypeError(
            f"`{name}` is a tensor of shape {tuple(data.shape)}, not a source of batches; "
            "wrap your tensors: DataLoader(TensorDataset(input_ids, attention_mask, labels), "
            "batch_size=...)"
        )
    if isinstance(data, Mapping):
        raise TypeError(
            f"`{name}` is a {type(data).__name__} with keys {sorted(map(str, data))[:6]}: "
            "iterating it gives its keys, not batches. Pass an iterable of batches (a "
            "DataLoader, or a list of batch dicts)"
        )
    if isinstance(data, (DataLoader, IterableDataset)):
        return
    if _is_hf_dataset(data) or isinstance(data, torch.utils.data.TensorDataset):
        raise TypeError(
            f"`{name}` is a {type(data).__name__}, which yields single examples, not batches: {fix}"
        )
    if isinstance(data, Dataset) and _first_item_is_one_example(data):
        raise TypeError(
            f"`{name}` is a {type(data).__name__} (a Dataset), whose items are single examples "
            f"(its first holds a scalar), not batches: {fix}"
        )
    if isinstance(data, Dataset):
        logger.warning(
            "`%s` is a %s (a Dataset, not a DataLoader): each of its items is used as one "
            "batch. If its items are single examples, wrap it: DataLoader(dataset, "
            "batch_size=...)",
            name,
            type(data).__name__,
        )


def _is_hf_dataset(data: Any) -> bool:
    module = type(data).__module__ or ""
    return module.split(".")[0] == "datasets" and hasattr(data, "column_names")


def _first_item_is_one_example(dataset: Dataset) -> bool:
    try:
        if len(dataset) == 0:  # type: ignore[arg-type]
            return False
        item = dataset[0]
    except Exception:
        return False
    values = item.values() if isinstance(item, Mapping) else item
    if isinstance(values, torch.Tensor):
        return values.dim() == 0
    if isinstance(values, (list, tuple)) or isinstance(item, Mapping):
        return any(
            (isinstance(value, (int, float)) and not isinstance(value, bool))
            or (isinstance(value, torch.Tensor) and value.dim() == 0)
            for value in values
        )
    return False


def check_scheduler_slot(scheduler: Any, optimizer: Any = None) -> None:
    """Refuses a scheduler class or factory function, or one built over another optimizer.

    Raises:
        TypeError: saying to pass ``scheduler_class`` + ``scheduler_args``, or an instance.
        ValueError: the scheduler schedules another optimizer than the one passed.
    """
    if scheduler is None:
        return
    scheduled = getattr(scheduler, "optimizer", None)
    if isinstance(scheduled, torch.optim.Optimizer) and optimizer is not None:
        if scheduled is not optimizer:
            raise ValueError(
                f"`scheduler` ({type(scheduler).__name__}) was built over another optimizer "
                f"than the `optimizer` passed to train(), so it would change the learning rate "
                "of an optimizer that is never stepped; build it over the same one, or pass "
                "scheduler_class/scheduler_args and let train() build it"
            )
        return
    if isinstance(scheduler, type) or (callable(scheduler) and not hasattr(scheduler, "step")):
        name = getattr(scheduler, "__name__", repr(scheduler))
        raise TypeError(
            f"`scheduler`={name} is a {'class' if isinstance(scheduler, type) else 'function'}, "
            "not an LR scheduler built over the optimizer. Pass "
            f"scheduler_class={name}, scheduler_args={{...}} (train() builds it as "
            f"{name}(optimizer=optimizer, **scheduler_args), after adding the projection "
            f"groups), or a built instance: scheduler={name}(optimizer, ...)"
        )


def check_optimizer_trains_student(
    optimizer: torch.optim.Optimizer, student: nn.Module, teachers: list, extras: list
) -> None:
    """Refuses an optimizer that holds none of the student's trainable parameters.

    Such a run would train nothing (or, with the teacher's parameters, nothing either: they get
    no gradient). A frozen student is accepted while something else trains (projections).

    Raises:
        ValueError: naming whose parameters the optimizer holds, and the fix; or the student
            being a teacher too; or nothing trainable at all.
    """
    if any(teacher is student for teacher in teachers):
        raise ValueError(
            "`model_S` is also a teacher (`model_T` is the same module): train() keeps the "
            "teachers in eval mode, so the student would train without dropout, against its own "
            "outputs. Distil into a separate model, e.g. copy.deepcopy(teacher) for "
            "self-distillation"
        )
    trainable = {id(p) for p in student.parameters() if p.requires_grad}
    if not trainable:
        if not any(p.requires_grad for module in extras for p in module.parameters()):
            raise ValueError(
                f"the student ({type(student).__name__}) has no parameter with "
                "requires_grad=True and nothing else is trained: unfreeze what should train, "
                "e.g. for p in model_S.parameters(): p.requires_grad_(True)"
            )
        return
    held = [p for group in optimizer.param_groups for p in group["params"]]
    if any(id(p) in trainable for p in held):
        return
    teacher_ids = {id(p) for teacher in teachers for p in teacher.parameters()}
    if held and all(id(p) in teacher_ids for p in held):
        whose = "the teacher's parameters"
    elif held:
        whose = (
            f"{sum(p.numel() for p in held)} parameter values of another model (a copy of "
            "the student made before the distiller was built?)"
        )
    else:
        whose = "no parameters"
    raise ValueError(
        f"`optimizer` ({type(optimizer).__name__}) holds {whose} and none of the student's "
        "trainable parameters, so training would change nothing; build it over the student: "
        f"{type(optimizer).__name__}(model_S.parameters(), ...)"
    )


class _CheckedPostprocessor:
    """Calls a ``batch_postprocessor`` and refuses a ``None`` result."""

    def __init__(self, postprocessor: Any, name: str) -> None:
        self.postprocessor = postprocessor
        self.name = name

    def __call__(self, batch: Any) -> Any:
        try:
            result = self.postprocessor(batch)
        except TypeError as error:
            if is_signature_mismatch(error):
                raise TypeError(
                    f"`{self.name}` is called with one argument, the batch read from the data, "
                    f"and failed: {error}"
                ) from error
            raise
        if result is None:
            raise TypeError(
                f"`{self.name}` returned None for a batch of type {type(batch).__name__}; it "
                "must return the batch to train on (one that changes the batch in place still "
                "needs `return batch`)"
            )
        return result


def guarded_postprocessors(value: Any) -> Any:
    """``value`` (a callable, a dict task -> callable, or ``None``) with ``None`` results refused.

    Anything else is returned unchanged, for the argument checks to report.
    """
    if callable(value) and not isinstance(value, _CheckedPostprocessor):
        return _CheckedPostprocessor(value, "batch_postprocessor")
    if isinstance(value, dict):
        return {
            task: _CheckedPostprocessor(fn, f"batch_postprocessors[{task!r}]")
            if callable(fn) and not isinstance(fn, _CheckedPostprocessor)
            else fn
            for task, fn in value.items()
        }
    return value


def build_scheduler(scheduler_class: Any, optimizer: Any, scheduler_args: dict | None) -> Any:
    """``scheduler_class(optimizer=optimizer, **scheduler_args)``, with a clear error.

    Raises:
        TypeError: the class (or factory) does not take these arguments by these names.
    """
    try:
        return scheduler_class(optimizer=optimizer, **(scheduler_args or {}))
    except TypeError as error:
        if not is_signature_mismatch(error):
            raise
        name = getattr(scheduler_class, "__name__", repr(scheduler_class))
        raise TypeError(
            f"building the LR scheduler as {name}(optimizer=optimizer, **scheduler_args) with "
            f"scheduler_args={scheduler_args!r} failed: {error}. `scheduler_args` must hold its "
            "other arguments by name, e.g. {'num_warmup_steps': 100, 'num_training_steps': "
            "1000} for get_linear_schedule_with_warmup, {'step_size': 10} for StepLR"
        ) from error
