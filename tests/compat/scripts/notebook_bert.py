"""The cells of a TextBrewer 0.2.x notebook, as one script: a BERT teacher distilled into a
smaller BERT with GeneralDistiller, the hidden-state matches of a 'L3'-style configuration with
`proj`, and the positional `train(optimizer, dataloader, num_epochs, scheduler_class=...,
scheduler_args=..., callback=None)` call of the notebook.

The models are tiny randomly initialised transformers BERTs; `--style documented` makes the same
run with the documented keyword call instead (what the test compares it with).
"""

import argparse

import torch
import transformers
from torch.utils.data import DataLoader
from transformers import get_linear_schedule_with_warmup

import textbrewer
from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig


def bert(layers, hidden, seed):
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=30, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=12, num_labels=2,
        attn_implementation="eager", output_hidden_states=True,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(config)


def make_dataset(count=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 30, (count, 8), generator=generator)
    mask = torch.ones(count, 8, dtype=torch.long)
    mask[::3, 6:] = 0
    labels = torch.randint(0, 2, (count,), generator=generator)
    return [
        {"input_ids": i, "attention_mask": m, "labels": y} for i, m, y in zip(ids, mask, labels)
    ]


def simple_adaptor(batch, model_outputs):
    return {
        "logits": model_outputs.logits,
        "hidden": model_outputs.hidden_states,
        "inputs_mask": batch["attention_mask"],
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--style", default="notebook")
    args = parser.parse_args()
    teacher_model, student_model = bert(4, 16, 0), bert(2, 8, 1)
    torch.manual_seed(42)
    dataloader = DataLoader(make_dataset(), batch_size=4, shuffle=True)
    num_epochs = 2
    num_training_steps = len(dataloader) * num_epochs
    optimizer = torch.optim.AdamW(student_model.parameters(), lr=1e-3)
    scheduler_class = get_linear_schedule_with_warmup
    scheduler_args = {"num_warmup_steps": int(0.1 * num_training_steps),
                      "num_training_steps": num_training_steps}  # fmt: skip
    train_config = TrainingConfig(device="cpu", output_dir=args.output_dir)
    distill_config = DistillationConfig(
        temperature=8,
        hard_label_weight=0,
        kd_loss_type="ce",
        intermediate_matches=[
            {"layer_T": 0, "layer_S": 0, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
             "proj": ["linear", 8, 16]},
            {"layer_T": 4, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
             "proj": ["linear", 8, 16]},
        ],
    )  # fmt: skip
    distiller = GeneralDistiller(
        train_config=train_config, distill_config=distill_config,
        model_T=teacher_model, model_S=student_model,
        adaptor_T=simple_adaptor, adaptor_S=simple_adaptor,
    )  # fmt: skip
    with distiller:
        if args.style == "notebook":
            distiller.train(
                optimizer, dataloader, num_epochs, scheduler_class=scheduler_class,
                scheduler_args=scheduler_args, callback=None,
            )  # fmt: skip
        else:
            textbrewer.GeneralDistiller.train(
                distiller, optimizer, scheduler=None, dataloader=dataloader,
                num_epochs=num_epochs, scheduler_class=scheduler_class,
                scheduler_args=scheduler_args,
            )  # fmt: skip
    return distiller


if __name__ == "__main__":
    RESULT = main()
