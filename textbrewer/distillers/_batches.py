"""Forward conventions: device moves, teacher/student sub-batches, model calls, adaptor results."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Callable, TypedDict

import torch

from textbrewer import presets

logger = logging.getLogger(__name__)

_LIST_KEYS = ("logits", "logits_mask", "labels", "losses")


class AdaptorResult(TypedDict, total=False):
    """What an adaptor returns (every key optional).

    Attributes:
        logits: list of (batch, classes) or (batch, length, classes) tensors.
        logits_mask: list of (batch, length) 0/1 masks selecting rows of 3-D logits.
        labels: list of (batch,) or (batch, length) ground-truth labels.
        losses: list of precomputed losses, each averaged (``.mean()``) and summed.
        inputs_mask: (batch, length) 0/1 mask for intermediate features.
        hidden: per-layer (batch, length, hidden) tensors, indexable by layer.
        attention: per-layer (batch, heads, length, length) or (batch, length, length) tensors.
    """

    logits: list[torch.Tensor]
    logits_mask: list[torch.Tensor]
    labels: list[torch.Tensor]
    losses: list[torch.Tensor]
    inputs_mask: torch.Tensor
    hidden: Sequence[torch.Tensor]
    attention: Sequence[torch.Tensor]


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Moves every tensor in ``batch`` (recursively through tuples, lists, dicts) to ``device``.

    Other values pass through unchanged; containers keep their type.
    """
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping) and callable(getattr(batch, "to", None)):
        # e.g. a Hugging Face BatchEncoding: its own .to() keeps the tokenizer's metadata.
        return batch.to(device)
    if isinstance(batch, Mapping):
        return type(batch)({key: move_to_device(value, device) for key, value in batch.items()})
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
        return type(batch)(*(move_to_device(value, device) for value in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(value, device) for value in batch)
    return batch


def split_batch(batch: Any) -> tuple[Any, Any, Any]:
    """Returns ``(teacher_batch, student_batch, teacher_cache)``.

    A dict with keys ``'teacher'`` and ``'student'`` feeds each model its own sub-batch, and its
    optional ``'teacher_cache'`` replaces the teacher's outputs; any other batch feeds both
    (``teacher_cache`` is then ``None``).
    """
    if isinstance(batch, Mapping) and "teacher" in batch and "student" in batch:
        return batch["teacher"], batch["student"], batch.get("teacher_cache")
    return batch, batch, None


def call_model(model: Callable[..., Any], batch: Any, args: dict[str, Any]) -> Any:
    """Calls ``model(**batch, **args)`` for a dict batch and ``model(*batch, **args)`` otherwise."""
    if isinstance(batch, Mapping):
        return model(**batch, **args)
    if isinstance(batch, (list, tuple)):
        return model(*batch, **args)
    return model(batch, **args)


class AdaptorChecker:
    """Checks and normalises adaptor results; warns once per unknown key."""

    def __init__(self) -> None:
        self._warned: set[tuple[str, str]] = set()

    def __call__(self, result: Any, who: str) -> AdaptorResult:
        """Returns ``result`` as a dict with single tensors under list keys wrapped in a list.

        Args:
            result: what the adaptor returned.
            who: the adaptor's name for messages, e.g. ``"adaptor_S"``.

        Raises:
            TypeError: the result is not a dict, or a list key holds something else.
        """
        if not isinstance(result, Mapping):
            raise TypeError(
                f"{who} must return a dict with keys among {presets.ADAPTOR_KEYS}, "
                f"got {type(result).__name__}"
            )
        normalised = dict(result)
        for key in _LIST_KEYS:
            if key in normalised:
                normalised[key] = _as_tensor_list(normalised[key], who, key)
        self._warn_unknown(normalised, who)
        return normalised

    def _warn_unknown(self, result: dict, who: str) -> None:
        known = set(presets.ADAPTOR_KEYS) | set(presets.FEATURES)
        for key in result:
            if key not in known and (who, key) not in self._warned:
                self._warned.add((who, key))
                logger.warning(
                    "%s returned the key %r, which no distiller reads (known: %s); it is ignored",
                    who,
                    key,
                    ", ".join(sorted(known)),
                )


def _as_tensor_list(value: Any, who: str, key: str) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, torch.Tensor) for v in value):
        return list(value)
    raise TypeError(
        f"{who}: `{key}` must be a tensor or a list/tuple of tensors, got {type(value).__name__}"
    )
