"""Forward conventions: device moves, teacher/student sub-batches, model calls, adaptor results."""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Callable, TypedDict, Union

import torch
from torch import nn

from textbrewer import presets, sparse_kd
from textbrewer.training.call_errors import add_note, describe_value, is_signature_mismatch

logger = logging.getLogger(__name__)

_LIST_KEYS = ("logits", "logits_mask", "labels", "losses", sparse_kd.TOPK_INDICES_KEY)
_NONE_MEANS_ABSENT = ("labels", "logits_mask", "inputs_mask")


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
    # Sequences before mappings: the Mapping check is an ABC check, slower per call, and the two
    # never overlap.
    if isinstance(batch, (list, tuple)):
        if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
            return type(batch)(*(move_to_device(value, device) for value in batch))
        return type(batch)(move_to_device(value, device) for value in batch)
    if isinstance(batch, Mapping) and callable(getattr(batch, "to", None)):
        # e.g. a Hugging Face BatchEncoding: its own .to() keeps the tokenizer's metadata.
        return batch.to(device)
    if isinstance(batch, Mapping):
        return type(batch)({key: move_to_device(value, device) for key, value in batch.items()})
    return batch


def split_batch(batch: Any) -> tuple[Any, Any, Any]:
    """Returns ``(teacher_batch, student_batch, teacher_cache)``.

    A dict with keys ``'teacher'`` and ``'student'`` feeds each model its own sub-batch, and its
    optional ``'teacher_cache'`` replaces the teacher's outputs; any other batch feeds both
    (``teacher_cache`` is then ``None``).
    """
    if isinstance(batch, (list, tuple)):  # the common case, without the Mapping ABC check
        return batch, batch, None
    if isinstance(batch, Mapping) and "teacher" in batch and "student" in batch:
        return batch["teacher"], batch["student"], batch.get("teacher_cache")
    return batch, batch, None


class AdaptedOutputs(dict):
    """Teacher outputs that are already an adaptor's result (e.g. stored on disk).

    A batch's ``'teacher_cache'`` holding one of these (or, with several teachers, a list of them)
    is used as the teacher adaptor's result: ``adaptor_T`` is not called on it.
    """


def teacher_forward(model: Callable[..., Any], batch: Any, args: dict[str, Any]) -> Any:
    """Runs a teacher on ``batch`` without building a graph."""
    # no_grad rather than inference_mode: the losses save the teacher's outputs for the
    # student's backward, which inference tensors do not allow.
    with torch.no_grad():
        return call_model(model, batch, args)


_TeacherModels = Union[nn.Module, Sequence[nn.Module], None]


def get_outputs_from_batch(
    batch: Any,
    device: torch.device | str,
    model_T: _TeacherModels,
    model_S: Callable[..., Any],
    args: dict[str, Any] | None = None,
    no_teacher_forward: bool = False,
) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """The forward conventions of one micro-batch, as TextBrewer 0.2.x's helper of this name.

    Splits a ``{'teacher', 'student'}`` batch, moves each part to ``device``, runs the teacher(s)
    without gradients (or takes ``batch['teacher_cache']``), then the student.

    Args:
        batch: the (post-processed) micro-batch.
        device: where tensors go.
        model_T: a teacher, a list of teachers (outputs come back as a list), or ``None``.
        model_S: the student.
        args: extra keyword arguments for every model call.
        no_teacher_forward: skip the teacher (its outputs come back as ``None``).

    Returns:
        ``((teacher_batch, outputs_T), (student_batch, outputs_S))``, the outputs exactly as the
        models returned them.
    """
    args = args or {}
    if device == "auto":  # a 0.2.x subclass passes self.t_config.device, which may say 'auto'
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if batch is None:
        raise TypeError(
            "the micro-batch is None: the data source (e.g. its collate_fn) or the "
            "batch_postprocessor produced None instead of a batch"
        )
    raw_T, raw_S, cache = split_batch(batch)
    batch_T = move_to_device(raw_T, device)
    several = isinstance(model_T, (list, tuple))
    if no_teacher_forward or model_T is None:
        outputs_T = None
    elif cache is not None:
        outputs_T = move_to_device(cache, device)
        if several and (not isinstance(outputs_T, (list, tuple)) or len(outputs_T) != len(model_T)):
            raise ValueError(
                f"batch['teacher_cache'] must be a list with one output per teacher "
                f"({len(model_T)}), got {type(cache).__name__}"
            )
    elif several:
        outputs_T = [teacher_forward(teacher, batch_T, args) for teacher in model_T]
    else:
        outputs_T = teacher_forward(model_T, batch_T, args)
    batch_S = batch_T if raw_S is raw_T else move_to_device(raw_S, device)
    outputs_S = call_model(model_S, batch_S, args)
    return (batch_T, outputs_T), (batch_S, outputs_S)


