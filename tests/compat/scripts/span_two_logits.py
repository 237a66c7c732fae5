"""A TextBrewer 0.2.x-style script after the CMRC 2018 recipe: span extraction, two logits.

The adaptor returns the start and end logits (batch, length) as a list of two tensors; each pair
is distilled and the two KD losses are summed. The notebook-style positional `train()` call:
`train(optimizer, dataloader, num_epochs, scheduler_class, scheduler_args, scheduler,
max_grad_norm)`.
"""

import argparse

import torch
from torch import nn

from textbrewer import BasicDistiller, DistillationConfig, TrainingConfig

torch.set_default_dtype(torch.float64)
LENGTH = 7


class SpanModel(nn.Module):
    def __init__(self, hidden_size):
        super().__init__()
        self.embed = nn.Embedding(16, hidden_size)
        self.span = nn.Linear(hidden_size, 2)

    def forward(self, input_ids, start_positions, end_positions):
        start, end = self.span(torch.tanh(self.embed(input_ids))).unbind(-1)
        loss = (
            nn.functional.cross_entropy(start, start_positions)
            + nn.functional.cross_entropy(end, end_positions)
        ) / 2
        return start, end, loss


def make_data(count, seed=11):
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randint(0, 16, (4, LENGTH), generator=generator),
            torch.randint(0, LENGTH, (4,), generator=generator),
            torch.randint(0, LENGTH, (4,), generator=generator),
        )
        for _ in range(count)
    ]


def CMRC2018SimpleAdaptor(batch, model_outputs):
    return {"logits": (model_outputs[0], model_outputs[1]), "losses": (model_outputs[2],)}


def build_models(seed):
    torch.manual_seed(seed)
    return SpanModel(10), SpanModel(5)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--num_train_epochs", type=float, default=2.0)
    args = parser.parse_args()
    model_T, model_S = build_models(0)
    distiller = BasicDistiller(
        TrainingConfig(output_dir=args.output_dir, device="cpu"),
        DistillationConfig(temperature=8, hard_label_weight=1, kd_loss_weight_scheduler="none"),
        model_T,
        model_S,
        CMRC2018SimpleAdaptor,
        CMRC2018SimpleAdaptor,
    )
    optimizer = torch.optim.Adam(model_S.parameters(), lr=0.01)
    scheduler_args = {"lr_lambda": lambda step: 1 / (1 + step)}
    with distiller:
        distiller.train(
            optimizer,
            make_data(3),
            args.num_train_epochs,
            torch.optim.lr_scheduler.LambdaLR,
            scheduler_args,
            None,
            0.5,
        )


if __name__ == "__main__":
    main()
