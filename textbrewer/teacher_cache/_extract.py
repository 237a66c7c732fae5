"""From one batch's adapted teacher result to the per-example arrays a cache stores."""

from __future__ import annotations

from typing import Any

import torch

from textbrewer.sparse_kd import TOPK_INDICES_KEY
from textbrewer.teacher_cache._storage import array_name, length_axes


def stored_arrays(
    result: dict[str, Any],
    teacher: int,
    layers: dict[str, list[int]],
    topk: int | None,
    dtype: torch.dtype | None,
    examples: int,
) -> tuple[dict[str, tuple[torch.Tensor, dict]], dict[str, int]]:
    """The arrays to store from one teacher's adapted result, and its feature-list lengths.

    Stored: every ``logits`` tensor (or its top-k values and classes), every ``logits_mask``,
    ``inputs_mask``, and the ``hidden``/``attention`` layers in ``layers``.

    Args:
        result: the checked adaptor result of a batch of ``examples`` examples.
        teacher: the teacher's index (it prefixes the names).
        layers: ``{'hidden': [...], 'attention': [...]}`` to store.
        topk: keep the ``topk`` largest logits per row (``None``: all).
        dtype: floating dtype to store features in (``None``: as computed).
        examples: the batch's number of examples (every stored tensor's first dimension).

    Returns:
        ``({name: (tensor, info)}, {'t0.hidden': list length, ...})``; ``info`` holds the
        adaptor key, the position, the per-example length axes and whether it is top-k.
    """
    collector = _Collector(teacher, dtype, examples)
    for position, logits in enumerate(result.get("logits", [])):
        collector.add_logits(position, logits, topk)
    for position, mask in enumerate(result.get("logits_mask", [])):
        collector.add("logits_mask", position, mask, f"adaptor_T logits_mask[{position}]")
    if result.get("inputs_mask") is not None:
        collector.add("inputs_mask", None, result["inputs_mask"], "adaptor_T inputs_mask")
    counts = {}
    for feature, wanted in layers.items():
        if wanted:
            counts[array_name(teacher, feature)] = collector.add_layers(result, feature, wanted)
    return collector.arrays, counts


class _Collector:
    """Checks and gathers the tensors of one teacher's result under their array names."""

    def __init__(self, teacher: int, dtype: torch.dtype | None, examples: int) -> None:
        self.teacher, self.dtype, self.examples = teacher, dtype, examples
        self.arrays: dict[str, tuple[torch.Tensor, dict]] = {}

    def add(self, key: str, position: int | None, tensor: Any, source: str) -> None:
        if not isinstance(tensor, torch.Tensor) or tensor.dim() == 0:
            raise TypeError(f"{source} must be a tensor with a batch dimension, got {tensor!r}")
        if tensor.shape[0] != self.examples:
            raise ValueError(
                f"{source} has shape {tuple(tensor.shape)}, but the batch has {self.examples} "
                "examples: a teacher cache stores one row per example, so every stored tensor "
                "must have the batch as its first dimension"
            )
        if self.dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(self.dtype)
        info = {"key": key, "position": position, "axes": length_axes(key, tensor.dim())}
        self.arrays[array_name(self.teacher, key, position)] = (tensor.detach(), info)

    def add_logits(self, position: int, logits: torch.Tensor, topk: int | None) -> None:
        source = f"adaptor_T logits[{position}]"
        if topk is None:
            self.add("logits", position, logits, source)
            return
        values, classes = logits.topk(min(topk, logits.shape[-1]), dim=-1)
        self.add("logits", position, values, source)
        small = logits.shape[-1] <= torch.iinfo(torch.int32).max
        self.add(TOPK_INDICES_KEY, position, classes.int() if small else classes, source)

    def add_layers(self, result: dict[str, Any], feature: str, wanted: list[int]) -> int:
        if feature not in result:
            raise KeyError(
                f"the intermediate matches read {feature!r} layers {wanted} of teacher "
                f"{self.teacher}, but its adaptor returned keys {sorted(result)}"
            )
        features = result[feature]
        for layer in wanted:
            if not -len(features) <= layer < len(features):
                raise IndexError(
                    f"the intermediate matches read {feature!r} layer {layer} of teacher "
                    f"{self.teacher}, out of range of its list of length {len(features)}"
                )
            source = f"adaptor_T {feature}[{layer}]"
            self.add(feature, layer % len(features), features[layer], source)
        return len(features)
