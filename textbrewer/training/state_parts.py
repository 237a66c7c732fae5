"""The optimizer and LR scheduler as parts of the training state, checked when resumed.

``torch`` loads an optimizer state into an optimizer of another class without complaint, and
the run then dies on its first step with ``KeyError: 'momentum'`` (Adam's state in SGD), or
trains on with the other class's hyper-parameters (AdamW's in Adam). These parts save the class
name beside the state and compare classes and param groups before loading anything.
"""

from __future__ import annotations

from typing import Any

_CLASS_KEY = "textbrewer_class"


def _class_name(value: Any) -> str:
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


class _ClassCheckedPart:
    """A stateful object whose state carries its class name, checked when loaded."""

    role = "part"

    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped

    def state_dict(self) -> dict[str, Any]:
        """The wrapped object's state plus its class name."""
        return {**self.wrapped.state_dict(), _CLASS_KEY: _class_name(self.wrapped)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Checks the class (when the file recorded it), then loads the rest."""
        state = dict(state)
        saved = state.pop(_CLASS_KEY, None)
        mine = _class_name(self.wrapped)
        if saved is not None and saved != mine:
            raise ValueError(
                f"cannot resume: the run was saved with the {self.role} "
                f"{saved.rsplit('.', 1)[-1]} ({saved}), this call passes a "
                f"{mine.rsplit('.', 1)[-1]} ({mine}); resume with the {self.role} the run "
                "was started with"
            )
        self.check(state)
        self.wrapped.load_state_dict(state)

    def check(self, state: dict[str, Any]) -> None:
        """Further checks before loading (none by default)."""


class OptimizerPart(_ClassCheckedPart):
    """The optimizer; its param groups must match the saved ones in number, size and options."""

    role = "optimizer"

    def check(self, state: dict[str, Any]) -> None:
        """Compares param groups (count, parameters per group, option names)."""
        saved_groups = state.get("param_groups", [])
        groups = self.wrapped.param_groups
        saved_sizes = [len(group["params"]) for group in saved_groups]
        sizes = [len(group["params"]) for group in groups]
        if saved_sizes != sizes:
            raise ValueError(
                f"cannot resume: the saved optimizer has {len(saved_sizes)} param "
                f"group(s) with {saved_sizes} parameter tensors, this optimizer has {len(sizes)} "
                f"with {sizes} (projection groups included, which train() adds); build the "
                "optimizer over the same parameters and groups as the first run"
            )
        for index, (saved, group) in enumerate(zip(saved_groups, groups)):
            saved_options, options = set(saved) - {"params"}, set(group) - {"params"}
            # A torch upgrade may add an option (or drop one); another class differs both ways.
            if saved_options - options and options - saved_options:
                raise ValueError(
                    f"cannot resume: param group {index} was saved with the options "
                    f"{sorted(saved_options)}, this optimizer's are {sorted(options)}: it was "
                    f"saved by another optimizer class than {type(self.wrapped).__name__}; "
                    "resume with the optimizer the run was started with"
                )


class SchedulerPart(_ClassCheckedPart):
    """The LR scheduler."""

    role = "LR scheduler"
