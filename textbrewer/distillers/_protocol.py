"""The TextBrewer 0.2.x subclass protocol, served by the one implementation (SPEC §5).

A 0.2.x subclass (the model case: the EMD distiller of TextBrewer's MNLI example) reads and sets
attributes of the distiller in its ``__init__`` and ``train_on_batch``:

* ``self.projs`` / ``self.projs_group``: its own projection modules (``None`` where a match has
  none) and their optimizer options. Assigned ones are moved to the device, get one param group
  each at ``train()`` start (``{'params': p.parameters(), **group}``), are wrapped under DDP and
  are saved with the training state, exactly like configured projections. On a distiller with
  intermediate matches, ``projs[i]`` is the projection match ``i`` uses, as in 0.2.x.
* ``self.kd_loss``: the ``KD_LOSS_MAP`` function, ``kd_loss(logits_S, logits_T, temperature)``;
  assigning another function makes the built-in KD term use it.
* ``self.d_config``: the distillation config, seen through ``DistillationConfigView``: its
  ``kd_loss_weight``/``hard_label_weight`` are the current (scheduled) weights, as 0.2.x's
  mutated config showed them, while the user's object is never written by the schedules.
  ``self.d_config.is_caching_logits = False`` works; a field the distiller has already
  resolved (the temperature, the losses, the matches) raises instead of being silently ignored.
* ``self.t_config``, ``self.model_T``, ``self.adaptor_T``, ``self.model_S``, ``self.adaptor_S``.

``train_on_batch`` may return ``(total, parts)`` or, as 0.2.x subclasses do, the total loss
alone (``batch_result``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Callable

import torch
from torch import nn

from textbrewer.configurations import DistillationConfig
from textbrewer.distillers._batches import _LIST_KEYS, call_model
from textbrewer.distillers._kd import probability_shift, select_rows

_ASSIGNABLE_NOW = ("is_caching_logits",)
_SCHEDULED = ("kd_loss_weight", "hard_label_weight")
_CONFIG_FIELDS = frozenset(field.name for field in dataclasses.fields(DistillationConfig))


class DistillationConfigView(DistillationConfig):
    """``self.d_config`` of a distiller: the user's config, with the scheduled weights.

    Reads return the config's fields, except ``kd_loss_weight`` and ``hard_label_weight``, which
    are the distiller's current values (what TextBrewer 0.2.x's weight schedulers wrote into the
    config). Writing ``is_caching_logits`` sets it on the config (read when ``train()`` starts);
    writing a weight sets the current weight; any other field was resolved when the distiller was
    built, so writing it raises ``AttributeError`` rather than being ignored. It is a
    ``DistillationConfig`` for ``isinstance`` and ``dataclasses.asdict``/``replace`` (which build
    a plain ``DistillationConfig``).

    Args:
        config: the user's ``DistillationConfig``.
        terms: the distiller's ``DistillationTerms`` (the current weights).
    """

    def __init__(self, config: Any, terms: Any) -> None:  # no validation: config already is
        object.__setattr__(self, "_config", config)
        object.__setattr__(self, "_terms", terms)

    def __getattribute__(self, name: str) -> Any:
        if name in _SCHEDULED:
            return getattr(object.__getattribute__(self, "_terms"), name)
        if name in _CONFIG_FIELDS:
            return getattr(object.__getattribute__(self, "_config"), name)
        if name == "__class__":  # dataclasses.replace builds a plain config
            return DistillationConfig
        return object.__getattribute__(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SCHEDULED:
            setattr(self._terms, name, value)
        elif name in _ASSIGNABLE_NOW:
            setattr(self._config, name, value)
        else:
            raise AttributeError(
                f"`d_config.{name}` cannot be changed on a built distiller: the distiller "
                f"resolved it when it was built. Set {name}=... in the DistillationConfig "
                "before building the distiller"
            )

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DistillationConfig) and "_config" in getattr(other, "__dict__", {}):
            other = other.__dict__["_config"]
        return self._config == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"DistillationConfigView({self._config!r})"

    def __str__(self) -> str:
        return str(self._config)

    def to_dict(self) -> dict[str, Any]:
        """The user's config as a dict (the configured, not the scheduled, weights)."""
        return self._config.to_dict()


