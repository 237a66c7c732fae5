"""Checks shared by the configurations: each records a readable problem instead of raising.

Collecting problems lets a config report every mistake at once. Messages follow one pattern:
the field in backticks, the value with ``repr``, and what would be accepted.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch


def plain_number(value: Any) -> Any:
    """A numpy scalar or 0-d tensor as the Python number it holds; anything else as is.

    TextBrewer 0.2.x used such values in arithmetic, where they act as numbers; as Python
    numbers they also keep a config JSON-serialisable.
    """
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad:
        return value.item()
    return value


class ConfigError(ValueError, TypeError):
    """A configuration value is invalid (both a ``ValueError`` and a ``TypeError``).

    The message lists every problem found, one per line, each naming the field, the value and what
    is allowed.
    """


def format_known(names: Iterable[str]) -> str:
    """Returns ``"'a', 'b', 'c'"`` for the sorted names, for "known: ..." message parts."""
    return ", ".join(repr(name) for name in sorted(names, key=str))


class Problems:
    """Collects problems found while validating one object, then raises them together."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.messages: list[str] = []

    def add(self, message: str) -> None:
        """Records one problem."""
        self.messages.append(message)

    def raise_if_any(self) -> None:
        """Raises a ``ConfigError`` listing every recorded problem, if there is one."""
        if len(self.messages) == 1:
            raise ConfigError(f"{self.owner}: {self.messages[0]}")
        if self.messages:
            listed = "\n".join(f"  - {message}" for message in self.messages)
            raise ConfigError(f"{self.owner}: {len(self.messages)} problems:\n{listed}")

    def whole(self, field: str, value: Any, minimum: int | None = None) -> int | None:
        """Returns ``value`` as an int no smaller than ``minimum``, or records a problem.

        What TextBrewer 0.2.x counted with is accepted: ints, numpy ints, bools and floats with
        a whole value (``2.0``, as argparse ``type=float`` gives). A fraction is a problem.
        """
        value = plain_number(value)
        if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
            whole = value == int(value) if math.isfinite(value) else False
            if not whole:
                self.add(f"`{field}`={value!r} must be a whole number (an int such as 2)")
                return None
        elif not isinstance(value, numbers.Integral):
            self.add(f"`{field}`={value!r} must be an int")
            return None
        value = int(value)
        if minimum is not None and value < minimum:
            self.add(f"`{field}`={value!r} must be an int >= {minimum}")
            return None
        return value

    def integer(self, field: str, value: Any, minimum: int | None = None) -> bool:
        """Checks what ``whole`` accepts; returns whether it did."""
        return self.whole(field, value, minimum) is not None

    def real(self, field: str, value: Any, positive: bool = False) -> float | int | None:
        """Returns ``value`` as a Python number (numpy scalars unwrapped), or records a problem.

        Bools are refused: a weight or temperature of ``True`` is a mistake, not a number.
        """
        value = plain_number(value)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            self.add(f"`{field}`={value!r} must be a number (int or float)")
            return None
        if positive and not value > 0:
            self.add(f"`{field}`={value!r} must be a number > 0")
            return None
        return value

    def number(self, field: str, value: Any, positive: bool = False) -> bool:
        """Checks what ``real`` accepts; returns whether it did."""
        return self.real(field, value, positive) is not None

    def flag(self, field: str, value: Any) -> bool | None:
        """Returns ``value`` as a bool, or records a problem.

        TextBrewer 0.2.x only tested these for truth, so numpy bools and the ints 0 and 1 are
        read as the bools they mean; anything else (e.g. the string ``'False'``, which is true)
        would silently do the wrong thing and is a problem.
        """
        value = plain_number(value)
        if isinstance(value, bool):
            return value
        if isinstance(value, numbers.Integral) and value in (0, 1):
            return bool(value)
        self.add(f"`{field}`={value!r} must be True or False")
        return None

    def boolean(self, field: str, value: Any) -> bool:
        """Checks what ``flag`` accepts; returns whether it did."""
        return self.flag(field, value) is not None

    def choice(self, field: str, value: Any, allowed: Iterable[Any], where: str = "") -> bool:
        """Checks that ``value`` is one of ``allowed`` (a registry, or a list of choices)."""
        allowed = list(allowed)
        try:
            if value in allowed:
                return True
        except TypeError:  # an unhashable value against a dict's keys
            pass
        place = f" is not in {where}" if where else " is not allowed"
        self.add(f"`{field}`={value!r}{place} (known: {format_known(allowed)})")
        return False


def check_keys(owner: str, given: Iterable[str], allowed: Iterable[str]) -> None:
    """Raises a ``ConfigError`` naming every key of ``given`` that is not in ``allowed``."""
    allowed = list(allowed)
    unknown = [key for key in given if key not in allowed]
    if unknown:
        raise ConfigError(
            f"{owner}: unknown key(s) {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(map(repr, allowed))})"
        )
