"""Tiny deterministic models and data shared by the tests (a few kB each)."""

import os
import sys

import pytest
import torch
import torch.distributed as dist
from torch import nn

import textbrewer

VOCAB, LENGTH, CLASSES = 13, 6, 3

# The 0.2.x-style scripts are run by tests/compat, never imported by collection (--doctest-modules
# would import them, and they set torch's default dtype at import, as a script may).
collect_ignore = ["compat/scripts"]


class TinyEncoder(nn.Module):
    """Embedding + `layers` tanh layers; returns (logits, hidden states, attentions, loss).

    `hidden` holds the embeddings and every layer's output, (batch, length, dim); `attentions`
    are (batch, heads, length, length) softmaxed similarity maps with -1e4 at padded keys.
    """

    def __init__(self, dim=8, layers=2, heads=2, dropout=0.0, classes=CLASSES):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dim, classes)
        self.heads = heads

    def forward(self, input_ids, attention_mask, labels):
        hidden = self.embed(input_ids)
        states, attentions = [hidden], []
        key_mask = (1.0 - attention_mask[:, None, None, :].to(hidden.dtype)) * -1e4
        for layer in self.layers:
            hidden = torch.tanh(layer(self.dropout(hidden)))
            scores = torch.einsum("bqd,bkd->bqk", hidden, hidden)[:, None]
            scores = (
                scores.expand(-1, self.heads, -1, -1)
                / (1 + torch.arange(self.heads)).to(hidden)[None, :, None, None]
            )
            attentions.append((scores + key_mask).softmax(-1))
            states.append(hidden)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        logits = self.head(pooled)
        loss = nn.functional.cross_entropy(logits, labels)
        return logits, tuple(states), tuple(attentions), loss


def make_batches(count, batch_size=4, seed=0, dtype_mask=torch.long):
    """`count` tuples (input_ids, attention_mask, labels) with some padding."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        ids = torch.randint(1, VOCAB, (batch_size, LENGTH), generator=generator)
        lengths = torch.randint(LENGTH // 2, LENGTH + 1, (batch_size,), generator=generator)
        mask = (torch.arange(LENGTH)[None] < lengths[:, None]).to(dtype_mask)
        labels = torch.randint(0, CLASSES, (batch_size,), generator=generator)
        batches.append((ids * mask, mask, labels))
    return batches


# Teacher layer 3 into student layer 2 through a learned projection (student width 6, teacher 8).
PROJECTED_HIDDEN_MATCH = {
    "layer_T": 3,
    "layer_S": 2,
    "feature": "hidden",
    "loss": "hidden_mse",
    "weight": 1,
    "proj": ["linear", 6, 8],
}


def simple_adaptor(batch, outputs):
    logits, hidden, attentions, loss = outputs
    return {
        "logits": logits,
        "hidden": hidden,
        "attention": attentions,
        "inputs_mask": batch[1],
        "losses": loss,
        "labels": batch[2],
    }


def make_models(seed=0, dtype=torch.float64, teacher_dim=8, student_dim=8, dropout=0.0):
    torch.manual_seed(seed)
    teacher = TinyEncoder(dim=teacher_dim, layers=3, dropout=dropout).to(dtype)
    student = TinyEncoder(dim=student_dim, layers=2, dropout=dropout).to(dtype)
    return teacher, student


def training_config(tmp_path, **overrides):
    settings = dict(device="cpu", output_dir=str(tmp_path / "out"), progress_bar=False)
    settings.update(overrides)
    return textbrewer.TrainingConfig(**settings)


def leave_process_group():
    """Ends a spawned rank once its results are saved: barrier, destroy, exit without finalising.

    What these workers test (DDP parity) is decided by then. Interpreter finalisation after a gloo
    run is torch's business and can abort a finished process with SIGABRT; where users meet it
    (a torchrun job that never destroys its group), tests/distillers/test_torchrun.py and
    test_process_group_exit.py exercise it as it is.
    """
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def checkpoint_steps(output_dir):
    names = [n for n in os.listdir(output_dir) if n.startswith("gs") and n.endswith(".pkl")]
    return sorted(int(name[2:-4]) for name in names)


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch, tmp_path):
    """Every test runs in its own directory, with no process group left behind."""
    monkeypatch.chdir(tmp_path)
    yield
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