class DistillerAttributes:
    """``d_config`` and a settable ``kd_loss``, as 0.2.x subclasses use them."""

    terms: Any

    @property
    def d_config(self) -> Any:
        """The distillation config (a ``DistillationConfigView`` once the terms exist)."""
        config = self.__dict__.get("_d_config")
        terms = self.__dict__.get("terms")
        if config is None or terms is None:
            return config
        return DistillationConfigView(config, terms)

    @d_config.setter
    def d_config(self, value: Any) -> None:
        if type(value) is DistillationConfigView:
            value = value._config
        self.__dict__["_d_config"] = value

    @property
    def kd_loss(self) -> Callable[..., torch.Tensor]:
        """The KD loss function, ``kd_loss(logits_S, logits_T, temperature)``."""
        return self.terms.kd_loss

    @kd_loss.setter
    def kd_loss(self, function: Callable[..., torch.Tensor]) -> None:
        if not callable(function):
            raise TypeError(
                f"`kd_loss`={function!r} must be callable(logits_S, logits_T, temperature)"
            )
        self.terms.kd_loss = function
        self.terms.kd.loss = function


def checked_projections(
    projs: Any, device: torch.device | None, owner: str
) -> list[nn.Module | None]:
    """``projs`` as a list of modules or ``None``, each moved to ``device``.

    A list is kept as the same object (0.2.x subclasses often assign ``[]`` and ``append``), so
    later in-place changes are seen; a tuple, ``nn.ModuleList`` or single module becomes a list.

    Raises:
        TypeError: not a list/tuple, or an element that is neither an ``nn.Module`` nor ``None``
            (a plain function has no parameters to train).
    """
    if isinstance(projs, nn.Module) and not isinstance(projs, (nn.ModuleList, nn.Sequential)):
        projs = [projs]
    if isinstance(projs, (tuple, nn.ModuleList, nn.Sequential)):
        projs = list(projs)
    if not isinstance(projs, list):
        raise TypeError(
            f"{owner}.projs={projs!r} must be a list of nn.Module (or None where a match has no "
            "projection)"
        )
    for index, proj in enumerate(projs):
        if proj is not None and not isinstance(proj, nn.Module):
            raise TypeError(
                f"{owner}.projs[{index}]={proj!r} must be an nn.Module or None: the library "
                "trains, wraps and saves projections, which a plain function cannot be"
            )
        if proj is not None and device is not None:
            proj.to(device)  # in place: the list keeps the subclass's own objects
    return projs


def checked_groups(groups: Any, count: int, owner: str) -> list[dict[str, Any]]:
    """``projs_group``: one dict of optimizer options per projection (``None`` means ``{}``).

    ``groups`` may have one entry per element of ``projs`` (``None`` elements included) or one
    per non-``None`` projection; ``count`` is the length of ``projs``.

    Raises:
        TypeError: not a list of dicts, or a dict that sets ``params``.
    """
    if groups is None:
        return [{} for _ in range(count)]
    if not isinstance(groups, (list, tuple)):
        raise TypeError(f"{owner}.projs_group={groups!r} must be a list of dicts")
    checked = []
    for index, group in enumerate(groups):
        group = {} if group is None else group
        if not isinstance(group, dict) or "params" in group:
            raise TypeError(
                f"{owner}.projs_group[{index}]={group!r} must be a dict of optimizer options "
                "(e.g. {'lr': 1e-3}) without 'params'"
            )
        checked.append(dict(group))
    return checked


def group_for(groups: Sequence[dict[str, Any]], projs: Sequence[Any], index: int) -> dict:
    """The options of ``projs[index]``: by position, or by rank among the non-``None`` ones."""
    if len(groups) == len(projs):
        return groups[index]
    rank = sum(proj is not None for proj in projs[:index])
    return groups[rank] if rank < len(groups) else {}


def check_group_count(groups: Sequence[Any], projs: Sequence[Any], owner: str) -> None:
    """Raises a ``ValueError`` unless there is a group per projection (or per non-None one)."""
    present = sum(proj is not None for proj in projs)
    if groups and len(groups) not in (len(projs), present):
        raise ValueError(
            f"{owner}.projs_group has {len(groups)} entries for {len(projs)} projs ({present} "
            "not None): give one dict of optimizer options per projection"
        )


