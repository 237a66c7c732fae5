"""Intermediate-feature matches: projections, per-match losses, and hook-based custom matches.

Used by composition in ``GeneralDistiller`` and ``MultiTaskDistiller``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Callable

import torch
from torch import nn

from textbrewer import presets
from textbrewer.distillers._adaptor_checks import (
    check_inputs_mask,
    check_mask_fits,
    check_projection_input,
    check_projection_output,
    checked_layers,
    has_layer,
)
from textbrewer.distillers._batches import AdaptorResult
from textbrewer.distillers._kd import LossParts, combine_parts, to_float32
from textbrewer.distillers._subclass_projections import (
    assigned_match_projections,
    projection_groups,
    set_match_groups,
    sync_assigned_projections,
    use_match_projections,
)
from textbrewer.matches import IntermediateMatch


class ProjectionBank(nn.Module):
    """The trainable projections of the matches, applied in one call per step.

    One call per step keeps DistributedDataParallel's one-forward-per-backward contract when the
    bank is wrapped in it.
    """

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, features: list[torch.Tensor], which: list[int]) -> list[torch.Tensor]:
        """Returns ``[layers[w](x) for x, w in zip(features, which)]``."""
        return [self.layers[index](feature) for feature, index in zip(features, which)]


@dataclasses.dataclass
class CustomMatch:
    """A match between the outputs of two modules, captured with forward hooks.

    Attributes:
        module_T: a submodule of the teacher.
        module_S: a submodule of the student.
        weight: the loss weight.
        loss: ``loss(out_S, out_T, mask_S, mask_T) -> scalar``.
        proj_func: optional callable applied to the student's output (trained if a module).
        proj_group: optimizer options for ``proj_func``'s parameters (e.g. ``{'lr': 1e-3}``).
        teacher: the index in ``model_T`` of the teacher ``module_T`` belongs to (needed with
            several teachers; its adaptor's ``inputs_mask`` is the loss's ``mask_T``).
    """

    module_T: nn.Module
    module_S: nn.Module
    weight: float
    loss: Callable[..., torch.Tensor]
    proj_func: Callable[[Any], Any] | None = None
    proj_group: dict | None = None
    teacher: int | None = None
    proj_call: Callable[[Any], Any] | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def from_entry(cls, entry: Any, index: int) -> CustomMatch:
        """Accepts a dict or an object with the attributes above."""
        fields = [field.name for field in dataclasses.fields(cls) if field.name != "proj_call"]
        get = (
            entry.get
            if isinstance(entry, dict)
            else lambda key, default=None: getattr(entry, key, default)
        )
        values = {name: get(name, None) for name in fields}
        for name in ("module_T", "module_S"):
            if not isinstance(values[name], nn.Module):
                raise TypeError(f"custom_matches[{index}].{name} must be an nn.Module")
        if not callable(values["loss"]):
            raise TypeError(f"custom_matches[{index}].loss must be callable")
        if values["weight"] is None:
            raise ValueError(f"custom_matches[{index}] needs a `weight`")
        return cls(**values)


class _OutputCatcher:
    def __init__(self) -> None:
        self.output: Any = None

    def __call__(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self.output = output


class MatchComputer:
    """Computes the weighted intermediate losses of a list of matches.

    Args:
        matches: the config's ``IntermediateMatch`` list (may be empty).
        custom_matches: dicts/objects for ``CustomMatch``.
        device: where projections live.
    """

    def __init__(
        self,
        matches: Sequence[IntermediateMatch],
        custom_matches: Sequence[Any] | None,
        device: torch.device,
    ) -> None:
        self.matches = list(matches)
        # Resolved once here: a step never looks a loss up by name.
        self.functions = [
            presets.resolve(presets.MATCH_LOSS_MAP, match.loss, f"intermediate_matches[{i}].loss")
            for i, match in enumerate(self.matches)
        ]
        self.infos = [presets.match_loss_info(function) for function in self.functions]
        layers, self.projection_of, self.param_options = [], {}, []
        for index, match in enumerate(self.matches):
            if match.proj is not None:
                kind, dim_in, dim_out, options = match.proj
                self.projection_of[index] = len(layers)
                layers.append(presets.PROJ_MAP[kind](dim_in, dim_out))
                self.param_options.append(options)
        self.device = device
        self.projections = ProjectionBank(layers).to(device)
        # The input layer of each projection, whose size and dtype the student's feature must fit.
        self._first_linear = [
            next((m for m in layer.modules() if isinstance(m, nn.Linear)), None) for layer in layers
        ]
        self._mask_checked = False
        self.project: nn.Module = self.projections
        self.custom = [
            CustomMatch.from_entry(entry, i) for i, entry in enumerate(custom_matches or [])
        ]
        self._catchers = []
        for custom in self.custom:
            pair = (_OutputCatcher(), _OutputCatcher())
            custom.module_T.register_forward_hook(pair[0])
            custom.module_S.register_forward_hook(pair[1])
            self._catchers.append(pair)

    def param_groups(self) -> list[dict[str, Any]]:
        """One optimizer param group per projection (match order), then per custom projection."""
        groups = [
            {"params": list(layer.parameters()), **options}
            for layer, options in zip(self.projections.layers, self.param_options)
        ]
        for custom in self.custom:
            if isinstance(custom.proj_func, nn.Module):
                groups.append(
                    {"params": list(custom.proj_func.parameters()), **(custom.proj_group or {})}
                )
        return groups

    def trainable_modules(self) -> list[nn.Module]:
        """Modules other than the student that the optimizer trains."""
        modules = [self.projections] if len(self.projections.layers) else []
        return modules + [c.proj_func for c in self.custom if isinstance(c.proj_func, nn.Module)]

    def use_wrapped(self, wrapped: list[nn.Module]) -> None:
        """Calls the projections through ``wrapped`` (``trainable_modules()`` order) from now on."""
        wrapped = list(wrapped)
        if len(self.projections.layers):
            self.project = wrapped.pop(0)
        for custom in self.custom:
            if isinstance(custom.proj_func, nn.Module):
                custom.proj_call = wrapped.pop(0)

    def __call__(
        self, results_S: AdaptorResult, results_T: AdaptorResult | list[AdaptorResult]
    ) -> list[tuple[str, torch.Tensor, float]]:
        """Returns ``(part_name, unweighted_loss, weight)`` for every match, in order.

        ``results_T`` is the teacher's result, or a list with one per teacher: a match then
        reads ``results_T[match.teacher]`` (teacher 0 when it names none).
        """
        teachers = results_T if isinstance(results_T, list) else [results_T]
        parts = []
        if self.matches:
            features_S = [self._features(results_S, m, i, "S") for i, m in enumerate(self.matches)]
            features_S = self._projected(features_S)
            mask = results_S.get("inputs_mask")
            if not self._mask_checked:  # its values are read once: no sync on later steps
                check_inputs_mask(mask)
                self._mask_checked = True
            for index, (match, student) in enumerate(zip(self.matches, features_S)):
                teacher = self._features(teachers[match.teacher or 0], match, index, "T")
                check_projection_output(student, teacher, match, index)
                _check_shapes(self.infos[index], student, teacher, match, index)
                if self.infos[index] is not None and match.loss not in ("pkd",):
                    check_mask_fits(mask, student, match, index)
                loss = self.functions[index](student, teacher, mask=mask)
                parts.append((_part_name(match), loss, match.weight))
        parts.extend(self._custom_parts(results_S, teachers))
        return parts

    def _features(self, results: AdaptorResult, match: IntermediateMatch, index: int, side: str):
        who = f"adaptor_{side}"
        if match.feature not in results:
            raise KeyError(
                f"intermediate_matches[{index}] ({_part_name(match)[len('unweighted_') :]}) needs "
                f"{who} to return {match.feature!r}; it returned keys {sorted(results)}"
            )
        layers = checked_layers(results, match, index, side)
        wanted = getattr(match, f"layer_{side}")
        picks = wanted if isinstance(wanted, list) else [wanted]
        for layer in picks:
            if not has_layer(layers, layer):
                raise IndexError(
                    f"intermediate_matches[{index}]: layer_{side}={layer} is out of range of "
                    f"{who}'s {match.feature!r} list of length {len(layers)}"
                )
        chosen = [to_float32(layers[layer]) for layer in picks]
        return chosen if isinstance(wanted, list) else chosen[0]

    def _projected(self, features: list[Any]) -> list[Any]:
        if not self.projection_of:
            return features
        flat, which, places = [], [], []
        for index, projection in self.projection_of.items():
            items = features[index] if isinstance(features[index], list) else [features[index]]
            linear = self._first_linear[projection]
            for position, item in enumerate(items):
                if linear is not None:
                    match = self.matches[index]
                    dim_in, dtype = linear.in_features, linear.weight.dtype
                    check_projection_input(item, dim_in, match, index, dtype)
                flat.append(item)
                which.append(projection)
                places.append((index, position))
        projected = self.project(flat, which)
        for (index, position), value in zip(places, projected):
            if isinstance(features[index], list):
                features[index] = list(features[index])
                features[index][position] = value
            else:
                features[index] = value
        return features

    def _custom_parts(self, results_S: AdaptorResult, results_T: list[AdaptorResult]):
        parts = []
        for index, (custom, (catch_T, catch_S)) in enumerate(zip(self.custom, self._catchers)):
            out_T, out_S = catch_T.output, catch_S.output
            if out_T is None or out_S is None:
                raise RuntimeError(
                    f"custom_matches[{index}]: module_{'T' if out_T is None else 'S'} did not run "
                    "in this step's forward pass; is it a submodule of that model?"
                )
            catch_T.output = catch_S.output = None  # do not keep activations past the step
            if custom.proj_func is not None:
                out_S = (custom.proj_call or custom.proj_func)(out_S)
            loss = custom.loss(
                out_S,
                out_T,
                results_S.get("inputs_mask"),
                results_T[custom.teacher or 0].get("inputs_mask"),
            )
            parts.append((f"unweighted_custom_match_{index}", loss, custom.weight))
        return parts


class MatchingHooks:
    """The loss and session hooks of a distiller with intermediate matches (``self.matches``).

    Mixed into ``GeneralDistiller`` and ``MultiTaskDistiller``: the loss is the KD and hard-label
    terms (``self.terms``) followed by every match, and the projections join the session through
    the hooks (param groups with their options, DDP wrapping, the training state).
    """

    matches: MatchComputer

    @property
    def projs(self) -> list[nn.Module | None]:
        """The projections in match order, ``None`` where a match has none (0.2.x's ``projs``).

        A subclass may assign its own list (and ``projs_group``): see ``_protocol``.
        """
        return assigned_match_projections(self)

    @projs.setter
    def projs(self, value: Any) -> None:
        groups = self.__dict__.get("_assigned_groups")
        projs = use_match_projections(self.matches, value, groups, type(self).__name__)
        self.__dict__["_assigned_projs"] = projs

    @property
    def projs_group(self) -> list[dict[str, Any]]:
        """The optimizer options of each projection in ``projs`` order (``{}`` for ``None``)."""
        return projection_groups(self.matches)

    @projs_group.setter
    def projs_group(self, value: Any) -> None:
        set_match_groups(self.matches, value, type(self).__name__)
        self.__dict__["_assigned_groups"] = value

    def compute_loss(
        self, results_S: AdaptorResult, results_T: AdaptorResult
    ) -> tuple[torch.Tensor, LossParts]:
        """KD and hard-label terms, then every intermediate and custom match, in order."""
        parts = self.terms.parts(results_S, results_T)
        parts.extend(self.matches(results_S, results_T))
        return combine_parts(parts)

    def extra_param_groups(self) -> list[dict[str, Any]]:
        """One param group per projection, with the options of its ``proj[3]``."""
        sync_assigned_projections(self)  # a subclass's lists may have changed in place
        return self.matches.param_groups()

    def extra_modules(self) -> list[nn.Module]:
        """The projection bank and the custom projection modules."""
        return self.matches.trainable_modules()

    def wrap_extra_modules(self, wrapped: list[nn.Module]) -> None:
        """Uses the (DDP-)wrapped projections for the forward passes."""
        self.matches.use_wrapped(wrapped)


def _part_name(match: IntermediateMatch) -> str:
    def layer(value: Any) -> str:
        return "-".join(map(str, value)) if isinstance(value, list) else str(value)

    return f"unweighted_{match.feature}_{match.loss}_{layer(match.layer_S)}_{layer(match.layer_T)}"


def _compared_shape(tensor: torch.Tensor, info: presets.MatchLossInfo) -> tuple[int, ...]:
    if info.reduces_heads and tensor.dim() == 4:
        return (tensor.shape[0], *tensor.shape[2:])
    return tuple(tensor.shape)


def _check_shapes(
    info: presets.MatchLossInfo | None,
    student: Any,
    teacher: Any,
    match: IntermediateMatch,
    index: int,
) -> None:
    if info is None:
        return
    pairs = list(zip(student, teacher)) if info.layers == 2 else [(student, teacher)]
    if not info.equal_shapes:  # e.g. nst: the hidden sizes may differ, the positions may not
        _check_positions(pairs, match, index)
        return
    for tensor_S, tensor_T in pairs:
        shape_S, shape_T = _compared_shape(tensor_S, info), _compared_shape(tensor_T, info)
        if shape_S == shape_T:
            continue
        where = (
            f"intermediate_matches[{index}] ({match.feature}, loss {match.loss!r}, "
            f"layer_S={match.layer_S}, layer_T={match.layer_T})"
        )
        if shape_S[:-1] != shape_T[:-1] and match.feature != "attention":
            raise ValueError(
                f"{where}: student shape {tuple(tensor_S.shape)} != teacher shape "
                f"{tuple(tensor_T.shape)} before the last (feature) dimension"
                f"{_lengths(tensor_S, tensor_T)}: the positions do not align (different "
                "batches or sequence lengths, e.g. different tokenizers), which no projection "
                "can fix; match sequence-level features (pooled hidden states, [CLS]) instead"
            )
        if match.feature == "attention":
            raise ValueError(
                f"{where}: student attention shape {tuple(tensor_S.shape)} != teacher shape "
                f"{tuple(tensor_T.shape)}{_lengths(tensor_S, tensor_T, -1)}. Attention maps "
                "compare position by position, so the "
                "sequence lengths must agree; for different head counts use 'attention_mse_sum' "
                "or 'attention_ce_mean', which reduce the heads first"
            )
        raise ValueError(
            f"{where}: student shape {tuple(tensor_S.shape)} != teacher shape "
            f"{tuple(tensor_T.shape)}; add 'proj': ['linear', {tensor_S.shape[-1]}, "
            f"{tensor_T.shape[-1]}] to project the student's feature"
        )


def _lengths(tensor_S: torch.Tensor, tensor_T: torch.Tensor, axis: int = 1) -> str:
    """``' (sequence lengths 9 for the student, 12 for the teacher)'`` when they differ."""
    if tensor_S.dim() < 3 or tensor_T.dim() < 3 or tensor_S.shape[axis] == tensor_T.shape[axis]:
        return ""
    return (
        f" (sequence lengths {tensor_S.shape[axis]} for the student, {tensor_T.shape[axis]} for "
        "the teacher)"
    )


def _check_positions(pairs: list, match: IntermediateMatch, index: int) -> None:
    for tensor_S, tensor_T in pairs:
        if tensor_S.shape[:-1] != tensor_T.shape[:-1]:
            raise ValueError(
                f"intermediate_matches[{index}] ({match.feature}, loss {match.loss!r}, "
                f"layer_S={match.layer_S}, layer_T={match.layer_T}): student shape "
                f"{tuple(tensor_S.shape)} and teacher shape {tuple(tensor_T.shape)} differ before "
                f"the last (feature) dimension{_lengths(tensor_S, tensor_T)}: the positions do not "
                "align (different batches or sequence lengths, e.g. different tokenizers)"
            )
