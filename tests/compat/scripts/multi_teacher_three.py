"""A TextBrewer 0.2.x-style script: MultiTeacherDistiller over three teachers.

The teachers differ in width; their logits are averaged (0.2.x's mean) and distilled with an
int temperature, plus the hard-label loss; the 0.2.x `train()` call with a float epoch count.
"""

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from textbrewer import DistillationConfig, MultiTeacherDistiller, TrainingConfig

torch.set_default_dtype(torch.float64)


class Classifier(nn.Module):
    def __init__(self, hidden_size):
        super().__init__()
        self.hidden = nn.Linear(5, hidden_size)
        self.out = nn.Linear(hidden_size, 4)

    def forward(self, features, labels=None):
        return self.out(torch.relu(self.hidden(features)))


def make_data(count, seed=3):
    generator = torch.Generator().manual_seed(seed)
    return [
        {"features": torch.randn(6, 5, generator=generator),
         "labels": torch.randint(0, 4, (6,), generator=generator)}
        for _ in range(count)
    ]  # fmt: skip


def adaptor_T(batch, model_outputs):
    return {"logits": model_outputs}


def adaptor_S(batch, model_outputs):
    return {"logits": [model_outputs], "losses": [F.cross_entropy(model_outputs, batch["labels"])]}


def build_models(seed):
    torch.manual_seed(seed)
    teachers = [Classifier(width) for width in (12, 10, 8)]
    return teachers, Classifier(6)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--num_train_epochs", type=float, default=2.0)
    args = parser.parse_args()
    teachers, student = build_models(0)
    distiller = MultiTeacherDistiller(
        TrainingConfig(output_dir=args.output_dir, device="cpu"),
        DistillationConfig(temperature=3, hard_label_weight=1, kd_loss_weight=2),
        teachers,
        student,
        adaptor_T,
        adaptor_S,
    )
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    with distiller:
        distiller.train(optimizer, make_data(5), args.num_train_epochs, scheduler_class=None)


if __name__ == "__main__":
    main()
