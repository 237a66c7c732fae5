"""A TextBrewer 0.2.x-style script after the MSRA-NER / CoNLL-2003 recipes: 3-D logits.

Token logits (batch, length, labels) with `logits_mask` selecting the real tokens, labels with
-100 at padding and `probability_shift=True`, a hidden-state match with `inputs_mask`, step mode
with float `num_steps` and `ckpt_steps`.
"""

import argparse

import torch
from torch import nn

from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig

torch.set_default_dtype(torch.float64)
LENGTH, LABELS = 6, 5


class TokenTagger(nn.Module):
    def __init__(self, hidden_size):
        super().__init__()
        self.embed = nn.Embedding(20, hidden_size)
        self.layer = nn.Linear(hidden_size, 7)
        self.out = nn.Linear(7, LABELS)

    def forward(self, input_ids, attention_mask, labels):
        hidden = torch.tanh(self.layer(self.embed(input_ids)))
        return self.out(hidden), hidden


def make_data(count, seed=7):
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        ids = torch.randint(1, 20, (3, LENGTH), generator=generator)
        lengths = torch.randint(2, LENGTH + 1, (3,), generator=generator)
        mask = (torch.arange(LENGTH)[None] < lengths[:, None]).long()
        labels = torch.randint(0, LABELS, (3, LENGTH), generator=generator)
        labels = labels.masked_fill(mask == 0, -100)
        batches.append((ids * mask, mask, labels))
    return batches


def adaptor(batch, model_outputs):
    return {
        "logits": model_outputs[0],
        "logits_mask": batch[1],
        "labels": batch[2],
        "hidden": [model_outputs[1]],
        "inputs_mask": batch[1],
    }


def build_models(seed):
    torch.manual_seed(seed)
    return TokenTagger(9), TokenTagger(4)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--num_train_steps", type=float, default=7.0)
    parser.add_argument("--ckpt_steps", type=float, default=3.0)
    args = parser.parse_args()
    model_T, model_S = build_models(0)
    distiller = GeneralDistiller(
        TrainingConfig(output_dir=args.output_dir, device="cpu", ckpt_steps=args.ckpt_steps),
        DistillationConfig(
            temperature=2,
            probability_shift=True,
            intermediate_matches=[
                {"layer_T": 0, "layer_S": 0, "feature": "hidden", "loss": "hidden_mse", "weight": 2}
            ],
        ),  # fmt: skip
        model_T,
        model_S,
        adaptor,
        adaptor,
    )
    optimizer = torch.optim.SGD(model_S.parameters(), lr=0.1)
    with distiller:
        distiller.train(optimizer, make_data(4), 1, num_steps=args.num_train_steps)


if __name__ == "__main__":
    main()
