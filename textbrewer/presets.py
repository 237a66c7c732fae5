"""The registries: plain dicts of name -> callable that users extend by assignment.

Configurations name losses, projections and schedulers by these keys, so registering a function is
the whole extension story::

    from textbrewer.presets import MATCH_LOSS_MAP
    MATCH_LOSS_MAP["my_l1"] = lambda S, T, mask=None: (S - T).abs().mean()
    DistillationConfig(intermediate_matches=[{..., "loss": "my_l1"}])

Names in a config are checked against these dicts when the config is built and resolved when a
distiller is built. ``TEMPERATURE_SCHEDULER`` is the one dict-like exception: a lookup with a list
``[name, *args]`` (or ``[name, {kwargs}]``) calls the registered builder with those arguments.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable

from textbrewer import losses, projections, schedulers

FEATURES: list[str] = ["hidden", "attention"]
"""Intermediate features an adaptor may return; add a name here to match a feature of your own."""

ADAPTOR_KEYS: list[str] = [
    "logits",
    "logits_mask",
    "losses",
    "inputs_mask",
    "labels",
    "hidden",
    "attention",
]
"""Keys the distillers read from an adaptor's result."""


MATCH_LOSS_MAP: dict[str, Callable[..., Any]] = {
    "attention_mse_sum": losses.att_mse_sum_loss,
    "attention_mse": losses.att_mse_loss,
    "attention_ce_mean": losses.att_ce_mean_loss,
    "attention_ce": losses.att_ce_loss,
    "hidden_mse": losses.hid_mse_loss,
    "cos": losses.cos_loss,
    "pkd": losses.pkd_loss,
    "gram": losses.fsp_loss,
    "fsp": losses.fsp_loss,
    "mmd": losses.mmd_loss,
    "nst": losses.mmd_loss,
}
"""Intermediate-feature losses, called ``loss(feature_S, feature_T, mask=inputs_mask)``."""


@dataclasses.dataclass(frozen=True)
class MatchLossInfo:
    """What the distillers need to know about a built-in match loss, beyond calling it.

    Attributes:
        layers: how many layers the loss takes from each side: 1, or 2 (a pair, as
            ``fsp``/``gram`` and ``nst``/``mmd`` do).
        equal_shapes: whether student and teacher inputs must have equal shapes (checked on the
            first step, with a message that suggests a projection where one would help).
        reduces_heads: whether the loss reduces the heads of 4-D attention first, so teacher and
            student may have different head counts (the shape check compares (batch, length,
            length)).
    """

    layers: int = 1
    equal_shapes: bool = True
    reduces_heads: bool = False


MATCH_LOSS_INFO: dict[Callable[..., Any], MatchLossInfo] = {
    losses.att_mse_loss: MatchLossInfo(),
    losses.att_mse_sum_loss: MatchLossInfo(reduces_heads=True),
    losses.att_ce_loss: MatchLossInfo(),
    losses.att_ce_mean_loss: MatchLossInfo(reduces_heads=True),
    losses.hid_mse_loss: MatchLossInfo(),
    losses.cos_loss: MatchLossInfo(),
    losses.pkd_loss: MatchLossInfo(),
    losses.fsp_loss: MatchLossInfo(layers=2),
    losses.mmd_loss: MatchLossInfo(layers=2, equal_shapes=False),
}
"""The one table of built-in match-loss metadata, keyed by the function (aliases share a row).

A function registered by a user has no row: it may take one layer or two, and its shapes are its
own business. A new built-in loss is a function in ``losses.py`` plus one row here.
"""


def match_loss_info(function: Callable[..., Any]) -> MatchLossInfo | None:
    """The ``MATCH_LOSS_INFO`` row of ``function``, or ``None`` for a user-registered loss."""
    try:
        return MATCH_LOSS_INFO.get(function)
    except TypeError:  # an unhashable callable cannot be a built-in
        return None


PROJ_MAP: dict[str, Callable[[int, int], Any]] = {
    "linear": projections.linear_projection,
    "relu": projections.relu_projection,
    "tanh": projections.tanh_projection,
}
"""Projection factories ``(dim_in_student, dim_out_teacher) -> nn.Module``."""

WEIGHT_SCHEDULER: dict[str, Callable[[float], float]] = {
    "linear_decay": schedulers.linear_decay,
    "linear_growth": schedulers.linear_growth,
}
"""Loss-weight schedulers ``f(progress) -> weight`` with ``progress = global_step / total``."""

# Builders that need arguments are marked so that a config naming one without arguments
# (`temperature_scheduler='flsw'`) is rejected when it is built, not on the first step.
schedulers.flsw_temperature_scheduler_builder.needs_arguments = True
schedulers.cwsm_temperature_scheduler_builder.needs_arguments = True


class DynamicKeyDict(dict):
    """A dict whose lookup with a list ``[name, *args]`` builds a scheduler.

    ``d['name']`` returns the registered object unchanged; ``d[['name', *args]]`` returns
    ``d['name'](*args)`` and ``d[['name', {kwargs}]]`` returns ``d['name'](**kwargs)``;
    ``['name', ...] in d`` tests ``'name'``.

    Example:
        >>> registry = DynamicKeyDict(scale=lambda factor: (lambda x: x * factor))
        >>> registry[["scale", 3]](2)
        6
        >>> ["scale", 3] in registry
        True
    """

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (list, tuple)):
            if not key:
                raise KeyError("an empty list names no scheduler")
            builder = super().__getitem__(key[0])
            arguments = list(key[1:])
            if len(arguments) == 1 and isinstance(arguments[0], dict):
                return builder(**arguments[0])
            return builder(*arguments)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, (list, tuple)):
            return bool(key) and super().__contains__(key[0])
        return super().__contains__(key)


