"""Several teachers: MultiTeacherDistiller (one task) and MultiTaskDistiller (two tasks).

The data is generated: sentences of token ids mixing filler words with topic words (4 topics) and
sentiment words (positive or negative). Two tasks read the same kind of sentence:

* ``topic``: which topic has the most words (4 classes, chance 25%);
* ``sentiment``: are there more positive than negative words (2 classes, chance 50%).

Part 1, MultiTeacherDistiller: two teachers learn ``topic``, each from its own few labelled
sentences (300 by default), so each makes its own mistakes. The student is distilled from their
averaged logits on all the training sentences, without labels, and ends up as good as the
teachers' average, better than either teacher.

Part 2, MultiTaskDistiller: one teacher per task (600 labelled sentences each), and one student
with a shared encoder and one head per task, distilled on all the sentences. ``adaptor_S`` is a
dict by task: each adaptor hands the distiller the logits of that task's head. Every step draws a
task (in proportion to its data size, ``tau=1``) and distils that task's teacher into the student.

Models are bag-of-words encoders (mean of the word embeddings, then an MLP).

Measured on a shared 2-core CPU machine (1 torch thread): the full run takes about 5 s and
prints ``topic teachers 0.840 / 0.822, their average 0.924, multi-teacher student 0.924`` and
``multi-task student: topic 0.977 (teacher 0.977), sentiment 0.996 (teacher 0.996)``.
``--smoke`` takes about 2.5 s (plus ~3 s to import torch).
"""

from __future__ import annotations

import argparse
import logging
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset
from tqdm.contrib.logging import logging_redirect_tqdm

import textbrewer

PAD, LENGTH, VOCAB = 0, 20, 80
TOPIC_WORDS = [range(1 + 5 * topic, 6 + 5 * topic) for topic in range(4)]  # ids 1..20
POSITIVE, NEGATIVE = range(21, 27), range(27, 33)
FILLER = range(33, VOCAB)
TASKS = {"topic": 4, "sentiment": 2}


# ----------------------------------------------------------------------------- data
def make_sentence(rng: random.Random) -> tuple[list[int], dict[str, int]]:
    """A sentence and its labels for both tasks; resampled until both labels are unambiguous."""
    while True:
        length = rng.randint(8, LENGTH)
        tokens = [rng.choice(FILLER) for _ in range(length)]
        topics, polarity = [0] * 4, 0
        for slot in rng.sample(range(length), k=rng.randint(3, 7)):
            if rng.random() < 0.5:
                topic = rng.randrange(4)
                tokens[slot], topics[topic] = rng.choice(TOPIC_WORDS[topic]), topics[topic] + 1
            else:
                positive = rng.random() < 0.5
                tokens[slot] = rng.choice(POSITIVE if positive else NEGATIVE)
                polarity += 1 if positive else -1
        if polarity != 0 and topics.count(max(topics)) == 1:
            return tokens, {"topic": topics.index(max(topics)), "sentiment": int(polarity > 0)}


def make_datasets(count: int, seed: int) -> dict[str, TensorDataset]:
    """Per task, ``(input_ids, attention_mask, labels)`` over the same ``count`` sentences."""
    rng = random.Random(seed)
    input_ids = torch.full((count, LENGTH), PAD, dtype=torch.long)
    labels = {task: torch.empty(count, dtype=torch.long) for task in TASKS}
    for row in range(count):
        tokens, label = make_sentence(rng)
        input_ids[row, : len(tokens)] = torch.tensor(tokens)
        for task in TASKS:
            labels[task][row] = label[task]
    attention_mask = (input_ids != PAD).long()
    return {task: TensorDataset(input_ids, attention_mask, labels[task]) for task in TASKS}


# ----------------------------------------------------------------------------- models
class BagOfWords(nn.Module):
    """Mean of word embeddings -> MLP -> one head per task; returns {task: logits}."""

    def __init__(self, dim: int, hidden: int, tasks: dict[str, int]) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim, padding_idx=PAD)
        self.encoder = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU())
        self.heads = nn.ModuleDict({task: nn.Linear(hidden, n) for task, n in tasks.items()})

    def forward(self, input_ids, attention_mask, labels=None):
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1)
        features = self.encoder(pooled)
        return {task: head(features) for task, head in self.heads.items()}


def logits_of(task: str):
    """The adaptor for distillation: ``task``'s logits (the labels are not used)."""
    return lambda batch, outputs: {"logits": outputs[task]}


def supervised(task: str):
    """The adaptor for BasicTrainer: the cross-entropy of ``task``'s logits with the labels."""
    return lambda batch, outputs: {"losses": F.cross_entropy(outputs[task], batch[2])}


def train_teacher(task: str, dataset, args, output_dir: Path, seed: int) -> BagOfWords:
    torch.manual_seed(seed)
    teacher = BagOfWords(dim=64, hidden=128, tasks={task: TASKS[task]})
    trainer = textbrewer.BasicTrainer(
        textbrewer.TrainingConfig(device="cpu", output_dir=str(output_dir), progress_bar=False),
        teacher,
        supervised(task),
    )
    loader = DataLoader(dataset, batch_size=32, shuffle=True)
    trainer.train(torch.optim.Adam(teacher.parameters(), lr=3e-3), None, loader, args.epochs)
    return teacher


