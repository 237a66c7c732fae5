"""A TextBrewer 0.2.x-style script after the MNLI recipe: GeneralDistiller with projections.

AdamW with decay/no-decay groups, `get_linear_schedule_with_warmup` through `scheduler_class` and
`scheduler_args`, gradient clipping, gradient accumulation, hidden-state matches with `proj`
(one with its own learning rate), and float epochs from argparse.
"""

import argparse

import torch
from torch import nn
from transformers import get_linear_schedule_with_warmup

from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig

torch.set_default_dtype(torch.float64)
LENGTH = 5


class Encoder(nn.Module):
    def __init__(self, hidden_size, layers):
        super().__init__()
        self.embed = nn.Linear(3, hidden_size)
        self.layers = nn.ModuleList(nn.Linear(hidden_size, hidden_size) for _ in range(layers))
        self.classifier = nn.Linear(hidden_size, 3)

    def forward(self, inputs, attention_mask, labels):
        hidden = torch.tanh(self.embed(inputs))
        states = [hidden]
        for layer in self.layers:
            hidden = torch.tanh(layer(hidden))
            states.append(hidden)
        mask = attention_mask.unsqueeze(-1)
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        logits = self.classifier(pooled)
        return logits, states, nn.functional.cross_entropy(logits, labels)


def make_data(count, seed=1):
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        inputs = torch.randn(4, LENGTH, 3, generator=generator)
        lengths = torch.randint(2, LENGTH + 1, (4,), generator=generator)
        mask = (torch.arange(LENGTH)[None] < lengths[:, None]).to(torch.float64)
        labels = torch.randint(0, 3, (4,), generator=generator)
        batches.append({"inputs": inputs, "attention_mask": mask, "labels": labels})
    return batches


def BertForGLUESimpleAdaptor(batch, model_outputs):
    return {
        "logits": (model_outputs[0],),
        "hidden": model_outputs[1],
        "inputs_mask": batch["attention_mask"],
        "losses": (model_outputs[2],),
    }


MATCHES = [
    {"layer_T": 0, "layer_S": 0, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
     "proj": ["linear", 6, 8, {"lr": 0.05}]},
    {"layer_T": 3, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
     "proj": ["linear", 6, 8]},
]  # fmt: skip


def build_models(seed):
    torch.manual_seed(seed)
    return Encoder(8, 3), Encoder(6, 2)


def optimizer_groups(model):
    no_decay = ["bias"]
    return [
        {"params": [p for n, p in model.named_parameters() if not any(nd in n for nd in no_decay)],
         "weight_decay": 0.01},
        {"params": [p for n, p in model.named_parameters() if any(nd in n for nd in no_decay)],
         "weight_decay": 0.0},
    ]  # fmt: skip


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--num_train_epochs", type=float, default=2.0)
    parser.add_argument("--learning_rate", type=float, default=1e-2)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=2)
    parser.add_argument("--warmup_proportion", type=float, default=0.25)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main():
    args = parse_args()
    model_T, model_S = build_models(args.seed)
    train_dataloader = make_data(args.batches)
    num_train_steps = int(
        len(train_dataloader) // args.gradient_accumulation_steps * args.num_train_epochs
    )
    train_config = TrainingConfig(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        ckpt_frequency=1,
        output_dir=args.output_dir,
        device="cpu",
    )
    distill_config = DistillationConfig(
        temperature=8, hard_label_weight=0, kd_loss_type="ce", intermediate_matches=MATCHES
    )
    distiller = GeneralDistiller(
        train_config,
        distill_config,
        model_T,
        model_S,
        BertForGLUESimpleAdaptor,
        BertForGLUESimpleAdaptor,
    )
    optimizer = torch.optim.AdamW(optimizer_groups(model_S), lr=args.learning_rate)
    scheduler_class = get_linear_schedule_with_warmup
    scheduler_args = {
        "num_warmup_steps": int(args.warmup_proportion * num_train_steps),
        "num_training_steps": num_train_steps,
    }
    with distiller:
        distiller.train(
            optimizer,
            train_dataloader,
            args.num_train_epochs,
            scheduler_class=scheduler_class,
            scheduler_args=scheduler_args,
            callback=None,
            max_grad_norm=1.0,
        )


if __name__ == "__main__":
    main()
