"""Atomic checkpoint files, RNG states and the opt-in resumable training state."""

from __future__ import annotations

import contextlib
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_SUFFIX = ".state.pt"
_CHECKPOINT_NAME = re.compile(r"^gs(\d+)\.pkl$")


def checkpoint_path(output_dir: str | os.PathLike, global_step: int) -> Path:
    """``output_dir/gs{global_step}.pkl``, the student's state dict at that step."""
    return Path(output_dir) / f"gs{global_step}.pkl"


def state_path_for(checkpoint: str | os.PathLike) -> Path:
    """The training-state file written beside ``gs{N}.pkl``: ``gs{N}.state.pt``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name.removesuffix(".pkl") + STATE_SUFFIX)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` that never leaves a truncated file at ``path``.

    Writes a temporary file in the same directory, flushes it to disk, then renames it over
    ``path`` (``os.replace`` is atomic on POSIX and Windows). If anything fails, the temporary file
    is removed and an earlier file at ``path`` is left untouched.
    """
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "wb") as writer:
            torch.save(obj, writer)
            writer.flush()
            os.fsync(writer.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


def capture_rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's (CPU and CUDA) global generators."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restores the generators captured by ``capture_rng_state``."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def find_state_file(resume_from: str | os.PathLike) -> Path:
    """Resolves ``resume_from`` to a training-state file.

    ``resume_from`` is a ``gs{N}.pkl``, a ``gs{N}.state.pt``, or an output directory (meaning its
    latest resumable checkpoint).

    Raises:
        FileNotFoundError: nothing resumable there, with the reason.
    """
    path = Path(resume_from)
    if path.is_dir():
        steps = sorted(
            int(match.group(1))
            for name in os.listdir(path)
            if (match := _CHECKPOINT_NAME.match(name)) and state_path_for(path / name).exists()
        )
        if not steps:
            raise FileNotFoundError(
                f"`resume_from`={str(resume_from)!r}: the directory holds no gs{{N}}.pkl with a "
                f"gs{{N}}{STATE_SUFFIX} beside it (train with save_training_state=True)"
            )
        return state_path_for(checkpoint_path(path, steps[-1]))
    state = path if path.name.endswith(STATE_SUFFIX) else state_path_for(path)
    if not state.exists():
        raise FileNotFoundError(
            f"`resume_from`={str(resume_from)!r}: no training state at {str(state)!r}; checkpoints "
            "carry one only when TrainingConfig(save_training_state=True)"
        )
    return state


def load_state_file(path: Path) -> dict[str, Any]:
    """Loads a training-state file onto the CPU."""
    # The file holds optimizer state, RNG states and Python objects of our own making.
    return torch.load(path, map_location="cpu", weights_only=False)
