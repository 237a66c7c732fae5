"""Google-style docstring sections shared by several functions, written once.

Functions that take the same arguments, return the same thing and raise for the same reasons (the
KD losses, the top-k KD forms) keep only what is their own in their docstrings; a decorator made by
:func:`with_sections` completes each ``__doc__`` at import time with the shared sections, in the
style of pandas' ``Appender``, so ``help()`` and Sphinx (napoleon) show every section.
"""

from __future__ import annotations

import inspect
import re
import textwrap
from typing import Callable, TypeVar

_Function = TypeVar("_Function", bound=Callable)

_HEADER = re.compile(r"[A-Z][A-Za-z ]*:")


def _sections(doc: str) -> tuple[list[str], dict[str, list[str]]]:
    """The cleaned docstring's lines before its first section, and each section's body lines."""
    preamble: list[str] = []
    sections: dict[str, list[str]] = {}
    body = preamble
    for line in inspect.cleandoc(doc).splitlines():
        if _HEADER.fullmatch(line):
            body = sections.setdefault(line, [])
        else:
            body.append(line)
    return preamble, sections


def _text(lines: list[str]) -> str:
    return textwrap.dedent("\n".join(lines)).strip()


def with_sections(
    *, args: str = "", returns: str = "", raises: str = ""
) -> Callable[[_Function], _Function]:
    """A decorator that completes a function's docstring with shared sections.

    The shared ``args`` come first in the Args section, before the function's own; the shared
    ``returns`` and ``raises`` are used where the function's docstring has no such section. Its
    other sections (an Example, say) follow.

    Args:
        args: Args entries (unindented names, continuation lines indented by four spaces).
        returns: the Returns text.
        raises: the Raises entries.

    Returns:
        The decorator; it sets ``__doc__`` and returns the function itself.
    """

    def complete(function: _Function) -> _Function:
        if function.__doc__ is None:  # python -OO: docstrings are stripped, leave them so
            return function
        preamble, own = _sections(function.__doc__)
        merged = {
            "Args:": "\n".join(filter(None, (_text([args]), _text(own.pop("Args:", []))))),
            "Returns:": _text(own.pop("Returns:", [])) or _text([returns]),
            "Raises:": _text(own.pop("Raises:", [])) or _text([raises]),
        }
        merged.update((header, _text(body)) for header, body in own.items())
        parts = [_text(preamble)] + [
            f"{header}\n{textwrap.indent(text, '    ')}" for header, text in merged.items() if text
        ]
        function.__doc__ = "\n\n".join(parts) + "\n"
        return function

    return complete