TEMPERATURE_SCHEDULER = DynamicKeyDict(
    constant=schedulers.constant_temperature_scheduler,
    flsw=schedulers.flsw_temperature_scheduler_builder,
    cwsm=schedulers.cwsm_temperature_scheduler_builder,
)
"""Temperature schedulers ``(logits_S, logits_T, base_T) -> T``, or builders of them."""


class KDLossDict(DynamicKeyDict):
    """``KD_LOSS_MAP``'s type: a dict whose list lookup ``[name, *args]`` binds a loss's options.

    ``d['jsd']`` is the loss function itself; ``d[['jsd', 0.3]]`` (or ``d[['jsd', {'beta': 0.3}]]``)
    is that loss with its option fixed, built by the function's ``builder`` attribute
    (``losses.jsd_loss_builder``). A loss without a ``builder`` takes no arguments.
    """

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (list, tuple)) and key:
            entry = dict.__getitem__(self, key[0])
            builder = getattr(entry, "builder", None)
            if builder is None:
                raise TypeError(
                    f"KD_LOSS_MAP[{key[0]!r}] takes no arguments, got {list(key)!r}; give its "
                    "name alone"
                )
            arguments = list(key[1:])
            if len(arguments) == 1 and isinstance(arguments[0], dict):
                return builder(**arguments[0])
            return builder(*arguments)
        return super().__getitem__(key)


KD_LOSS_MAP = KDLossDict(
    ce=losses.kd_ce_loss,
    mse=losses.kd_mse_loss,
    kl=losses.kd_kl_loss,
    reverse_kl=losses.kd_reverse_kl_loss,
    jsd=losses.kd_jsd_loss,
    bce=losses.kd_bce_loss,
)
"""KD losses on logits, called ``loss(logits_S, logits_T, temperature)``.

A plain dict of functions (a ``dict`` subclass); ``['jsd', beta]`` builds ``'jsd'`` with its
mixing coefficient (see ``KDLossDict``).
"""

MAPS: dict[str, dict] = {
    "kd_loss": KD_LOSS_MAP,
    "match_Loss": MATCH_LOSS_MAP,
    "projection": PROJ_MAP,
    "weight_scheduler": WEIGHT_SCHEDULER,
    "temperature_scheduler": TEMPERATURE_SCHEDULER,
}
"""The registries by the names ``register_new`` takes."""

_BUILT_INS = {map_name: frozenset(registry) for map_name, registry in MAPS.items()}


def register_new(map_name: str, name: str, func: Callable[..., Any]) -> None:
    """Registers ``func`` under ``name`` in the registry ``MAPS[map_name]``.

    Equivalent to ``MAPS[map_name][name] = func`` with checks. Replacing a built-in entry is allowed
    but warns, since configs written for the built-in would silently change meaning.

    Args:
        map_name: one of ``'kd_loss'``, ``'match_Loss'``, ``'projection'``, ``'weight_scheduler'``,
            ``'temperature_scheduler'``.
        name: the key configs will use.
        func: the callable to register.

    Raises:
        KeyError: ``map_name`` is not a registry.
        TypeError: ``name`` is not a string or ``func`` is not callable.

    Example:
        >>> register_new("weight_scheduler", "halfway", lambda x: min(1.0, 2 * x))
        >>> WEIGHT_SCHEDULER["halfway"](0.25)
        0.5
        >>> del WEIGHT_SCHEDULER["halfway"]
    """
    if map_name not in MAPS:
        known = ", ".join(repr(key) for key in sorted(MAPS))
        raise KeyError(f"`map_name`={map_name!r} is not a registry (known: {known})")
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a str, got {name!r} of type {type(name).__name__}")
    if not callable(func):
        raise TypeError(
            f"`func` registered as {name!r} in {map_name!r} must be callable, "
            f"got {func!r} of type {type(func).__name__}"
        )
    if name in _BUILT_INS[map_name]:
        warnings.warn(
            f"register_new replaces the built-in {name!r} of {map_name!r}",
            UserWarning,
            stacklevel=2,
        )
    MAPS[map_name][name] = func


_REGISTRY_NAMES = {
    id(KD_LOSS_MAP): "KD_LOSS_MAP",
    id(MATCH_LOSS_MAP): "MATCH_LOSS_MAP",
    id(PROJ_MAP): "PROJ_MAP",
    id(WEIGHT_SCHEDULER): "WEIGHT_SCHEDULER",
    id(TEMPERATURE_SCHEDULER): "TEMPERATURE_SCHEDULER",
}


def resolve(registry: dict, name: Any, field: str) -> Any:
    """Looks ``name`` up in ``registry`` once, when a distiller is built.

    Args:
        registry: one of the registries above.
        name: the key a configuration gives (a list ``[name, *args]`` for builder forms).
        field: the configuration field, for the message.

    Raises:
        KeyError: the name is not (or no longer) registered; the message lists the known names.
    """
    try:
        return registry[name]
    except KeyError:
        known = ", ".join(repr(key) for key in sorted(registry))
        where = _REGISTRY_NAMES.get(id(registry), "the registry")
        raise KeyError(
            f"`{field}`={name!r} is not in {where} (known: {known}); was it removed after the "
            "config was built?"
        ) from None