@dataclasses.dataclass
class Route:
    """Which models and adaptors one micro-batch goes through (a distiller's ``route``).

    Attributes:
        batch: the batch to feed (a task's batch for MultiTask).
        teachers: the teachers to run; empty for ``BasicTrainer``.
        adaptors_T: one adaptor per teacher.
        adaptor_S: the student's adaptor.
        several: ``compute_loss`` receives a list of teacher results, not one dict.
        names_T: how messages name each teacher adaptor.
        name_S: how messages name the student adaptor.
        cached_logits: per teacher, logits cached in memory (``is_caching_logits``): the
            teachers do not run and these become their results.
    """

    batch: Any
    teachers: Sequence[nn.Module]
    adaptors_T: Sequence[Callable[..., Any]]
    adaptor_S: Callable[..., Any]
    several: bool = False
    names_T: Sequence[str] = ("adaptor_T",)
    name_S: str = "adaptor_S"
    cached_logits: list[list[torch.Tensor]] | None = None


def cached_logits_results(
    cached_logits: list[list[torch.Tensor]], results_S: AdaptorResult, device: torch.device
) -> list[AdaptorResult]:
    """Teacher results from cached logits; the student's ``logits_mask`` selects them too."""
    results = []
    for logits in cached_logits:
        result: AdaptorResult = {"logits": [t.to(device, non_blocking=True) for t in logits]}
        if "logits_mask" in results_S:
            result["logits_mask"] = results_S["logits_mask"]
        results.append(result)
    return results


@functools.cache
def teacher_adaptor_names(count: int) -> tuple[str, ...]:
    """How messages name ``count`` teacher adaptors: ``adaptor_T``, or ``adaptor_T[i]`` each."""
    if count > 1:
        return tuple(f"adaptor_T[{index}]" for index in range(count))
    return ("adaptor_T",)


def call_model(model: Callable[..., Any], batch: Any, args: dict[str, Any]) -> Any:
    """Calls ``model(**batch, **args)`` for a dict batch and ``model(*batch, **args)`` otherwise.

    Raises:
        TypeError: the model does not take the batch's keys or items (or ``args``); the
            message says how the batch is passed and what to change.
    """
    try:
        if isinstance(batch, (list, tuple)):  # before the slower Mapping ABC check
            return model(*batch, **args)
        if isinstance(batch, Mapping):
            return model(**batch, **args)
        return model(batch, **args)
    except TypeError as error:
        if not is_signature_mismatch(error):
            raise
        raise TypeError(
            f"calling {type(model).__name__} on the batch failed: {error}. A dict batch is passed "
            "as model(**batch, **args) (each key a keyword argument), a tuple or list as "
            f"model(*batch, **args); this batch is {describe_value(batch)}, and `args` (the "
            f"extra keywords of train()) are {sorted(args)}. Drop or rename what the model's "
            "forward does not take (e.g. in a batch_postprocessor), or give each model its own "
            "inputs with a {'teacher': ..., 'student': ...} batch"
            + (
                "; `args` reach every model, so a flag only one model takes belongs in that "
                "model's config (e.g. teacher.config.output_hidden_states = True)"
                if args
                else ""
            )
        ) from error


