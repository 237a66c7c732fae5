"""A TextBrewer 0.2.x-style script: BasicTrainer (training a teacher) with per-layer learning rates.

The optimizer has one param group per layer with its own learning rate, gradient accumulation,
a StepLR scheduler built through `scheduler_class`, and `ckpt_frequency` from the command line.
"""

import argparse

import torch
from torch import nn

from textbrewer import BasicTrainer, TrainingConfig

torch.set_default_dtype(torch.float64)


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer0 = nn.Linear(4, 8)
        self.layer1 = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, features, labels):
        logits = self.head(torch.tanh(self.layer1(torch.tanh(self.layer0(features)))))
        return logits, nn.functional.cross_entropy(logits, labels)


def make_data(count, seed=5):
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(4, 4, generator=generator), torch.randint(0, 3, (4,), generator=generator))
        for _ in range(count)
    ]


def adaptor(batch, model_outputs):
    return {"losses": (model_outputs[1],)}


def build_model(seed):
    torch.manual_seed(seed)
    return Tagger()


def layer_groups(model, lr, decay):
    # layer-wise learning-rate decay: the head gets lr, each layer below lr * decay**depth
    names = ["head", "layer1", "layer0"]
    return [
        {"params": getattr(model, name).parameters(), "lr": lr * decay**depth}
        for depth, name in enumerate(names)
    ]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--num_train_epochs", type=float, default=2)
    parser.add_argument("--ckpt_frequency", type=int, default=2)
    args = parser.parse_args()
    model = build_model(0)
    trainer = BasicTrainer(
        TrainingConfig(
            output_dir=args.output_dir,
            device="cpu",
            gradient_accumulation_steps=2,
            ckpt_frequency=args.ckpt_frequency,
        ),
        model,
        adaptor,
    )
    optimizer = torch.optim.SGD(layer_groups(model, 0.2, 0.5), lr=0.2)
    with trainer:
        trainer.train(
            optimizer,
            make_data(9),
            args.num_train_epochs,
            scheduler_class=torch.optim.lr_scheduler.StepLR,
            scheduler_args={"step_size": 3, "gamma": 0.5},
        )


if __name__ == "__main__":
    main()
