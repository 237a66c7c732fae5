"""What TextBrewer 0.2.x accepted and this library keeps accepting: shared coercions and aliases.

The rule (SPEC, "compatibility before strictness"): an input 0.2.x accepted and trained on
correctly keeps working; it is coerced to the form the library uses, with a warning only where
something is lost. The table of every such input is in ``docs/migration.rst``.

The 0.2.x module paths (``textbrewer.distiller_utils``, ``textbrewer.distiller_basic``, ...)
are thin modules of aliases over the one implementation, never a second copy; the subclass
protocol of 0.2.x lives in ``distillers/_protocol.py``. This module imports nothing from the
package beyond ``_validation``, so the configurations can use it without an import cycle.
"""

from __future__ import annotations

import numbers
import os
import sys
import warnings
from typing import Any

from textbrewer._validation import Problems, plain_number

_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def warn_user(message: str) -> None:
    """``warnings.warn(message)`` pointing at the first frame outside the package.

    So the warning names the user's line (their ``train()`` call or config), however deep in
    the library it was raised. Generated code (a dataclass ``__init__``) counts as the package.
    """
    level, frame = 2, sys._getframe(1)
    while frame is not None and (
        frame.f_code.co_filename.startswith(_PACKAGE) or frame.f_code.co_filename == "<string>"
    ):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)


def checked_ckpt_steps(value: Any, problems: Problems) -> Any:
    """``TrainingConfig.ckpt_steps``: ``None``, or a number whose ``int()`` is >= 1.

    TextBrewer 0.2.x scripts pass argparse ``type=float`` values; 0.2.x saved every
    ``int(ckpt_steps)`` steps. A whole float becomes an int; a fraction is kept (so the config
    round-trips) and warned about, since only its whole part counts.
    """
    if value is None:
        return None
    value = plain_number(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        problems.add(f"`ckpt_steps`={value!r} must be a number of optimizer steps, e.g. 500")
        return None
    if not value >= 1:
        problems.add(f"`ckpt_steps`={value!r} must be >= 1 (a number of optimizer steps)")
        return None
    if value == int(value):
        return int(value)
    warn_user(
        f"TrainingConfig `ckpt_steps`={value!r} is not a whole number: as TextBrewer 0.2.x did, "
        f"a checkpoint is saved every int(ckpt_steps)={int(value)} optimizer steps"
    )
    return value


def none_as_no_scheduler(config: Any, field: str) -> Any:
    """Reads ``None`` in a scheduler field as ``'none'`` (no scheduler) and stores that."""
    if getattr(config, field) is None:
        setattr(config, field, "none")
    return getattr(config, field)


def layer_index(value: Any) -> Any:
    """A match's ``layer_T``/``layer_S`` element as an int where it plainly is one.

    numpy ints (layer lists built with numpy), whole floats and strings of digits (hand-written
    JSON) become ints; anything else is returned unchanged for the caller to reject.
    """
    value = plain_number(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


def layer_spec(value: Any) -> Any:
    """``layer_T``/``layer_S``: one index or a pair (a tuple becomes a list), coerced."""
    if isinstance(value, (list, tuple)):
        return [layer_index(item) for item in value]
    return layer_index(value)