def call_adaptor(adaptor: Callable[..., Any], batch: Any, outputs: Any, who: str) -> Any:
    """``adaptor(batch, outputs)``; an error says which adaptor failed and what it was given.

    Raises:
        TypeError: the adaptor does not take ``(batch, model_outputs)``.
    """
    try:
        return adaptor(batch, outputs)
    except Exception as error:
        if is_signature_mismatch(error):
            raise TypeError(
                f"{who} is called as {who}(batch, model_outputs), with two arguments, and "
                f"failed: {error}"
            ) from error
        add_note(
            error,
            f"(raised in {who}(batch, model_outputs); model_outputs is "
            f"{describe_value(outputs)}, batch is {describe_value(batch)})",
        )
        raise


class AdaptorChecker:
    """Checks and normalises adaptor results; warns once per unknown key."""

    def __init__(self) -> None:
        self._warned: set[tuple[str, str]] = set()
        self._checked_keys: set[tuple[str, tuple[Any, ...]]] = set()

    def __call__(self, result: Any, who: str) -> AdaptorResult:
        """Returns ``result`` as a dict with single tensors under list keys wrapped in a list.

        Args:
            result: what the adaptor returned.
            who: the adaptor's name for messages, e.g. ``"adaptor_S"``.

        Raises:
            TypeError: the result is not a dict, or a list key holds something else.
        """
        if not isinstance(result, dict) and not isinstance(result, Mapping):
            raise TypeError(
                f"{who} must return a dict with keys among {presets.ADAPTOR_KEYS}, "
                f"got {type(result).__name__}"
            )
        # `labels`, `logits_mask` or `inputs_mask` set to None mean "none": TextBrewer 0.2.x
        # trained on such results (e.g. labels=None without probability_shift). A None where
        # something is computed from it (`logits`, `losses`, features) stays an error below.
        normalised = {
            key: value
            for key, value in result.items()
            if value is not None or key not in _NONE_MEANS_ABSENT
        }
        for key in _LIST_KEYS:
            value = normalised.get(key)
            if isinstance(value, torch.Tensor):  # the usual single tensor, without a call
                normalised[key] = [value]
            elif value is not None or key in normalised:
                normalised[key] = _as_tensor_list(value, who, key)
        keys = (who, tuple(normalised))
        if keys not in self._checked_keys:  # an adaptor returns the same keys step after step
            self._warn_unknown(normalised, who)
            self._checked_keys.add(keys)
        return normalised

    def _warn_unknown(self, result: dict, who: str) -> None:
        known = set(presets.ADAPTOR_KEYS) | set(presets.FEATURES) | {sparse_kd.TOPK_INDICES_KEY}
        for key in result:
            if key not in known and (who, key) not in self._warned:
                self._warned.add((who, key))
                logger.warning(
                    "%s returned the key %r, which no distiller reads (known: %s); it is ignored",
                    who,
                    key,
                    ", ".join(sorted(known)),
                )


_NONE_HINTS = {
    "losses": "a Hugging Face model returns `loss` only when the batch holds `labels`",
    "logits": "the model returned no logits here",
}


def _as_tensor_list(value: Any, who: str, key: str) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if value is None:
        raise TypeError(
            f"{who}: `{key}` is None ({_NONE_HINTS.get(key, 'the model returned none')}); "
            f"return a tensor, or leave the key out when there is none"
        )
    if isinstance(value, (list, tuple)) and all(isinstance(v, torch.Tensor) for v in value):
        return list(value)
    raise TypeError(
        f"{who}: `{key}` must be a tensor or a list/tuple of tensors, got {type(value).__name__}"
    )
