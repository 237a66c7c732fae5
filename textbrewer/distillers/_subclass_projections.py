"""Projections a TextBrewer 0.2.x subclass assigns: ``self.projs`` and ``self.projs_group``.

A 0.2.x subclass sets ``self.projs`` (modules, ``None`` where a match has none) and
``self.projs_group`` (dicts of optimizer options) in ``__init__``, often as ``[]`` followed by
``append``. Each one is moved to the device, gets its own param group when ``train()`` starts
(``{'params': p.parameters(), **group}``), is wrapped under DDP (``self.projs[i]`` then calls
through the wrapper) and is saved and resumed with the training state, exactly like a configured
projection: none is ever left untrained.

* ``OwnProjections``: the distillers without intermediate matches (``BasicDistiller``,
  ``BasicTrainer``): the projections are extra trainable modules of the session.
* The ``*_projections``/``*_groups`` functions: distillers with matches (``MatchingHooks``),
  where ``projs[i]`` is the projection match ``i`` uses, as in 0.2.x.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import torch
from torch import nn


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


class ProjectionList(list):
    """``projs`` of a distiller with matches: in match order, ``None`` where there is none.

    It also converts its projections like a module: ``distiller.projs.double()``,
    ``.to(dtype)``, ``.parameters()``, ``.state_dict()``.
    """

    def _modules(self) -> list[nn.Module]:
        return [proj for proj in self if proj is not None]

    def to(self, *args: Any, **kwargs: Any) -> ProjectionList:
        """Calls ``.to(*args, **kwargs)`` on every projection; returns the list."""
        for proj in self._modules():
            proj.to(*args, **kwargs)
        return self

    def double(self) -> ProjectionList:
        """Every projection in float64."""
        return self.to(torch.float64)

    def float(self) -> ProjectionList:
        """Every projection in float32."""
        return self.to(torch.float32)

    def parameters(self) -> Any:
        """The parameters of every projection, in order."""
        for proj in self._modules():
            yield from proj.parameters()

    def state_dict(self) -> dict[str, Any]:
        """The projections' weights, keyed as an ``nn.ModuleList`` of them would key them."""
        return nn.ModuleList(self._modules()).state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Loads what ``state_dict`` returned."""
        nn.ModuleList(self._modules()).load_state_dict(state)


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


def match_projections(matches: Any) -> ProjectionList:
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
    return ProjectionList(listed)


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
    # The input layer of each projection, whose size and dtype the student's feature must fit.
    matches._first_linear = [
        next((m for m in layer.modules() if isinstance(m, nn.Linear)), None) for layer in layers
    ]
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
