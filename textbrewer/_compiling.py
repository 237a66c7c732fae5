"""Compiled steps: the ``TrainingConfig(torch_compile=...)`` option and the compiled forwards.

``torch_compile=True`` (or a dict of ``torch.compile`` keyword arguments) makes the distillers run
the student's and the teachers' forwards through ``torch.compile``; the models themselves are
left as they are, so checkpoints, callbacks and ``state_dict`` keys see the plain modules. Under
DistributedDataParallel the DDP wrapper is what gets compiled (compile after wrapping, as the
PyTorch DDP notes ask, so that DDP's gradient buckets split the graph).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from textbrewer._validation import Problems, format_known

COMPILE_KEYS = ("fullgraph", "dynamic", "backend", "mode", "options", "disable")
"""The ``torch.compile`` keyword arguments ``torch_compile`` may hold."""

COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_compile_option(problems: Problems, value: Any) -> None:
    """Records what is wrong with a ``torch_compile`` value (a bool, or a dict of kwargs)."""
    field = "torch_compile"
    if isinstance(value, bool):
        return
    if not isinstance(value, dict):
        problems.add(
            f"`{field}`={value!r} must be True, False, or a dict of torch.compile keyword "
            f"arguments (keys: {format_known(COMPILE_KEYS)})"
        )
        return
    unknown = [key for key in value if key not in COMPILE_KEYS]
    if unknown:
        problems.add(
            f"`{field}`={value!r} has unknown key(s) {', '.join(map(repr, unknown))} "
            f"(known: {format_known(COMPILE_KEYS)})"
        )
    for key in ("fullgraph", "disable"):
        if key in value and not isinstance(value[key], bool):
            problems.add(f"`{field}[{key!r}]`={value[key]!r} must be True or False")
    if value.get("dynamic") is not None and not isinstance(value["dynamic"], bool):
        problems.add(f"`{field}['dynamic']`={value['dynamic']!r} must be True, False or None")
    if "backend" in value and not (isinstance(value["backend"], str) and value["backend"]):
        problems.add(
            f"`{field}['backend']`={value['backend']!r} must be the name of a torch.compile "
            "backend, e.g. 'inductor', 'aot_eager' or 'eager'"
        )
    _check_mode_and_options(problems, value)


def _check_mode_and_options(problems: Problems, value: dict[str, Any]) -> None:
    field = "torch_compile"
    mode = value.get("mode")
    if not isinstance(mode, (str, type(None))) or mode not in COMPILE_MODES:
        known = ", ".join(repr(mode) for mode in COMPILE_MODES)
        problems.add(f"`{field}['mode']`={mode!r} is not a torch.compile mode (known: {known})")
    options = value.get("options")
    if options is not None and not (
        isinstance(options, dict) and all(isinstance(key, str) for key in options)
    ):
        problems.add(
            f"`{field}['options']`={options!r} must be a dict of backend options with str keys"
        )
    if mode is not None and options is not None:
        problems.add(
            f"`{field}` gives both 'mode'={mode!r} and 'options': torch.compile accepts one of "
            "them (a mode is a preset of options)"
        )


def compile_kwargs(value: bool | dict[str, Any]) -> dict[str, Any] | None:
    """The ``torch.compile`` keyword arguments a valid ``torch_compile`` asks for, or ``None``."""
    if value is False:
        return None
    return {} if value is True else dict(value)


class CompiledForwards:
    """Each model's compiled forward, created on first use and kept for later steps and calls.

    Args:
        kwargs: keyword arguments for ``torch.compile``.

    Raises:
        ValueError: the ``backend`` is not a registered ``torch.compile`` backend.
    """

    def __init__(self, kwargs: dict[str, Any]) -> None:
        backend = kwargs.get("backend", "inductor")
        import torch._dynamo  # seconds to import: only when compiling

        known = torch._dynamo.list_backends(exclude_tags=())
        if backend not in known:
            raise ValueError(
                f"TrainingConfig `torch_compile['backend']`={backend!r} is not a torch.compile "
                f"backend (known: {format_known(known)})"
            )
        self.kwargs = kwargs
        self._compiled: dict[int, tuple[nn.Module, Any]] = {}

    def forward_of(self, module: nn.Module) -> Any:
        """``torch.compile(module)``, the same object on every call for the same module."""
        entry = self._compiled.get(id(module))
        if entry is None or entry[0] is not module:
            entry = (module, torch.compile(module, **self.kwargs))
            self._compiled[id(module)] = entry
        return entry[1]

    def release(self, module: nn.Module) -> None:
        """Forgets ``module``'s compiled forward (a DDP wrapper that ``train()`` discards)."""
        entry = self._compiled.get(id(module))
        if entry is not None and entry[0] is module:
            del self._compiled[id(module)]