class OwnProjections:
    """``projs``/``projs_group`` on a distiller without intermediate matches.

    Assigned projections are trainable modules of the session: one param group each, wrapped
    under DDP (``self.projs`` then returns the wrappers, so a subclass's forward goes through
    them), and saved with the training state. The assigned list itself is kept, so elements a
    subclass appends later are trained too (they are checked again when ``train()`` starts).
    """

    @property
    def projs(self) -> list[nn.Module | None]:
        """The projections a subclass assigned (``[]`` by default), wrapped while training."""
        projs = self.__dict__.setdefault("_own_projs", [])
        wrapped = [None if proj is None else self.wrapped(proj) for proj in projs]
        if all(w is p for w, p in zip(wrapped, projs)):
            return projs  # the subclass's own list, so in-place changes stick
        return wrapped

    @projs.setter
    def projs(self, value: Any) -> None:
        self.__dict__["_own_projs"] = checked_projections(
            value, getattr(self, "device", None), type(self).__name__
        )

    @property
    def projs_group(self) -> list[dict[str, Any]]:
        """The optimizer options of each projection (``[]`` until a subclass assigns them)."""
        return self.__dict__.setdefault("_own_groups", [])

    @projs_group.setter
    def projs_group(self, value: Any) -> None:
        checked_groups(value, len(self.projs), type(self).__name__)
        self.__dict__["_own_groups"] = value if isinstance(value, list) else list(value or [])

    def _checked_own(self) -> tuple[list[nn.Module | None], list[dict[str, Any]]]:
        owner = type(self).__name__
        projs = checked_projections(self.__dict__.get("_own_projs", []), self.device, owner)
        groups = checked_groups(self.__dict__.get("_own_groups") or None, len(projs), owner)
        if self.__dict__.get("_own_groups"):
            check_group_count(groups, projs, owner)
        else:
            groups = []
        return projs, groups

    def extra_modules(self) -> list[nn.Module]:
        """The assigned projections that are not ``None``, in order."""
        return [proj for proj in self._checked_own()[0] if proj is not None]

    def extra_param_groups(self) -> list[dict[str, Any]]:
        """One param group per ``extra_modules()`` module; projections get their options."""
        projs, groups = self._checked_own()
        options = {
            id(proj): group_for(groups, projs, index) if groups else {}
            for index, proj in enumerate(projs)
            if proj is not None
        }
        return [
            {"params": list(module.parameters()), **options.get(id(module), {})}
            for module in self.extra_modules()
        ]


