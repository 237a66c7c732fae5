"""Quickstart: train a teacher, then distil it into a student thirteen times smaller.

What it shows, end to end, on a task the script generates itself (no download):

1. a teacher (2 bidirectional GRU layers, hidden size 96) is trained on labelled data with
   ``BasicTrainer``;
2. a student (1 layer, hidden size 32) is distilled from it with ``GeneralDistiller``: KD on the
   logits plus two hidden-state matches (embeddings, last layer) through trainable linear
   projections, since the student's hidden size differs from the teacher's. With
   ``hard_label_weight=0`` the labels never reach the student: it learns from the teacher only;
3. both are evaluated on held-out data, with their parameter counts and sizes.

The task ("negated topics"): a sentence is a sequence of token ids. Some tokens are words of one
of four topics, and a ``NOT`` token in front of a topic word cancels it. The label is the topic
with the highest score (mentions minus negated mentions), so a model has to read word order, not
just count words. Chance is 25%.

Measured on a shared 2-core CPU machine (1 torch thread, the default: faster for models this
small): the full run, ``python examples/quickstart.py``, takes 30 to 36 s (teacher ~16 s, student
~12 s) and prints teacher accuracy 0.984, student accuracy 0.991 (chance 0.25), 90,628 vs 6,980
parameters (13.0x smaller). ``--smoke`` takes about 5 s (plus ~3 s to import torch) and prints
teacher 0.580, student 0.533.
"""

from __future__ import annotations

import argparse
import logging
import random
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.contrib.logging import logging_redirect_tqdm

import textbrewer
from textbrewer.utils import display_parameters, tqdm_print

PAD, NOT = 0, 1
TOPICS, WORDS_PER_TOPIC = 4, 6
FIRST_TOPIC_WORD = 2
FIRST_FILLER = FIRST_TOPIC_WORD + TOPICS * WORDS_PER_TOPIC
VOCAB = 64
MAX_LENGTH = 24


# ----------------------------------------------------------------------------- data
def make_sentence(rng: random.Random) -> tuple[list[int], int]:
    """One sentence and its label; resampled until the best topic is unique."""
    while True:
        length = rng.randint(12, MAX_LENGTH)
        tokens = [rng.randrange(FIRST_FILLER, VOCAB) for _ in range(length)]
        scores = [0] * TOPICS
        slots = rng.sample(range(1, length, 2), k=rng.randint(2, 5))  # room for a NOT before each
        for slot in slots:
            topic = rng.randrange(TOPICS)
            tokens[slot] = (
                FIRST_TOPIC_WORD + topic * WORDS_PER_TOPIC + rng.randrange(WORDS_PER_TOPIC)
            )
            if rng.random() < 0.3:
                tokens[slot - 1] = NOT
                scores[topic] -= 1
            else:
                scores[topic] += 1
        best = max(scores)
        if scores.count(best) == 1:
            return tokens, scores.index(best)


def make_dataset(count: int, seed: int) -> TensorDataset:
    """``(input_ids, attention_mask, labels)`` tensors, padded to ``MAX_LENGTH``."""
    rng = random.Random(seed)
    input_ids = torch.full((count, MAX_LENGTH), PAD, dtype=torch.long)
    attention_mask = torch.zeros(count, MAX_LENGTH, dtype=torch.long)
    labels = torch.empty(count, dtype=torch.long)
    for row in range(count):
        tokens, labels[row] = make_sentence(rng)
        input_ids[row, : len(tokens)] = torch.tensor(tokens)
        attention_mask[row, : len(tokens)] = 1
    return TensorDataset(input_ids, attention_mask, labels)


