"""Which teacher features a cache stores: the layers the configured intermediate matches read."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from textbrewer.configurations import DistillationConfig

FEATURE_KEYS = ("hidden", "attention")


def teacher_selection(distill_config: DistillationConfig | None, teachers: int) -> list[dict]:
    """Per teacher, ``{'hidden': [layers], 'attention': [layers]}`` that the matches read.

    A match reads ``layer_T`` (one index, or the two of a two-layer loss) of its ``feature`` from
    the teacher its ``teacher`` index names (teacher 0 when it names none).

    Args:
        distill_config: the distillation settings (``None``: no matches, logits only).
        teachers: how many teachers the cache holds.

    Raises:
        ValueError: a match names a teacher the cache does not have.
    """
    selection: list[dict[str, set[int]]] = [
        {key: set() for key in FEATURE_KEYS} for _ in range(teachers)
    ]
    matches = (distill_config.intermediate_matches or []) if distill_config is not None else []
    for index, match in enumerate(matches):
        teacher = match.teacher or 0
        if not 0 <= teacher < teachers:
            raise ValueError(
                f"intermediate_matches[{index}] reads teacher {teacher}, but the teacher cache "
                f"holds {teachers} teacher(s)"
            )
        layers = match.layer_T if isinstance(match.layer_T, list) else [match.layer_T]
        selection[teacher][match.feature].update(layers)
    return [{key: sorted(layers[key]) for key in FEATURE_KEYS} for layers in selection]


def fingerprint(selection: list[dict]) -> str:
    """A short stable hash of a selection (what the manifest records and a user compares)."""
    text = json.dumps(selection, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def describe(selection: list[dict[str, Any]]) -> str:
    """``"teacher 0: hidden layers [0, 3], attention layers []"`` for messages."""
    return "; ".join(
        f"teacher {index}: hidden layers {layers['hidden']}, attention layers {layers['attention']}"
        for index, layers in enumerate(selection)
    )
