"""What a real job meets besides bad inputs: unwritable directories, kills, NaN weights, Ctrl-C.

* ``prepare_output_dir``: when ``train()`` starts, ``output_dir`` must be writable (reported
  then, not at the first checkpoint an hour later), and temporary files a killed checkpoint write
  left behind are removed (only ``atomic_save``'s own ``.gs{N}.pkl.<random>.tmp`` names).
* ``check_finite_weights``: a finite loss with a NaN/inf gradient makes NaN weights; they are
  never written as a checkpoint.
* ``report_interrupt``: Ctrl-C writes the pending tensorboard scalars and says how to resume.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from textbrewer.training import checkpoint as ckpt

logger = logging.getLogger(__name__)


class NonFiniteWeightsError(FloatingPointError):
    """The weights became NaN or infinite; the checkpoint of that step was not written."""


def prepare_output_dir(output_dir: str | os.PathLike, is_main: bool, fresh: bool = False) -> None:
    """Checks that ``output_dir`` is writable and removes stale checkpoint temporaries (rank 0).

    A fresh run (``fresh``: no ``resume_from``) into a directory that already holds checkpoints
    gets a warning: its files of the same steps would replace the earlier run's.

    Raises:
        PermissionError: the directory cannot be created or written to (another ``OSError``
            subclass when that is what the system reported, e.g. ``NotADirectoryError``).
    """
    if not is_main:
        return
    path = Path(output_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        # An unnamed temporary file (O_TMPFILE where available): nothing is left if we die here.
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        kind = type(error) if type(error) is not OSError else PermissionError
        raise kind(
            f"TrainingConfig `output_dir`={str(output_dir)!r} cannot be written to "
            f"({error.strerror or error}): checkpoints gs{{N}}.pkl are saved there. Choose a "
            "directory you can write to, or fix its permissions, before training"
        ) from error
    remove_stale_temporaries(path)
    if fresh:
        _warn_earlier_checkpoints(path)


def _warn_earlier_checkpoints(directory: Path) -> None:
    steps = sorted(_step(path) for path in directory.glob("gs*.pkl") if _step(path) >= 0)
    if steps:
        logger.warning(
            "output_dir %s already holds %d checkpoint(s) (gs%d.pkl ... gs%d.pkl) and this run "
            "starts fresh: its checkpoints replace those of the same steps. Pass "
            "resume_from='auto' to continue the earlier run, or use another output_dir",
            directory,
            len(steps),
            steps[0],
            steps[-1],
        )


def remove_stale_temporaries(directory: Path) -> list[str]:
    """Deletes ``atomic_save`` temporaries left by a killed write; returns their names.

    Only names of the form ``.gs{N}.pkl.<random>.tmp`` / ``.gs{N}.state.pt.<random>.tmp``
    are touched; anything else in the directory is never deleted.
    """
    removed = []
    for name in sorted(os.listdir(directory)):
        if ckpt.is_stale_temporary(name):
            try:
                (directory / name).unlink()
            except FileNotFoundError:
                continue
            removed.append(name)
    if removed:
        logger.info(
            "Removed %d temporary file(s) left by an interrupted checkpoint write in %s: %s",
            len(removed),
            directory,
            ", ".join(removed),
        )
    return removed


def check_finite_weights(modules: dict[str, nn.Module], checkpoint: str | os.PathLike) -> None:
    """Raises before a checkpoint is written from weights that hold NaN or inf.

    One read-back per checkpoint (the save itself copies the weights anyway). Every rank checks
    its own copy (they are equal under DDP), so every rank stops together.

    Args:
        modules: name -> module whose floating-point state is checked (student, projections).
        checkpoint: the ``gs{N}.pkl`` about to be written.

    Raises:
        NonFiniteWeightsError: naming the step, the first bad tensors and what happens next.
    """
    named = [
        (f"{owner}.{name}" if owner else name, tensor)
        for owner, module in modules.items()
        for name, tensor in module.state_dict().items()
        if tensor.is_floating_point() or tensor.is_complex()
    ]
    if not named:
        return
    flags = torch.stack([torch.isfinite(tensor).all().to("cpu") for _, tensor in named])
    if bool(flags.all()):
        return
    bad = [name for (name, _), finite in zip(named, flags.tolist()) if not finite]
    listed = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    checkpoint = Path(checkpoint)
    earlier = [
        path
        for path in sorted(checkpoint.parent.glob("gs*.pkl"), key=_step)
        if _step(path) >= 0 and path != checkpoint
    ]
    latest = f"the latest is {str(earlier[-1])!r}" if earlier else "none was written yet"
    raise NonFiniteWeightsError(
        f"the weights hold NaN or inf at optimizer step {_step(checkpoint)} ({listed}): "
        f"{checkpoint.name} was NOT written and training stopped. The loss was finite, so a "
        "gradient was not: lower the learning rate, clip with train(..., max_grad_norm=1.0), or "
        "use mixed_precision='bf16' / fp16 loss scaling. Checkpoints written earlier are intact "
        f"({latest})"
    )


def _step(path: Path) -> int:
    digits = path.name[2:-4]
    return int(digits) if digits.isdigit() else -1


def report_interrupt(session: Any) -> None:
    """On Ctrl-C: writes the pending scalars and logs how to resume (rank 0).

    The caller closes the session (which closes the tensorboard writer) and re-raises.
    """
    # No collective here (engine None): another rank may be dead or interrupted too. A
    # non-finite loss among the pending ones leaves nothing more to write.
    with contextlib.suppress(FloatingPointError):
        session.log.flush(None)
    if not session.engine.is_main:
        return
    step = session.progress.global_step
    output_dir = Path(session.config.output_dir)
    resumable = ckpt.resumable_checkpoints(output_dir)
    if resumable:
        logger.warning(
            "Training interrupted at optimizer step %d. To continue from the last resumable "
            "checkpoint, call train() with the same arguments plus resume_from=%r "
            "(or resume_from=True for the latest in output_dir)",
            step,
            str(resumable[-1]),
        )
    elif session.config.save_training_state:
        logger.warning(
            "Training interrupted at optimizer step %d, before any resumable checkpoint was "
            "written to %s: a restart begins from the start",
            step,
            output_dir,
        )
    else:
        logger.warning(
            "Training interrupted at optimizer step %d. Its checkpoints cannot be resumed from: "
            "TrainingConfig(save_training_state=True) makes them resumable",
            step,
        )
