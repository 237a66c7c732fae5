"""Resumable checkpoints: a run stopped and resumed ends with the weights of an unstopped run."""

import os
import shutil

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from textbrewer import BasicDistiller, DistillationConfig, TrainingConfig


class Interrupted(Exception):
    pass


def stop_after(batches):  # a batch_postprocessor that simulates a crash
    seen = []

    def postprocess(batch):
        seen.append(1)
        if len(seen) > batches:
            raise Interrupted
        return batch

    return postprocess


def adaptor(batch, outputs):
    return {"logits": outputs}


def build(output_dir):
    """Everything a run needs, built the same way each time the script starts."""
    torch.manual_seed(0)
    teacher, student = (
        nn.Linear(8, 4),
        nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.1), nn.Linear(8, 4)),
    )
    data = DataLoader(TensorDataset(torch.randn(40, 8)), batch_size=4, shuffle=True)
    config = TrainingConfig(
        device="cpu", output_dir=output_dir, save_training_state=True, progress_bar=False
    )
    distiller = BasicDistiller(config, DistillationConfig(), teacher, student, adaptor, adaptor)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5)
    return distiller, student, optimizer, scheduler, data


shutil.rmtree("resume_demo", ignore_errors=True)

# An uninterrupted run: 3 epochs of 10 steps.
distiller, student, optimizer, scheduler, data = build("resume_demo/full")
distiller.train(optimizer, scheduler, data, num_epochs=3)
uninterrupted = student.state_dict()

# The same run, stopped in the middle of epoch 2 (after the checkpoint of step 10) ...
distiller, student, optimizer, scheduler, data = build("resume_demo/stopped")
try:
    distiller.train(optimizer, scheduler, data, num_epochs=3, batch_postprocessor=stop_after(15))
except Interrupted:
    print("stopped; saved:", sorted(os.listdir("resume_demo/stopped")))  # gs10.pkl, gs10.state.pt

# ... and resumed later, in a new process: build everything as before, then resume_from.
distiller, student, optimizer, scheduler, data = build("resume_demo/stopped")
distiller.train(optimizer, scheduler, data, num_epochs=3, resume_from="resume_demo/stopped")

same = all(torch.equal(uninterrupted[k], v) for k, v in student.state_dict().items())
print("identical weights:", same)
