"""Reads a ``train()`` call in either of its two styles into one ``TrainCall``.

The documented style is ``train(optimizer, scheduler, dataloader, num_epochs, num_steps=None,
callback=None, batch_postprocessor=None, **args)``. TextBrewer 0.2.x scripts call
``train(optimizer, dataloader, num_epochs, scheduler_class=None, scheduler_args=None,
scheduler=None, max_grad_norm=-1.0, num_steps=None, callback=None, batch_postprocessor=None,
**args)``. The style is told apart by the second positional argument: an iterable data source
means 0.2.x order, anything else (an LR scheduler or ``None``) the documented order.
"""

from __future__ import annotations

import dataclasses
import logging
import numbers
from collections.abc import Mapping
from typing import Any, Callable

import torch

from textbrewer._compat import warn_user
from textbrewer._validation import plain_number

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CallStyle:
    """The positional orders of one distiller's ``train()``."""

    data_name: str
    documented: tuple[str, ...]
    legacy: tuple[str, ...]
    options: tuple[str, ...]


def _call_style(data_name: str, documented: tuple[str, ...], legacy: tuple[str, ...]) -> CallStyle:
    # Every name either order can take by position is also a keyword, and so is resume_from.
    options = tuple(dict.fromkeys((*documented, *legacy, "resume_from")))
    return CallStyle(data_name, documented, legacy, options)


SINGLE_SOURCE = _call_style(
    "dataloader",
    documented=(
        "scheduler",
        "dataloader",
        "num_epochs",
        "num_steps",
        "callback",
        "batch_postprocessor",
    ),
    legacy=(
        "dataloader",
        "num_epochs",
        "scheduler_class",
        "scheduler_args",
        "scheduler",
        "max_grad_norm",
        "num_steps",
        "callback",
        "batch_postprocessor",
    ),
)

MULTI_TASK = _call_style(
    "dataloaders",
    documented=("scheduler", "dataloaders", "num_steps", "tau", "callback", "batch_postprocessors"),
    legacy=(
        "dataloaders",
        "num_steps",
        "scheduler_class",
        "scheduler_args",
        "scheduler",
        "max_grad_norm",
        "tau",
        "callback",
        "batch_postprocessors",
    ),
)


@dataclasses.dataclass
class TrainCall:
    """The arguments of one ``train()`` call, whichever style it was written in."""

    optimizer: torch.optim.Optimizer
    data: Any
    scheduler: Any = None
    scheduler_class: Callable[..., Any] | None = None
    scheduler_args: dict | None = None
    num_epochs: float | None = None
    num_steps: float | None = None
    callback: Callable[..., Any] | None = None
    batch_postprocessor: Any = None
    max_grad_norm: float = -1.0
    resume_from: Any = None
    tau: float = 1
    model_args: dict = dataclasses.field(default_factory=dict)


def _is_data_source(value: Any) -> bool:
    is_scheduler = hasattr(value, "step") and hasattr(value, "state_dict")
    # A map-style Dataset iterates through __getitem__ and has no __iter__: still data (and
    # then refused or warned about with a message that says to wrap it in a DataLoader).
    iterable = hasattr(value, "__iter__") or isinstance(value, torch.utils.data.Dataset)
    return value is not None and not is_scheduler and iterable


def parse_train_call(
    style: CallStyle, optimizer: Any, positional: tuple, keywords: dict[str, Any]
) -> TrainCall:
    """Maps positional and keyword arguments of ``train()`` onto a checked ``TrainCall``.

    Keywords that are not ``train()`` options are the ``**args`` passed to every model forward.

    Raises:
        TypeError: too many positionals, an argument given twice, or a wrong type.
        ValueError: a value out of range, or neither ``num_epochs`` nor ``num_steps``.
    """
    legacy = bool(positional) and _is_data_source(positional[0])
    order = style.legacy if legacy else style.documented
    if len(positional) > len(order):
        raise TypeError(
            f"train() takes at most {len(order) + 1} positional arguments in this order: "
            f"optimizer, {', '.join(order)}; got {len(positional) + 1}"
        )
    values = dict(zip(order, positional))
    for name, value in keywords.items():
        if name in values:
            raise TypeError(f"train() got `{name}` both by position and by keyword")
        values[name] = value
    model_args = {name: values.pop(name) for name in list(values) if name not in style.options}
    if style.data_name not in values:
        raise TypeError(f"train() is missing `{style.data_name}`")
    if style is MULTI_TASK:
        values["batch_postprocessor"] = values.pop("batch_postprocessors", None)
    call = TrainCall(optimizer=optimizer, data=values.pop(style.data_name), **values)
    call.model_args = model_args
    _check(call)
    return call


