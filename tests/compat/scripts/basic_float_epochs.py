"""A TextBrewer 0.2.x-style script: BasicDistiller, `--num_train_epochs` read with type=float.

Written the way TextBrewer's example scripts are (argparse, configs, `with distiller:` and the
0.2.x `train()` keywords); run unchanged by tests/compat/test_scripts.py.
"""

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from textbrewer import BasicDistiller, DistillationConfig, TrainingConfig

torch.set_default_dtype(torch.float64)


class Classifier(nn.Module):
    def __init__(self, hidden_size):
        super().__init__()
        self.hidden = nn.Linear(4, hidden_size)
        self.out = nn.Linear(hidden_size, 3)

    def forward(self, features, labels):
        hidden = torch.tanh(self.hidden(features))
        return self.out(hidden), hidden


def make_data(count, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(4, 4, generator=generator), torch.randint(0, 3, (4,), generator=generator))
        for _ in range(count)
    ]


def adaptor(batch, model_outputs):
    logits = model_outputs[0]
    return {"logits": logits, "losses": F.cross_entropy(logits, batch[1])}


def build_models(seed):
    torch.manual_seed(seed)
    return Classifier(8), Classifier(6)


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--num_train_epochs", type=float, default=3.0)
    parser.add_argument("--learning_rate", type=float, default=0.1)
    parser.add_argument("--temperature", type=float, default=4)
    parser.add_argument("--ckpt_frequency", type=int, default=2)
    parser.add_argument("--ckpt_epoch_frequency", type=int, default=2)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main():
    args = parse_args()
    model_T, model_S = build_models(args.seed)
    train_config = TrainingConfig(
        device="cpu",
        output_dir=args.output_dir,
        ckpt_frequency=args.ckpt_frequency,
        ckpt_epoch_frequency=args.ckpt_epoch_frequency,
    )
    distill_config = DistillationConfig(
        temperature=args.temperature,
        hard_label_weight=0.5,
        kd_loss_weight_scheduler="linear_decay",
    )
    distiller = BasicDistiller(train_config, distill_config, model_T, model_S, adaptor, adaptor)
    optimizer = torch.optim.SGD(model_S.parameters(), lr=args.learning_rate)
    with distiller:
        distiller.train(
            optimizer,
            make_data(args.batches),
            args.num_train_epochs,
            scheduler_class=None,
            scheduler_args=None,
            max_grad_norm=-1.0,
            callback=None,
        )


if __name__ == "__main__":
    main()
