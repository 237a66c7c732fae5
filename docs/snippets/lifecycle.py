"""A preemptible job: evaluate, keep the last 2 and the best, stop early, restart with 'auto'."""

import os
import shutil

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from textbrewer import BasicDistiller, DistillationConfig, TrainingConfig
from textbrewer.utils import tqdm_print


class Preempted(Exception):
    pass


def preempt_after(batches):  # a batch_postprocessor that simulates the job being killed
    seen = []

    def postprocess(batch):
        seen.append(1)
        if len(seen) > batches:
            raise Preempted
        return batch

    return postprocess


def adaptor(batch, outputs):
    return {"logits": outputs}


def evaluate(model, step):
    """Agreement with the teacher on a dev set; printed above the progress bar, and returned."""
    model.eval()
    with torch.no_grad():
        agreement = (model(dev_x).argmax(-1) == teacher(dev_x).argmax(-1)).float().mean().item()
    tqdm_print(f"step {step}: agreement {agreement:.3f}")
    return {"agreement": agreement}


torch.manual_seed(0)
teacher = nn.Linear(8, 4)
dev_x = torch.randn(200, 8)
data = DataLoader(TensorDataset(torch.randn(64, 8)), batch_size=4, shuffle=True)


def job(**train_kwargs):
    """What the job script does each time it (re)starts: build everything, train."""
    torch.manual_seed(1)
    student = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 4))
    config = TrainingConfig(
        device="cpu",
        output_dir="lifecycle_demo",
        ckpt_steps=10,
        eval_steps=5,  # evaluate every 5 steps, save every 10
        save_training_state=True,  # needed to resume
        save_total_limit=2,  # keep the last 2 checkpoints ...
        metric_for_best_model="agreement",  # ... and the best one
        early_stopping_patience=4,  # stop after 4 evaluations without improvement
        progress_bar=False,
    )
    distiller = BasicDistiller(config, DistillationConfig(), teacher, student, adaptor, adaptor)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    return distiller.train(
        optimizer, None, data, num_steps=200, callback=evaluate, resume_from="auto", **train_kwargs
    )


shutil.rmtree("lifecycle_demo", ignore_errors=True)
try:
    job(batch_postprocessor=preempt_after(37))  # first start: nothing to resume, starts fresh
except Preempted:
    print("preempted; on disk:", sorted(os.listdir("lifecycle_demo")))
result = job()  # the restart resumes from the latest checkpoint: gs35, the best so far

print("stopped early:", result.stop_reason)
print("best:", result.best_metric, result.best_checkpoint)
print("on disk:", sorted(os.listdir("lifecycle_demo")))  # the last 2 and the best