# ----------------------------------------------------------------------------- models
class Classifier(nn.Module):
    """Stacked bidirectional GRUs; returns logits, every layer's hidden states and the loss."""

    def __init__(self, dim: int, layers: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim, padding_idx=PAD)
        self.layers = nn.ModuleList(
            nn.GRU(dim, dim // 2, batch_first=True, bidirectional=True) for _ in range(layers)
        )
        self.head = nn.Linear(dim, TOPICS)

    def forward(self, input_ids, attention_mask, labels=None):
        mask = attention_mask.unsqueeze(-1).float()
        hidden = self.embed(input_ids)
        states = [hidden]
        for layer in self.layers:
            hidden = layer(hidden)[0] * mask
            states.append(hidden)
        logits = self.head(hidden.sum(1) / mask.sum(1))  # mean over the real tokens
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return {"logits": logits, "hidden_states": states, "loss": loss}


def adaptor(batch, outputs):
    """Tells textbrewer where to find what it needs in a batch and in the model's outputs."""
    return {
        "logits": outputs["logits"],
        "hidden": outputs["hidden_states"],
        "inputs_mask": batch[1],
        "losses": outputs["loss"],
    }


# ----------------------------------------------------------------------------- helpers
@torch.no_grad()
def accuracy(model: nn.Module, dataset: TensorDataset) -> float:
    model.eval()
    input_ids, attention_mask, labels = dataset.tensors
    logits = model(input_ids, attention_mask)["logits"]
    return (logits.argmax(-1) == labels).float().mean().item()


def size_of(model: nn.Module) -> tuple[int, float]:
    """(number of parameters, MiB), read from textbrewer's parameter table."""
    _, root = display_parameters(model)
    return root.count, root.mib


def linear_decay(total_steps: int) -> dict:
    """``scheduler_args`` for ``torch.optim.lr_scheduler.LambdaLR``: lr falls linearly to 0."""
    return {"lr_lambda": lambda step: max(0.0, 1 - step / total_steps)}


# ----------------------------------------------------------------------------- the two stages
def train_teacher(args, loader: DataLoader, output_dir: Path) -> Classifier:
    """BasicTrainer trains on the ``losses`` the adaptor returns (here, cross-entropy)."""
    teacher = Classifier(dim=args.teacher_dim, layers=2)
    trainer = textbrewer.BasicTrainer(
        textbrewer.TrainingConfig(device="cpu", output_dir=str(output_dir / "teacher")),
        teacher,
        adaptor,
    )
    trainer.train(
        torch.optim.AdamW(teacher.parameters(), lr=3e-3),
        dataloader=loader,
        num_epochs=args.teacher_epochs,
        scheduler_class=torch.optim.lr_scheduler.LambdaLR,
        scheduler_args=linear_decay(len(loader) * args.teacher_epochs),
    )
    return teacher


def distil_student(
    args, teacher: Classifier, loader: DataLoader, output_dir: Path, dev_set: TensorDataset
):
    """GeneralDistiller: KD on the logits plus hidden-state matches through projections.

    After each checkpoint the callback measures accuracy on ``dev_set``: it prints with
    ``tqdm_print`` (a plain ``print`` would break the progress bar) and returns the metric, which
    the run logs and uses to keep track of the best checkpoint.
    """
    student = Classifier(dim=args.student_dim, layers=1)
    dims = [args.student_dim, args.teacher_dim]  # projections map student -> teacher width
    distill_config = textbrewer.DistillationConfig(
        temperature=4,
        kd_loss_weight=1,
        hard_label_weight=0,  # no labels: the teacher is the only supervision
        intermediate_matches=[
            # "hidden" lists: index 0 = embeddings, index i = output of layer i
            {"layer_T": 0, "layer_S": 0, "feature": "hidden", "loss": "hidden_mse",
             "weight": 1, "proj": ["linear", *dims]},
            {"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse",
             "weight": 1, "proj": ["linear", *dims]},
        ],
    )  # fmt: skip
    training_config = textbrewer.TrainingConfig(
        device="cpu", output_dir=str(output_dir / "student"), metric_for_best_model="accuracy"
    )

    def evaluate(model, step):
        with torch.no_grad():
            dev_accuracy = accuracy(model, dev_set)
        tqdm_print(f"step {step}: student accuracy {dev_accuracy:.3f}")
        return {"accuracy": dev_accuracy}

    distiller = textbrewer.GeneralDistiller(
        training_config,
        distill_config,
        model_T=teacher,
        model_S=student,
        adaptor_T=adaptor,
        adaptor_S=adaptor,
    )
    with distiller:  # teacher in eval mode, student in train mode
        result = distiller.train(
            torch.optim.AdamW(student.parameters(), lr=args.student_lr),
            dataloader=loader,
            num_epochs=args.student_epochs,
            # a scheduler *class*: train() first adds the projections' param groups to the
            # optimizer, then builds the scheduler, so that it drives them too
            scheduler_class=torch.optim.lr_scheduler.LambdaLR,
            scheduler_args=linear_decay(len(loader) * args.student_epochs),
            callback=evaluate,
        )
    return student, result


# ----------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--student-epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--teacher-dim", type=int, default=96)
    parser.add_argument("--student-dim", type=int, default=32)
    parser.add_argument("--student-lr", type=float, default=1e-2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny models: 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default=None, help="checkpoints (default: a temp dir)")
    parser.add_argument("--smoke", action="store_true", help="tiny run, a few seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.train_size, args.test_size, args.teacher_dim = 1500, 300, 64
        args.teacher_epochs, args.student_epochs = 3, 3
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)  # tiny matrices: a second thread only adds overhead
    try:
        torch.manual_seed(args.seed)
        output_dir = Path(args.output_dir or tempfile.mkdtemp(prefix="textbrewer_quickstart_"))
        train_set = make_dataset(args.train_size, seed=args.seed)
        test_set = make_dataset(args.test_size, seed=args.seed + 1)
        loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
        teacher = train_teacher(args, loader, output_dir)
        teacher_accuracy = accuracy(teacher, test_set)
        print(f"teacher accuracy: {teacher_accuracy:.3f}")
        student, result = distil_student(args, teacher, loader, output_dir, test_set)
        student_accuracy = accuracy(student, test_set)
    finally:
        torch.set_num_threads(previous_threads)

    (teacher_params, teacher_mib), (student_params, student_mib) = map(size_of, (teacher, student))
    results = {
        "teacher_accuracy": teacher_accuracy,
        "student_accuracy": student_accuracy,
        "chance": 1 / TOPICS,
        "teacher_params": teacher_params,
        "student_params": student_params,
        "teacher_mib": teacher_mib,
        "student_mib": student_mib,
        "best_checkpoint": result.best_checkpoint,
        "best_accuracy": result.best_metric,
        "seconds": time.perf_counter() - start,
    }
    print(f"student accuracy: {student_accuracy:.3f} (chance {1 / TOPICS:.2f})")
    print(f"teacher: {teacher_params:,} parameters, {teacher_mib:.3f} MiB")
    print(
        f"student: {student_params:,} parameters, {student_mib:.3f} MiB "
        f"({teacher_params / student_params:.1f}x smaller)"
    )
    print("the student's parameters, by module:", display_parameters(student, max_level=1)[0])
    print(f"best checkpoint: {result.best_checkpoint} (accuracy {result.best_metric:.3f})")
    print(f"checkpoints in {output_dir}; done in {results['seconds']:.1f} s")
    return results


if __name__ == "__main__":
    # The library reports epochs and checkpoints at INFO level through `logging` (the "textbrewer"
    # logger), which Python hides until it is configured; log lines go above the progress bar.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with logging_redirect_tqdm():
        main()
