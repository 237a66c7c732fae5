"""Hugging Face models: distil a BERT into a smaller one, then save the student for transformers.

Runs offline: the models are built from configs. With a real checkpoint, load them with
from_pretrained(name, attn_implementation="eager") instead.
"""

import os

import torch
from torch.utils.data import DataLoader
from transformers import BertConfig, BertForSequenceClassification

from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig


def bert(layers, hidden):
    config = BertConfig(
        vocab_size=100,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=4 * hidden,
        num_labels=3,
        attn_implementation="eager",  # "sdpa", the default, returns no attention maps
    )
    return BertForSequenceClassification(config)


torch.manual_seed(0)
teacher = bert(layers=4, hidden=32)  # e.g. from_pretrained("my-finetuned-bert", ...)
student = bert(layers=2, hidden=16)


def collate(rows):  # what a tokenizer with padding=True, return_tensors="pt" yields
    input_ids = torch.stack([ids for ids, _ in rows])
    return {
        "input_ids": input_ids,
        "attention_mask": (input_ids != 0).long(),
        "labels": torch.tensor([label for _, label in rows]),
    }


texts = torch.randint(1, 100, (64, 12))
texts[::3, 8:] = 0  # padding
dataloader = DataLoader(
    [(ids, int(ids[0]) % 3) for ids in texts], batch_size=8, shuffle=True, collate_fn=collate
)


def adaptor(batch, outputs):  # outputs is the SequenceClassifierOutput, untouched
    return {
        "logits": outputs.logits,
        "losses": outputs.loss,  # computed because the batch holds `labels`
        "hidden": outputs.hidden_states,  # needs output_hidden_states=True
        "attention": outputs.attentions,  # needs output_attentions=True and eager attention
        "inputs_mask": batch["attention_mask"],  # the 0/1 mask, not an additive one
    }


distill_config = DistillationConfig(
    temperature=4,
    hard_label_weight=0.5,
    intermediate_matches=[
        # hidden_states[0] is the embeddings, hidden_states[L] the last layer's output
        {"layer_T": 4, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
         "proj": ["linear", 16, 32]},
        # attentions[i] is layer i's; different head counts would need attention_mse_sum
        {"layer_T": 3, "layer_S": 1, "feature": "attention", "loss": "attention_mse",
         "weight": 1},
    ],
)  # fmt: skip
train_config = TrainingConfig(device="cpu", output_dir="saved_models_hf", progress_bar=False)
distiller = GeneralDistiller(train_config, distill_config, teacher, student, adaptor, adaptor)
optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
distiller.train(
    optimizer,
    None,
    dataloader,
    num_epochs=2,
    output_hidden_states=True,  # keyword arguments of train() reach every forward
    output_attentions=True,
)

# gs{N}.pkl is the student's state_dict: load it into a model of the same config, then save it
# in the transformers format (add tokenizer.save_pretrained(...) to ship the tokenizer too).
final = max(
    (name for name in os.listdir("saved_models_hf") if name.endswith(".pkl")),
    key=lambda name: int(name[2:-4]),
)
served = BertForSequenceClassification(student.config)
served.load_state_dict(torch.load(os.path.join("saved_models_hf", final), weights_only=True))
served.save_pretrained("student_for_serving")

reloaded = BertForSequenceClassification.from_pretrained("student_for_serving").eval()
batch = collate([(texts[0], 0)])
with torch.no_grad():
    same = torch.allclose(reloaded(**batch).logits, student.eval()(**batch).logits)
print(f"{final} saved with save_pretrained; reloaded logits equal: {same}")
if not same:
    raise SystemExit("the reloaded student differs from the trained one")
