"""Errors raised inside the user's code that the library calls: say which call it was.

The loop calls the user's models, adaptors, callback, batch post-processor and scheduler class.
When such a call fails because the library called it with arguments it does not take (a dict
batch key the model's ``forward`` lacks, ``callback(step)`` without ``model``), the error is
re-raised as a ``TypeError`` that says how the library calls it and what to change. Any other
exception is the user's own: it propagates unchanged, with a note (shown in the traceback)
saying where it was raised.
"""

from __future__ import annotations

import os
from types import TracebackType

import torch

_OURS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MODULE_CALL = os.path.abspath(torch.nn.modules.module.__file__)


def _last_frame(traceback: TracebackType | None) -> str:
    while traceback is not None and traceback.tb_next is not None:
        traceback = traceback.tb_next
    return os.path.abspath(traceback.tb_frame.f_code.co_filename) if traceback else ""


def is_signature_mismatch(error: BaseException) -> bool:
    """Whether ``error`` is a ``TypeError`` from binding the arguments of the call itself.

    The call never entered the callee when the last frame of the traceback is the library's own
    (or ``nn.Module.__call__``, which binds ``forward``'s arguments).
    """
    if not isinstance(error, TypeError) or "argument" not in str(error):
        return False
    last = _last_frame(error.__traceback__)
    return last.startswith(_OURS + os.sep) or last == _MODULE_CALL


def add_note(error: BaseException, note: str) -> None:
    """Adds ``note`` to the traceback display of ``error`` (Python >= 3.11; else nothing)."""
    if hasattr(error, "add_note"):
        error.add_note(note)


def describe_value(value: object) -> str:
    """A short description of a batch or model output for messages."""
    if isinstance(value, dict):
        keys = ", ".join(map(repr, list(value)[:8]))
        return f"a {type(value).__name__} with keys [{keys}]"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} item(s)"
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"
