"""Checks shared by the configurations: each records a readable problem instead of raising.

Collecting problems lets a config report every mistake at once. Messages follow one pattern:
the field in backticks, the value with ``repr``, and what would be accepted.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any


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

    def integer(self, field: str, value: Any, minimum: int | None = None) -> bool:
        """Checks that ``value`` is an int (not a bool) no smaller than ``minimum``."""
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            self.add(f"`{field}`={value!r} must be an int")
            return False
        if minimum is not None and value < minimum:
            self.add(f"`{field}`={value!r} must be an int >= {minimum}")
            return False
        return True

    def number(self, field: str, value: Any, positive: bool = False) -> bool:
        """Checks that ``value`` is a real number (not a bool), optionally > 0."""
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            self.add(f"`{field}`={value!r} must be a number (int or float)")
            return False
        if positive and not value > 0:
            self.add(f"`{field}`={value!r} must be a number > 0")
            return False
        return True

    def boolean(self, field: str, value: Any) -> bool:
        """Checks that ``value`` is a bool."""
        if not isinstance(value, bool):
            self.add(f"`{field}`={value!r} must be True or False")
            return False
        return True

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
