"""Atomic checkpoint files, RNG states and the opt-in resumable training state."""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import random
import re
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import torch

from textbrewer.training.call_errors import add_note

STATE_SUFFIX = ".state.pt"
_CHECKPOINT_NAME = re.compile(r"^gs(\d+)\.pkl$")
_TEMPORARY_SUFFIX = ".tmp"
# atomic_save's temporaries: ".gs12.pkl.<random>.tmp" and ".gs12.state.pt.<random>.tmp" (the
# random part is mkstemp's 8 characters in files of earlier versions, 8 hex digits now).
_TEMPORARY_NAME = re.compile(r"^\.gs\d+\.(?:pkl|state\.pt)\.[A-Za-z0-9_]{6,16}\.tmp$")
_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation


def checkpoint_path(output_dir: str | os.PathLike, global_step: int) -> Path:
    """``output_dir/gs{global_step}.pkl``, the student's state dict at that step."""
    return Path(output_dir) / f"gs{global_step}.pkl"


def state_path_for(checkpoint: str | os.PathLike) -> Path:
    """The training-state file written beside ``gs{N}.pkl``: ``gs{N}.state.pt``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name.removesuffix(".pkl") + STATE_SUFFIX)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` that never leaves a truncated file at ``path``.

    Writes a temporary file ``.{name}.{random}.tmp`` in the same directory, flushes it to disk,
    then renames it over ``path`` (``os.replace`` is atomic on POSIX and Windows). If anything
    fails, the temporary file is removed and an earlier file at ``path`` is left untouched. The
    file gets the permissions ``torch.save(obj, path)`` would give it (``0o666`` less the umask,
    typically ``0o644``), so a teammate or a serving container can read it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)  # removed while training: recreate it
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}{_TEMPORARY_SUFFIX}")
    # os.open with mode 0o666 lets the umask decide, as open() does; tempfile.mkstemp would
    # give 0o600 whatever the umask.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as writer:
            torch.save(obj, writer)
            writer.flush()
            os.fsync(writer.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        if isinstance(error, OSError):  # e.g. ENOSPC, which names no file
            add_note(error, f"(while writing {str(path)!r}; an earlier file there is intact)")
        raise


def is_stale_temporary(name: str) -> bool:
    """Whether ``name`` is a temporary file of ``atomic_save`` (``.gs{N}.pkl.<random>.tmp``).

    Only checkpoint and training-state temporaries match: a file of any other name is never
    one of ours.
    """
    return _TEMPORARY_NAME.match(name) is not None


def capture_rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's (CPU and CUDA) global generators.

    Tensors and plain Python values only, so that ``torch.load(weights_only=True)`` reads them
    on every supported torch without allowing any NumPy global (torch 2.3 cannot allow one).
    """
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(keys.astype(np.int64)),  # torch's uint32 supports few ops
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restores the generators captured by ``capture_rng_state``."""
    random.setstate(state["python"])
    np.random.set_state(_numpy_state(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state(saved: Any) -> Any:
    # States written before the tensor form hold np.random.get_state()'s tuple itself.
    if not isinstance(saved, dict):
        return saved
    return (
        saved["name"],
        saved["keys"].numpy().astype(np.uint32),
        saved["position"],
        saved["has_gauss"],
        saved["cached_gaussian"],
    )


def find_state_file(resume_from: str | os.PathLike) -> Path:
    """Resolves ``resume_from`` to a training-state file.

    ``resume_from`` is a ``gs{N}.pkl``, a ``gs{N}.state.pt``, or an output directory (meaning its
    latest resumable checkpoint).

    Raises:
        FileNotFoundError: nothing resumable there, with the reason.
    """
    path = Path(resume_from)
    if path.is_dir():
        found = resumable_checkpoints(path)
        if not found:
            raise FileNotFoundError(
                f"`resume_from`={str(resume_from)!r}: the directory holds no gs{{N}}.pkl with a "
                f"gs{{N}}{STATE_SUFFIX} beside it (train with save_training_state=True)"
            )
        return state_path_for(found[-1])
    state = path if path.name.endswith(STATE_SUFFIX) else state_path_for(path)
    if not state.exists():
        raise FileNotFoundError(
            f"`resume_from`={str(resume_from)!r}: no training state at {str(state)!r}; checkpoints "
            "carry one only when TrainingConfig(save_training_state=True)"
        )
    return state


class CorruptStateError(ValueError):
    """A training-state file that cannot be read (truncated, damaged, or not one of ours)."""


def _numpy_rng_globals() -> list[Any]:
    # States written before the tensor form hold np.random.get_state()'s uint32 ndarray: these
    # rebuild it, and run no other code (torch >= 2.4 can allow them).
    # Imported by name: under numpy 1.26, `np._core` can be an attribute (once anything imported
    # that forward-compatibility package) without its `multiarray` submodule loaded.
    try:
        multiarray = importlib.import_module("numpy._core.multiarray")  # numpy >= 2, 1.26's shim
    except ImportError:
        multiarray = importlib.import_module("numpy.core.multiarray")
    return [np.ndarray, np.dtype, multiarray._reconstruct, type(np.dtype(np.uint32))]


def load_state_file(path: Path) -> dict[str, Any]:
    """Loads a training-state file onto the CPU, with ``torch.load(weights_only=True)``.

    Only tensors and plain Python containers and numbers are accepted (and, in files written
    before the RNG states were stored as tensors, NumPy's RNG state), so a state file someone
    handed you cannot run code when it is loaded. Globals you allow with
    ``torch.serialization.add_safe_globals`` (e.g. a class your ``extra_state()`` saves) are
    accepted too.

    Raises:
        CorruptStateError: the file is truncated, damaged, or holds an object that
            ``weights_only`` loading refuses; the message names the file.
    """
    try:
        with _safe_globals(_numpy_rng_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = re.search(
            r"(?:Unsupported global: |unsupported )GLOBAL (\S+)|Unsupported class (\S+)",
            str(error),
        )
        if refused:
            raise _refused(path, refused.group(1) or refused.group(2)) from error
        raise _corrupt(path, error) from error
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise _corrupt(path, error) from error
    if not isinstance(state, dict) or ("parts" not in state and "format" not in state):
        raise CorruptStateError(
            f"{str(path)!r} is not a textbrewer training state (it holds "
            f"{type(state).__name__}); resume from a gs{{N}}{STATE_SUFFIX} written with "
            "TrainingConfig(save_training_state=True)"
        )
    return state


def load_resumable(path: Path) -> dict[str, Any]:
    """``load_state_file``, and when the file is unreadable, names the earlier resumable ones.

    Raises:
        CorruptStateError: naming the file and, if there is one, the latest earlier checkpoint
            of the same directory that has a training state, to pass as ``resume_from``.
    """
    try:
        return load_state_file(path)
    except CorruptStateError as error:
        earlier = resumable_checkpoints(path.parent, before=_step_of(path))
        if earlier:
            hint = (
                f"; the latest earlier resumable checkpoint is {str(earlier[-1])!r}: resume "
                f"with resume_from={str(earlier[-1])!r} (or delete the damaged file, and "
                "resume_from=<output_dir> finds it)"
            )
        else:
            hint = f"; {str(path.parent)!r} holds no earlier resumable checkpoint"
        raise CorruptStateError(f"{error}{hint}") from error.__cause__


def resumable_checkpoints(directory: Path, before: int | None = None) -> list[Path]:
    """The ``gs{N}.pkl`` files of ``directory`` that have a training state, by step."""
    if not directory.is_dir():
        return []
    steps = sorted(
        int(match.group(1))
        for name in os.listdir(directory)
        if (match := _CHECKPOINT_NAME.match(name))
        and state_path_for(directory / name).exists()
        and (before is None or int(match.group(1)) < before)
    )
    return [checkpoint_path(directory, step) for step in steps]


def _step_of(state_file: Path) -> int | None:
    match = re.match(r"^gs(\d+)" + re.escape(STATE_SUFFIX) + "$", state_file.name)
    return int(match.group(1)) if match else None


def _corrupt(path: Path, error: BaseException) -> CorruptStateError:
    size = path.stat().st_size if path.exists() else 0
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return CorruptStateError(
        f"the training state {str(path)!r} ({size} bytes) is truncated or damaged and cannot be "
        f"read ({type(error).__name__}: {first_line[:200]})"
    )


def _refused(path: Path, name: str) -> CorruptStateError:
    if hasattr(torch.serialization, "add_safe_globals"):
        remedy = f"allow the class first: torch.serialization.add_safe_globals([{name}])"
    else:  # torch 2.3 has no allow-list
        remedy = "upgrade to torch >= 2.4, which can allow a class with add_safe_globals"
    return CorruptStateError(
        f"the training state {str(path)!r} holds a {name} object, which loading with "
        f"weights_only=True refuses (unpickling it could run code). If you trust the file, {remedy}"
    )


@contextlib.contextmanager
def _safe_globals(allowed: list[Any]) -> Any:
    serialization = torch.serialization
    if hasattr(serialization, "safe_globals"):  # torch >= 2.5
        with serialization.safe_globals(allowed):
            yield
        return
    if hasattr(serialization, "add_safe_globals"):  # torch 2.4
        serialization.add_safe_globals(allowed)
    yield
