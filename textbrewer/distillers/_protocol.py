"""The TextBrewer 0.2.x subclass protocol, served by the one implementation (SPEC §5).

A 0.2.x subclass (the model case: the EMD distiller of TextBrewer's MNLI example) reads and sets
attributes of the distiller in its ``__init__`` and ``train_on_batch``:

* ``self.projs`` / ``self.projs_group``: its own projection modules and their optimizer
  options, trained, wrapped and saved like configured projections (``_subclass_projections``).
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


class _NoWriter:
    """Stands in for a tensorboard writer where nothing is written (no log_dir, or rank > 0)."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        def ignore(*args: Any, **kwargs: Any) -> None:
            return None

        return ignore


class DistillerAttributes:
    """The 0.2.x attributes subclasses use: ``d_config``, ``kd_loss``, ``rank``, ``tb_writer``."""

    terms: Any

    @property
    def rank(self) -> int:
        """This process's rank (0 when not distributed)."""
        return self._engine.rank

    @property
    def local_rank(self) -> int:
        """``TrainingConfig.local_rank``."""
        return self.t_config.local_rank

    @property
    def tb_writer(self) -> Any:
        """A tensorboardX writer into ``log_dir`` for a subclass's own scalars (rank 0).

        Without ``log_dir``, or on other ranks, its methods do nothing. It writes its own event
        file beside the loop's, in the same directory, so tensorboard shows both together.
        """
        writer = self.__dict__.get("_tb_writer")
        if writer is None:
            if self.t_config.log_dir is None or not self._engine.is_main:
                writer = _NoWriter()
            else:
                from tensorboardX import SummaryWriter

                # Its own file name: two writers opened in the same second would share one.
                writer = SummaryWriter(log_dir=str(self.t_config.log_dir), filename_suffix=".own")
            self.__dict__["_tb_writer"] = writer
        return writer

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """``AbstractDistiller.train``; a ``tb_writer`` the subclass used is closed at the end."""
        try:
            return super().train(*args, **kwargs)  # type: ignore[misc]
        finally:
            writer = self.__dict__.pop("_tb_writer", None)
            if writer is not None:
                writer.close()  # writes what it holds; a later access opens a new one

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
        if "terms" in self.__dict__ and value is not self.__dict__.get("_d_config"):
            # The losses, temperature and matches were resolved from the old one: say so.
            raise AttributeError(
                "`d_config` cannot be replaced on a built distiller (its losses, temperature "
                "and matches were resolved from the first one); build a new distiller with the "
                "new DistillationConfig"
            )
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