@torch.no_grad()
def accuracy(model: nn.Module, dataset: TensorDataset, task: str) -> float:
    model.eval()
    input_ids, attention_mask, labels = dataset.tensors
    return (model(input_ids, attention_mask)[task].argmax(-1) == labels).float().mean().item()


# ----------------------------------------------------------------------------- part 1
def multi_teacher(args, train, test, output_dir: Path) -> dict:
    """Two topic teachers on disjoint halves; the student learns their average on everything."""
    half = args.teacher_examples
    topic = train["topic"]
    teachers = [
        train_teacher("topic", Subset(topic, part), args, output_dir / f"topic_teacher_{i}", i)
        for i, part in enumerate([range(half), range(half, 2 * half)])
    ]
    student = BagOfWords(dim=16, hidden=32, tasks={"topic": 4})
    distiller = textbrewer.MultiTeacherDistiller(
        textbrewer.TrainingConfig(device="cpu", output_dir=str(output_dir / "multi_teacher")),
        textbrewer.DistillationConfig(temperature=2),
        model_T=teachers,
        model_S=student,
        adaptor_T=logits_of("topic"),  # one adaptor for every teacher (or a list, one each)
        adaptor_S=logits_of("topic"),
    )
    loader = DataLoader(topic, batch_size=32, shuffle=True)
    with distiller:
        distiller.train(torch.optim.Adam(student.parameters(), lr=1e-2), None, loader, args.epochs)

    @torch.no_grad()
    def ensemble_accuracy() -> float:
        input_ids, attention_mask, labels = test["topic"].tensors
        logits = sum(teacher(input_ids, attention_mask)["topic"] for teacher in teachers)
        return (logits.argmax(-1) == labels).float().mean().item()

    return {
        "teacher_accuracies": [accuracy(t, test["topic"], "topic") for t in teachers],
        "teacher_average_accuracy": ensemble_accuracy(),
        "student_accuracy": accuracy(student, test["topic"], "topic"),
    }


# ----------------------------------------------------------------------------- part 2
def multi_task(args, train, test, output_dir: Path) -> dict:
    """One teacher per task; one student with two heads distilled from both."""
    labelled = range(2 * args.teacher_examples)  # the teachers see a few labels, the student none
    teachers = {
        task: train_teacher(
            task, Subset(train[task], labelled), args, output_dir / f"teacher_{task}", seed=10
        )
        for task in TASKS
    }
    student = BagOfWords(dim=16, hidden=32, tasks=TASKS)
    adaptors = {task: logits_of(task) for task in TASKS}
    num_steps = args.epochs * len(train["topic"]) // 32  # about epochs / 2 passes per task
    distiller = textbrewer.MultiTaskDistiller(
        textbrewer.TrainingConfig(
            device="cpu", output_dir=str(output_dir / "multi_task"), ckpt_steps=num_steps
        ),
        textbrewer.DistillationConfig(temperature=2),
        model_T=teachers,
        model_S=student,
        adaptor_T=adaptors,  # the teachers have one head each, named after their task
        adaptor_S=adaptors,  # the student's adaptor for a task picks that task's head
    )
    loaders = {task: DataLoader(train[task], batch_size=32, shuffle=True) for task in TASKS}
    with distiller:  # step mode only: a task is drawn for every batch
        distiller.train(torch.optim.Adam(student.parameters(), lr=1e-2), None, loaders, num_steps)
    results = {}
    for task in TASKS:
        results[f"{task}_teacher_accuracy"] = accuracy(teachers[task], test[task], task)
        results[f"{task}_student_accuracy"] = accuracy(student, test[task], task)
    return results


# ----------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-size", type=int, default=3000)
    parser.add_argument(
        "--teacher-examples", type=int, default=300, help="labelled examples per topic teacher"
    )
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny models: 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default=None, help="checkpoints (default: a temp dir)")
    parser.add_argument("--smoke", action="store_true", help="tiny run, a few seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.train_size, args.teacher_examples, args.test_size, args.epochs = 1000, 300, 500, 8
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        torch.manual_seed(args.seed)
        np.random.seed(args.seed)  # MultiTaskDistiller draws each step's task from numpy
        output_dir = Path(args.output_dir or tempfile.mkdtemp(prefix="textbrewer_multi_"))
        train = make_datasets(args.train_size, seed=args.seed)
        test = make_datasets(args.test_size, seed=args.seed + 1)
        results = {"multi_teacher": multi_teacher(args, train, test, output_dir)}
        results["multi_task"] = multi_task(args, train, test, output_dir)
    finally:
        torch.set_num_threads(previous_threads)
    results["seconds"] = time.perf_counter() - start

    part1, part2 = results["multi_teacher"], results["multi_task"]
    teachers = " / ".join(f"{value:.3f}" for value in part1["teacher_accuracies"])
    print(
        f"topic teachers {teachers}, their average {part1['teacher_average_accuracy']:.3f}, "
        f"multi-teacher student {part1['student_accuracy']:.3f}"
    )
    per_task = [
        f"{task} {part2[f'{task}_student_accuracy']:.3f} "
        f"(teacher {part2[f'{task}_teacher_accuracy']:.3f})"
        for task in TASKS
    ]
    print("multi-task student: " + ", ".join(per_task))
    print(f"done in {results['seconds']:.1f} s")
    return results


if __name__ == "__main__":
    # The library reports epochs and checkpoints at INFO level through `logging` (the "textbrewer"
    # logger), which Python hides until it is configured; log lines go above the progress bar.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with logging_redirect_tqdm():
        main()
