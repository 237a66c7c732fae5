"""Precompute a teacher's outputs once, then distil from the cache (no teacher forward)."""

import tempfile

import torch
from torch import nn
from torch.utils.data import DataLoader

from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig
from textbrewer.teacher_cache import CachedTeacherDataset, precompute_teacher_outputs


class Encoder(nn.Module):
    """Returns (logits, hidden states): the embeddings and each layer's output."""

    def __init__(self, dim, layers):
        super().__init__()
        self.embed = nn.Embedding(100, dim)
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))
        self.head = nn.Linear(dim, 4)

    def forward(self, input_ids, attention_mask):
        hidden = [self.embed(input_ids)]
        for layer in self.layers:
            hidden.append(torch.tanh(layer(hidden[-1])))
        return self.head(hidden[-1][:, 0]), hidden


def adaptor(batch, outputs):
    return {"logits": outputs[0], "hidden": outputs[1], "inputs_mask": batch["attention_mask"]}


torch.manual_seed(0)
teacher, student = Encoder(32, 4), Encoder(16, 2)
# Example i of the dataset is dataset[i]; here dicts of tensors, collated by default_collate.
dataset = [
    {"input_ids": torch.randint(0, 100, (12,)), "attention_mask": torch.ones(12, dtype=torch.long)}
    for _ in range(64)
]
config = DistillationConfig(
    temperature=4,
    intermediate_matches=[
        {
            "layer_T": 4,
            "layer_S": 2,
            "feature": "hidden",
            "loss": "hidden_mse",
            "weight": 1,
            "proj": ["linear", 16, 32],
        }
    ],
)
cache_dir = tempfile.mkdtemp()

# 1. Once: run the teacher over the dataset; logits and hidden layer 4 go to disk by index.
cache = precompute_teacher_outputs(teacher, adaptor, dataset, cache_dir, config, batch_size=16)
print(cache)

# 2. Every run after: batches carry the stored outputs; any sampler, the teacher never runs.
cached = CachedTeacherDataset(dataset, cache, config)
loader = DataLoader(cached, batch_size=8, shuffle=True, collate_fn=cached.collate())
distiller = GeneralDistiller(
    TrainingConfig(device="cpu", output_dir=tempfile.mkdtemp()),
    config,
    teacher,
    student,
    adaptor,
    adaptor,
)
distiller.train(torch.optim.AdamW(student.parameters(), lr=1e-3), None, loader, num_epochs=2)
