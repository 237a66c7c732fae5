"""A preemptible job: trains 8 steps with resume_from='auto', and can SIGKILL itself.

    python tests/distillers/kill_job.py WORKDIR [kill-at-batch N | kill-in-write NAME]

``kill-at-batch N`` kills the process (SIGKILL: no cleanup, no finally) when the N-th batch is
post-processed, in the middle of a run; ``kill-in-write NAME`` kills it in the middle of writing
the file NAME (e.g. ``gs4.state.pt``), after part of it reached the disk. Without them, or
when restarted, it trains to the end and saves the final weights to WORKDIR/final.pt.
Run by tests/distillers/test_kills.py.
"""

import os
import signal
import sys
from pathlib import Path

import torch

import textbrewer
from tests.conftest import PROJECTED_HIDDEN_MATCH as MATCH
from tests.conftest import make_batches, make_models, simple_adaptor


def distill(workdir, batch_postprocessor=None):
    """Trains (or resumes) the job in ``workdir``; returns the student."""
    teacher, student = make_models(teacher_dim=8, student_dim=6, dropout=0.1)
    config = textbrewer.TrainingConfig(
        device="cpu",
        output_dir=str(Path(workdir) / "out"),
        ckpt_steps=2,
        gradient_accumulation_steps=2,
        save_training_state=True,
        progress_bar=False,
    )
    distiller = textbrewer.GeneralDistiller(
        config,
        textbrewer.DistillationConfig(
            hard_label_weight=1,
            kd_loss_weight_scheduler="linear_decay",
            intermediate_matches=[MATCH],
        ),
        teacher,
        student,
        simple_adaptor,
        simple_adaptor,
    )
    distiller.projs.double()
    optimizer = torch.optim.AdamW(student.parameters(), lr=0.01)
    torch.manual_seed(1)  # dropout draws: restored from the state file on resume
    distiller.train(
        optimizer,
        make_batches(5),
        None,
        scheduler_class=torch.optim.lr_scheduler.StepLR,
        scheduler_args={"step_size": 3, "gamma": 0.5},
        num_steps=8,
        batch_postprocessor=batch_postprocessor,
        resume_from="auto",
    )
    return student


def kill_at_batch(count):
    seen = []

    def postprocess(batch):
        seen.append(1)
        if len(seen) == count:
            os.kill(os.getpid(), signal.SIGKILL)
        return batch

    return postprocess


def kill_in_write(name):
    save = torch.save

    def killing_save(obj, file, *args, **kwargs):
        target = str(file)
        if hasattr(file, "fileno"):
            target = os.readlink(f"/proc/self/fd/{file.fileno()}")
        if f".{name}." in os.path.basename(target):  # atomic_save's temporary for `name`
            file.write(b"PK\x03\x04 half of a checkpoint")
            file.flush()
            os.fsync(file.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        return save(obj, file, *args, **kwargs)

    torch.save = killing_save


def main(workdir, how=None, value=None):
    torch.set_num_threads(1)
    postprocess = None
    if how == "kill-at-batch":
        postprocess = kill_at_batch(int(value))
    elif how == "kill-in-write":
        kill_in_write(value)
    student = distill(workdir, postprocess)
    torch.save(student.state_dict(), Path(workdir) / "final.pt")


if __name__ == "__main__":
    main(*sys.argv[1:])