def _check(call: TrainCall) -> None:
    if not _is_optimizer(call.optimizer):
        raise TypeError(
            f"`optimizer`={call.optimizer!r} must be a torch.optim.Optimizer, or an object that "
            "works like one (step, zero_grad, param_groups, add_param_group), built over the "
            "student's parameters"
        )
    _check_lengths(call)
    call.num_epochs = _checked_length("num_epochs", call.num_epochs)
    call.num_steps = _checked_length("num_steps", call.num_steps)
    if call.max_grad_norm is None:  # "no clipping", like any value <= 0
        call.max_grad_norm = -1.0
    call.max_grad_norm = plain_number(call.max_grad_norm)
    if isinstance(call.max_grad_norm, bool) or not isinstance(call.max_grad_norm, numbers.Real):
        raise TypeError(f"`max_grad_norm`={call.max_grad_norm!r} must be a number (<= 0: no clip)")
    if call.callback is not None and not callable(call.callback):
        raise TypeError(f"`callback`={call.callback!r} must be callable(model=..., step=...)")
    if call.scheduler_class is not None and not callable(call.scheduler_class):
        built = ""
        if hasattr(call.scheduler_class, "step"):
            built = " (this is a built scheduler: pass it as scheduler=...)"
        raise TypeError(
            f"`scheduler_class`={call.scheduler_class!r} must be callable as "
            f"scheduler_class(optimizer=..., **scheduler_args){built}"
        )
    if call.scheduler_args is not None and not isinstance(call.scheduler_args, Mapping):
        raise TypeError(f"`scheduler_args`={call.scheduler_args!r} must be a dict of keywords")
    # A class or factory function in this slot gets its own message (call_checks).
    if (
        call.scheduler is not None
        and not hasattr(call.scheduler, "step")
        and not callable(call.scheduler)
    ):
        raise TypeError(f"`scheduler`={call.scheduler!r} must be an LR scheduler (with .step())")
    if isinstance(call.tau, bool) or not isinstance(call.tau, numbers.Real):
        raise TypeError(f"`tau`={call.tau!r} must be a number")


def _is_optimizer(value: Any) -> bool:
    # TextBrewer 0.2.x only called these; optimizers from other libraries that are not
    # torch.optim.Optimizer subclasses but behave like one keep working.
    if isinstance(value, torch.optim.Optimizer):
        return True
    needed = ("step", "zero_grad", "add_param_group")
    return all(callable(getattr(value, name, None)) for name in needed) and hasattr(
        value, "param_groups"
    )


def _check_lengths(call: TrainCall) -> None:
    if call.num_steps is None and call.num_epochs is None:
        raise ValueError(
            "train() needs `num_epochs` (epoch mode) or `num_steps` (step mode); both are None"
        )
    if call.num_steps is not None and call.num_epochs is not None:
        # TextBrewer 0.2.x documented that num_steps wins; scripts pass both, so do not raise.
        logger.warning(
            "train() got num_epochs=%r and num_steps=%r: training by num_steps, num_epochs is "
            "ignored",
            call.num_epochs,
            call.num_steps,
        )
        call.num_epochs = None


def _checked_length(name: str, value: Any) -> Any:
    """``num_epochs``/``num_steps``: a number > 0; an integral float becomes an int.

    TextBrewer 0.2.x scripts read these with argparse ``type=float`` and 0.2.x used them in
    ``range(int(...))`` and in arithmetic, so floats are accepted. A non-integral float keeps its
    value (the weight schedules see it, SPEC §4) and is warned about.
    """
    if value is None:
        return None
    value = plain_number(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}`={value!r} must be a number (an int, or a float such as 2.0)")
    if not value > 0:
        raise ValueError(f"`{name}`={value!r} must be > 0")
    if value == int(value):
        return int(value)
    unit = "epochs" if name == "num_epochs" else "optimizer steps"
    what = (
        "the weight schedules count steps_per_epoch * num_epochs steps, and no epoch counts as "
        "the last one for ckpt_epoch_frequency"
        if name == "num_epochs"
        else "the weight schedules count num_steps steps, and no final checkpoint is saved "
        "unless a multiple of ckpt_steps falls on the last step"
    )
    warn_user(
        f"`{name}`={value!r} is not a whole number: as TextBrewer 0.2.x did, training runs "
        f"int({name})={int(value)} {unit}; {what}"
    )
    return value


def check_postprocessors(value: Any, tasks: list[str] | None = None) -> None:
    """Checks ``batch_postprocessor`` (one callable), or MultiTask's ``batch_postprocessors``.

    Args:
        value: what the call passed (``None`` means none).
        tasks: the task names of a multi-task distiller, whose ``batch_postprocessors`` is a dict
            task name -> callable; ``None`` for the single-source distillers.

    Raises:
        TypeError: not callable, or not a dict of callables.
        KeyError: a task name the distiller does not have.
    """
    if value is None:
        return
    if tasks is None:
        if not callable(value):
            raise TypeError(f"`batch_postprocessor`={value!r} must be callable(batch) -> batch")
        return
    if not isinstance(value, dict):
        raise TypeError(
            f"`batch_postprocessors`={value!r} must be a dict: task name -> callable(batch)"
        )
    unknown = sorted(set(value) - set(tasks))
    if unknown:
        raise KeyError(
            f"`batch_postprocessors` has task(s) {unknown} not in model_T (tasks: {sorted(tasks)})"
        )
    for task, postprocessor in value.items():
        if postprocessor is not None and not callable(postprocessor):
            raise TypeError(
                f"`batch_postprocessors[{task!r}]`={postprocessor!r} must be callable(batch) -> "
                "batch"
            )
