"""A distillation job as a user launches it with torchrun: no `local_rank` anywhere.

    python -m torch.distributed.run --nproc_per_node 2 tests/distillers/torchrun_job.py \
        WORKDIR NUM_STEPS [RESUME_FROM] [CRASH_AT_STEP]

Each rank trains on its half of every batch of 4 and saves its final weights and the list of
files it wrote to WORKDIR/results/rank{R}.pt. With CRASH_AT_STEP, the callback of that
checkpoint step kills the job with an exception (after gs{N}.pkl, before its training state).
Run by tests/distillers/test_torchrun.py.
"""

import io
import logging
import os
import sys
from pathlib import Path

import torch

import textbrewer
from tests.conftest import PROJECTED_HIDDEN_MATCH as MATCH
from tests.conftest import make_batches, make_models, simple_adaptor
from textbrewer.training import checkpoint


def full_batches():
    """Three batches of 4, unpadded so that each half's mean is half of the whole's."""
    return [
        (ids.clamp(min=1), torch.ones_like(mask), labels)
        for ids, mask, labels in make_batches(3, batch_size=4)
    ]


def distill(workdir, batches, num_steps, resume_from=None, callback=None):
    """Builds and trains the job; returns (student, projections)."""
    teacher, student = make_models(teacher_dim=8, student_dim=6)
    config = textbrewer.TrainingConfig(
        device="cpu",
        output_dir=str(Path(workdir) / "out"),
        ckpt_steps=2,
        save_training_state=True,
        progress_bar=False,
    )
    distiller = textbrewer.GeneralDistiller(
        config,
        textbrewer.DistillationConfig(hard_label_weight=1, intermediate_matches=[MATCH]),
        teacher,
        student,
        simple_adaptor,
        simple_adaptor,
    )
    distiller.projs.double()
    distiller.train(
        torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9),
        None,
        batches,
        None,
        num_steps=num_steps,
        callback=callback,
        resume_from=resume_from,
    )
    return student, distiller.projs


def main(workdir, num_steps, resume_from=None, crash_at=None):
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    written, saves = [], []
    save, atomic_save = torch.save, checkpoint.atomic_save

    def recording_save(obj, file, *args, **kwargs):
        if not isinstance(file, io.BytesIO):  # not the buffers of torch.distributed's collectives
            saves.append(str(file))
        return save(obj, file, *args, **kwargs)

    def recording_atomic_save(obj, path):
        written.append(Path(path).name)
        return atomic_save(obj, path)

    # Which process writes which file.
    torch.save, checkpoint.atomic_save = recording_save, recording_atomic_save

    def callback(model, step):
        if crash_at is not None and step == crash_at:
            raise SystemExit(f"rank {rank}: simulated crash at step {step}")

    halves = [tuple(t[rank * 2 : (rank + 1) * 2] for t in batch) for batch in full_batches()]
    student, projs = distill(workdir, halves, num_steps, resume_from, callback)
    torch.save, checkpoint.atomic_save = save, atomic_save
    results = Path(workdir) / "results"
    results.mkdir(exist_ok=True)
    save(
        {
            "student": student.state_dict(),
            "projs": projs.state_dict(),
            "written": written,
            "saves": saves,
            "distributed": torch.distributed.is_initialized(),
            "world_size": torch.distributed.get_world_size(),
        },
        results / f"rank{rank}.pt",
    )


if __name__ == "__main__":
    arguments = sys.argv[1:]
    main(
        arguments[0],
        int(arguments[1]),
        arguments[2] if len(arguments) > 2 and arguments[2] != "-" else None,
        int(arguments[3]) if len(arguments) > 3 else None,
    )
