"""Checks of what adaptors return for intermediate matches, with messages that name the fix.

The usual mistakes with models as ``transformers`` builds them: ``hidden_states`` or
``attentions`` that are ``None`` (the model was not asked for them), an empty tuple of attentions
(SDPA attention computes no probabilities), ``last_hidden_state`` where the list of layers goes
(indexing it by layer would read batch rows), a ``ModelOutput`` or another dict where a list goes,
an additive attention mask (0 / -10000) as ``inputs_mask``, and a projection whose ``dim_in`` is
not the student's feature size. All checks but the mask's are shape and type tests on the host;
the mask's values are read once, on the first batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from textbrewer.matches import IntermediateMatch

_HF_FIELD = {"hidden": "hidden_states", "attention": "attentions"}
_HF_FLAG = {"hidden": "output_hidden_states=True", "attention": "output_attentions=True"}
_EAGER = (
    "Hugging Face models loaded with attn_implementation='sdpa' (the default) or "
    "'flash_attention_2' return no attention probabilities: load the model with "
    "attn_implementation='eager', e.g. AutoModel.from_pretrained(name, "
    "attn_implementation='eager') or BertConfig(..., attn_implementation='eager')"
)


def describe(match: IntermediateMatch, index: int) -> str:
    """``intermediate_matches[i] (feature, loss 'x', layer_S=.., layer_T=..)`` for messages."""
    return (
        f"intermediate_matches[{index}] ({match.feature}, loss {match.loss!r}, "
        f"layer_S={match.layer_S}, layer_T={match.layer_T})"
    )


def checked_layers(results: Mapping[str, Any], match: IntermediateMatch, index: int, side: str):
    """``results[match.feature]`` as something indexable by layer, or a clear error.

    Args:
        results: one adaptor's (normalised) result; it holds ``match.feature``.
        match: the match reading it.
        index: the match's position in ``intermediate_matches``.
        side: ``'S'`` or ``'T'``.

    Raises:
        ValueError: ``None``, an empty list, or a single layer where the list of layers goes.
        TypeError: a dict whose keys are not layer numbers, or a value of another type.
    """
    layers = results[match.feature]
    if type(layers) in (tuple, list) and layers and layers[0] is not None:
        return layers  # the usual per-layer list, checked without building messages every step
    feature, who = match.feature, f"adaptor_{side}"
    where = describe(match, index)
    if layers is None:
        raise ValueError(
            f"{where}: {who} returned {feature!r}=None. A Hugging Face model returns its "
            f"`{_HF_FIELD.get(feature, feature)}` only when called with "
            f"{_HF_FLAG.get(feature, 'the flag that produces it')}: pass it to "
            f"train(..., {_HF_FLAG.get(feature, '<flag>=True')}) (it reaches every forward) or "
            "set it in the model's config"
        )
    if isinstance(layers, torch.Tensor):
        _refuse_single_layer(layers, results, where, who, feature)
        return layers
    if isinstance(layers, Mapping):
        if layers and all(isinstance(key, int) for key in layers):
            return layers  # layer number -> tensor: indexing by layer works (as in 0.2.x)
        raise TypeError(
            f"{where}: {who} returned {feature!r} as a {type(layers).__name__} with keys "
            f"{list(layers)[:6]}; return a list or tuple of per-layer tensors, e.g. "
            f"outputs.{_HF_FIELD.get(feature, feature)} (a Hugging Face ModelOutput is a dict: "
            "take its field)"
        )
    if not isinstance(layers, Sequence) or isinstance(layers, (str, bytes)):
        raise TypeError(
            f"{where}: {who} returned {feature!r} as {type(layers).__name__}; return a list or "
            "tuple of per-layer tensors (or one tensor stacked over layers on dim 0)"
        )
    if len(layers) == 0 or all(layer is None for layer in layers):
        empty = "an empty sequence" if len(layers) == 0 else "a sequence of None"
        flag = _HF_FLAG.get(feature, "the flag that produces it")
        hint = _EAGER if feature == "attention" else f"Call the model with {flag}"
        raise ValueError(f"{where}: {who} returned {feature!r} as {empty}. {hint}")
    return layers


def has_layer(layers: Any, layer: int) -> bool:
    """Whether ``layers[layer]`` exists (a dict by layer number, or a sequence/stacked tensor)."""
    if type(layers) not in (tuple, list) and isinstance(layers, Mapping):
        return layer in layers
    return -len(layers) <= layer < len(layers)


def _batch_size(results: Mapping[str, Any]) -> int | None:
    mask = results.get("inputs_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() >= 1:
        return mask.shape[0]
    for key in ("logits", "labels"):
        values = results.get(key)
        if values and isinstance(values[0], torch.Tensor) and values[0].dim() >= 1:
            return values[0].shape[0]
    return None


def _refuse_single_layer(
    tensor: torch.Tensor, results: Mapping[str, Any], where: str, who: str, feature: str
) -> None:
    # A tensor stacked over layers is (layers, batch, ...); one layer is (batch, ...). Only a
    # tensor whose first dimension is the batch and whose second is not can be told apart.
    batch = _batch_size(results)
    dims = {"hidden": (3,), "attention": (3, 4)}.get(feature, ())
    if batch is None or tensor.dim() not in dims:
        return
    if tensor.shape[0] == batch and tensor.shape[1] != batch:
        field = "last_hidden_state" if feature == "hidden" else "attentions[-1]"
        raise ValueError(
            f"{where}: {who} returned {feature!r} as one tensor of shape {tuple(tensor.shape)}, "
            f"whose first dimension is the batch ({batch}): that is a single layer, and "
            "indexing it by layer would read batch rows. Return the list of every layer, e.g. "
            f"outputs.{_HF_FIELD[feature]} rather than outputs.{field} (a tensor stacked over "
            "layers, (layers, batch, ...), works too)"
        )


def check_projection_input(
    feature: torch.Tensor, dim_in: int, match: IntermediateMatch, index: int, dtype: Any
) -> None:
    """The student's feature must have ``dim_in`` features and the projection's dtype.

    Raises:
        ValueError: naming the match, ``dim_in`` and the feature's size (instead of torch's
            "mat1 and mat2 shapes cannot be multiplied"), or the two dtypes.
    """
    if feature.shape[-1] != dim_in:
        kind, _, dim_out, *_ = match.proj
        raise ValueError(
            f"{describe(match, index)}: proj {[kind, dim_in, dim_out]} takes features of size "
            f"dim_in={dim_in}, but the student's {match.feature!r} has size {feature.shape[-1]} "
            f"(shape {tuple(feature.shape)}); set 'proj': [{kind!r}, {feature.shape[-1]}, "
            f"{dim_out}]"
        )
    if dtype is not None and feature.dtype != dtype:
        raise ValueError(
            f"{describe(match, index)}: the student's {match.feature!r} is {feature.dtype} but "
            f"the projection's weights are {dtype}; train the student in float32 (use "
            "mixed_precision for lower precision), or convert the projections: "
            f"distiller.projs.to({feature.dtype})"
        )


def check_projection_output(
    projected: Any, teacher: Any, match: IntermediateMatch, index: int
) -> None:
    """A projected student feature must have the teacher's feature size (``proj[2]``).

    Raises:
        ValueError: naming the match, ``dim_out`` and the teacher's size, where the generic
            shape message would suggest adding the projection that is already there.
    """
    if match.proj is None or not isinstance(projected, torch.Tensor):
        return
    if not isinstance(teacher, torch.Tensor) or projected.shape[-1] == teacher.shape[-1]:
        return
    kind, dim_in, dim_out, *_ = match.proj
    raise ValueError(
        f"{describe(match, index)}: proj {[kind, dim_in, dim_out]} projects to "
        f"dim_out={dim_out}, but the teacher's {match.feature!r} has size {teacher.shape[-1]} "
        f"(shape {tuple(teacher.shape)}); set 'proj': [{kind!r}, {dim_in}, {teacher.shape[-1]}]"
    )


def check_inputs_mask(mask: Any, who: str = "adaptor_S") -> None:
    """An ``inputs_mask`` must hold 0/1 (or booleans); reads its values once (call it once).

    Raises:
        TypeError: not a tensor.
        ValueError: other values, e.g. an additive mask of 0 and -10000.
    """
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor):
        raise TypeError(
            f"{who} returned `inputs_mask` as {type(mask).__name__}; it must be a (batch, length) "
            "tensor of 0/1, e.g. batch['attention_mask']"
        )
    if mask.dtype == torch.bool or mask.numel() == 0:
        return
    outside = (mask != 0) & (mask != 1)
    if not bool(outside.any()):  # one read-back, on the first batch only
        return
    example = mask[outside].flatten()[0].item()
    additive = example < 0
    raise ValueError(
        f"{who} returned an `inputs_mask` with values other than 0 and 1 (e.g. {example:g})"
        + (
            ": it looks like an additive attention mask (0 to attend, a large negative number "
            "to mask), which the intermediate losses would use as weights"
            if additive
            else ""
        )
        + ". Return the 0/1 mask, 1 at real tokens: the tokenizer's batch['attention_mask'] "
        "(or (additive_mask == 0).long())"
    )


def check_mask_fits(mask: Any, feature: Any, match: IntermediateMatch, index: int) -> None:
    """The student's ``inputs_mask`` (batch, length) must fit the feature's batch and length."""
    if not isinstance(mask, torch.Tensor) or not isinstance(feature, torch.Tensor):
        return
    if mask.dim() != 2 or feature.dim() < 3:
        return
    if mask.shape[0] != feature.shape[0] or mask.shape[1] != feature.shape[-2]:
        raise ValueError(
            f"{describe(match, index)}: the student's `inputs_mask` has shape "
            f"{tuple(mask.shape)}, which does not fit the {match.feature!r} of shape "
            f"{tuple(feature.shape)} (expected ({feature.shape[0]}, {feature.shape[-2]}): batch, "
            "length); return the attention mask of the batch the student was called on"
        )