def batch_result(result: Any, owner: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``train_on_batch``'s result as ``(total, parts)``.

    TextBrewer 0.2.x subclasses return the total loss alone, or ``(total, losses_dict)``.

    Raises:
        TypeError: anything else.
    """
    if isinstance(result, torch.Tensor):
        return result, {}
    if (
        isinstance(result, (tuple, list))
        and len(result) == 2
        and isinstance(result[0], torch.Tensor)
    ):
        parts = result[1] if result[1] is not None else {}
        if isinstance(parts, dict):
            return result[0], parts
    raise TypeError(
        f"{owner}.train_on_batch must return the total loss (a tensor) or (total, parts) with "
        f"parts a dict of named tensors; it returned {type(result).__name__}"
    )


class _ThroughBank(nn.Module):
    """One projection of a (DDP-wrapped) projection bank, called through the wrapper."""

    def __init__(self, bank_call: Callable[..., Any], index: int, layer: nn.Module) -> None:
        super().__init__()
        # Not registered as submodules: this is a view for calling, the bank owns the layers.
        object.__setattr__(self, "_bank_call", bank_call)
        object.__setattr__(self, "_layer", layer)
        self.index = index

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        """Projects ``feature`` through the wrapped bank (so DDP syncs its gradients)."""
        return self._bank_call([feature], [self.index])[0]

    def parameters(self, recurse: bool = True) -> Any:  # the layer's own parameters
        """The projection layer's parameters."""
        return self._layer.parameters(recurse)


def match_projections(matches: Any) -> list[nn.Module | None]:
    """``projs`` of a distiller with matches: match order, ``None`` where there is none.

    Projections assigned beyond the last match follow. While the bank is wrapped (DDP), each
    element calls through the wrapper.
    """
    layers = matches.projections.layers
    wrapped = matches.project is not matches.projections

    def view(position: int) -> nn.Module:
        layer = layers[position]
        return _ThroughBank(matches.project, position, layer) if wrapped else layer

    count = len(matches.matches)
    listed = [
        view(matches.projection_of[i]) if i in matches.projection_of else None for i in range(count)
    ]
    used = set(matches.projection_of.values())
    listed += [view(position) for position in range(len(layers)) if position not in used]
    return listed


def use_match_projections(matches: Any, projs: Any, groups: Any, owner: str) -> list[Any]:
    """Makes ``projs`` (a 0.2.x subclass's) the projections of ``matches``.

    ``projs[i]`` projects the student's feature of match ``i`` (``None``: no projection), as in
    0.2.x; elements beyond the matches are trained and saved too, for the subclass's own use.
    """
    projs = checked_projections(projs, matches.device, owner)
    groups = checked_groups(groups, len(projs), owner) if groups is not None else []
    check_group_count(groups, projs, owner)
    layers, projection_of, options = [], {}, []
    for index, proj in enumerate(projs):
        if proj is None:
            continue
        if index < len(matches.matches):
            projection_of[index] = len(layers)
        layers.append(proj)
        options.append(group_for(groups, projs, index) if groups else {})
    matches.projections = type(matches.projections)(layers).to(matches.device)
    matches.project = matches.projections
    matches.projection_of = projection_of
    matches.param_options = options
    return projs


def assigned_match_projections(distiller: Any) -> list[nn.Module | None]:
    """``projs`` of a distiller with matches: the list a subclass assigned, else the bank's."""
    assigned = distiller.__dict__.get("_assigned_projs")
    matches = distiller.matches
    if assigned is not None and matches.project is matches.projections:
        return assigned
    return match_projections(matches)


def sync_assigned_projections(distiller: Any) -> None:
    """Re-reads the ``projs``/``projs_group`` a subclass assigned (changed in place since)."""
    assigned = distiller.__dict__.get("_assigned_projs")
    owner = type(distiller).__name__
    groups = distiller.__dict__.get("_assigned_groups")
    if assigned is not None:
        use_match_projections(distiller.matches, assigned, groups, owner)
    elif groups is not None:
        set_match_groups(distiller.matches, groups, owner)


def set_match_groups(matches: Any, groups: Any, owner: str) -> None:
    """Sets the optimizer options of ``matches``' projections from a 0.2.x ``projs_group``."""
    projs = match_projections(matches)
    groups = checked_groups(groups, len(projs), owner)
    check_group_count(groups, projs, owner)
    options = [
        group_for(groups, projs, index) for index, proj in enumerate(projs) if proj is not None
    ]
    order = sorted(matches.projection_of.items())
    extra = [
        p for p in range(len(matches.projections.layers)) if p not in matches.projection_of.values()
    ]
    positions = [position for _, position in order] + extra
    param_options = [{} for _ in matches.projections.layers]
    for position, option in zip(positions, options):
        param_options[position] = option
    matches.param_options = param_options


def projection_groups(matches: Any) -> list[dict[str, Any]]:
    """The optimizer options in ``match_projections`` order (``{}`` where it is ``None``)."""
    used = dict(sorted(matches.projection_of.items()))
    extra = [p for p in range(len(matches.projections.layers)) if p not in used.values()]
    groups = [
        dict(matches.param_options[used[i]]) if i in used else {}
        for i in range(len(matches.matches))
    ]
    return groups + [dict(matches.param_options[position]) for position in extra]


# ----------------------------------------------------------------- 0.2.x step helpers
def post_adaptor(dict_object: dict[str, Any]) -> dict[str, Any]:
    """Wraps a single tensor under ``logits``, ``logits_mask``, ``labels``, ``losses`` in a list.

    TextBrewer 0.2.x's helper of this name, for subclasses that call adaptors themselves. The
    dict is changed in place and returned.
    """
    for key in _LIST_KEYS:
        if isinstance(dict_object.get(key), torch.Tensor):
            dict_object[key] = [dict_object[key]]
    return dict_object


def auto_forward(model: Callable[..., Any], batch: Any, args: dict[str, Any] | None = None) -> Any:
    """``model(**batch, **args)`` for a dict batch, ``model(*batch, **args)`` otherwise."""
    return call_model(model, batch, args or {})


def select_logits_with_mask(
    logits_list: Sequence[torch.Tensor] | torch.Tensor,
    logits_mask_list: Sequence[torch.Tensor] | torch.Tensor | None,
) -> list[torch.Tensor]:
    """Selects the rows of 3-D logits where their mask is set: (B, L, C) -> (N_selected, C).

    One mask serves every logits tensor, or there is one per tensor; 2-D logits pass through.
    """
    if isinstance(logits_list, torch.Tensor):
        logits_list = [logits_list]
    if isinstance(logits_mask_list, torch.Tensor):
        logits_mask_list = [logits_mask_list]
    masks = list(logits_mask_list or [])
    selected = []
    for index, logits in enumerate(logits_list):
        mask = None if not masks else masks[0] if len(masks) == 1 else masks[index]
        selected.append(select_rows(logits, mask))
    return selected


def probability_shift_(tensor: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Swaps, in place, each row's top logit with its true label's; returns ``tensor``.

    Args:
        tensor: (rows, classes) or (batch, length, classes) teacher logits.
        labels: ``tensor.shape[:-1]`` labels; a label < 0 leaves its row unchanged.
    """
    with torch.no_grad():
        tensor.copy_(probability_shift(tensor, labels))
    return tensor
