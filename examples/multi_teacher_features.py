"""Two teachers of different widths teach one student through their hidden states.

The data is generated: sentences of token ids mixing filler words with topic words; the label is
the topic with the most words (4 classes, chance 25%). Two teachers, one 64 wide and one 96 wide,
each learn the task from their own few labelled sentences. The student (24 wide) is distilled
from both with ``MultiTeacherDistiller``:

* KD on the teachers' logits, combined as ``--combine-teachers`` says (``mean_logits``, the
  default, or ``mean_losses``), weighted by ``--teacher-weights``;
* two intermediate matches, one per teacher, each naming its teacher with ``'teacher'``: the
  student's layer 1 imitates teacher 0's layer 1 and its layer 2 imitates teacher 1's layer 2.
  The widths differ, so each match has its own trainable projection (24 -> 64 and 24 -> 96),
  added to the optimizer as its own param group.

It reports the accuracies, and for each match the feature loss on held-out sentences before and
after distillation (the projections start random, so "before" is what an untrained projection
gives).

Measured on a shared 2-core CPU machine (1 torch thread), full run (about 10 s):
``teachers 0.919 / 0.980, their average 0.986, student 0.986`` and feature losses
``teacher 0: 1.5291 -> 0.2593, teacher 1: 2.6451 -> 0.3609``. Over seeds 0, 1, 2 the student
reaches 0.986 / 0.984 / 0.976 (default), 0.982 / 0.985 / 0.976 (``--combine-teachers
mean_losses``) and 0.989 / 0.982 / 0.975 (``--teacher-weights 1 3``): with two teachers this
alike, the modes are equal within seed noise. ``--smoke`` takes about 3 s.
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
from torch.utils.data import DataLoader, Subset, TensorDataset
from tqdm.contrib.logging import logging_redirect_tqdm

import textbrewer
from textbrewer.losses import hid_mse_loss

PAD, LENGTH, VOCAB, CLASSES = 0, 20, 60, 4
TOPIC_WORDS = [range(1 + 5 * topic, 6 + 5 * topic) for topic in range(CLASSES)]  # ids 1..20
FILLER = range(21, VOCAB)


# ----------------------------------------------------------------------------- data
def make_dataset(count: int, seed: int) -> TensorDataset:
    """``(input_ids, attention_mask, labels)``; the label is the most frequent topic."""
    rng = random.Random(seed)
    input_ids = torch.full((count, LENGTH), PAD, dtype=torch.long)
    labels = torch.empty(count, dtype=torch.long)
    row = 0
    while row < count:
        length = rng.randint(8, LENGTH)
        tokens = [rng.choice(FILLER) for _ in range(length)]
        topics = [0] * CLASSES
        for slot in rng.sample(range(length), k=rng.randint(2, 6)):
            topic = rng.randrange(CLASSES)
            tokens[slot], topics[topic] = rng.choice(TOPIC_WORDS[topic]), topics[topic] + 1
        if topics.count(max(topics)) == 1:  # keep unambiguous sentences only
            input_ids[row, :length] = torch.tensor(tokens)
            labels[row] = topics.index(max(topics))
            row += 1
    return TensorDataset(input_ids, (input_ids != PAD).long(), labels)


# ----------------------------------------------------------------------------- models
class Encoder(nn.Module):
    """Embedding, then ``layers`` per-token tanh layers, mean pooling and a linear head.

    Returns ``{'logits': (batch, classes), 'hidden': [embeddings, layer 1, ...]}``, each hidden
    state (batch, length, width).
    """

    def __init__(self, width: int, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width, padding_idx=PAD)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(layers))
        self.head = nn.Linear(width, CLASSES)

    def forward(self, input_ids, attention_mask, labels=None):
        hidden = self.embed(input_ids)
        states = [hidden]
        for layer in self.layers:
            hidden = torch.tanh(layer(hidden)) + hidden
            states.append(hidden)
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        return {"logits": self.head(pooled), "hidden": states}


def adaptor(batch, outputs):
    """Logits, hidden states and the padding mask (``inputs_mask``) for the matches."""
    return {"logits": outputs["logits"], "hidden": outputs["hidden"], "inputs_mask": batch[1]}


def supervised(batch, outputs):
    return {"losses": F.cross_entropy(outputs["logits"], batch[2])}


def train_teacher(width: int, dataset, args, output_dir: Path, seed: int) -> Encoder:
    torch.manual_seed(seed)
    teacher = Encoder(width)
    trainer = textbrewer.BasicTrainer(
        textbrewer.TrainingConfig(device="cpu", output_dir=str(output_dir), progress_bar=False),
        teacher,
        supervised,
    )
    loader = DataLoader(dataset, batch_size=32, shuffle=True)
    trainer.train(torch.optim.Adam(teacher.parameters(), lr=3e-3), None, loader, args.epochs)
    return teacher


# ----------------------------------------------------------------------------- the distillation
# The student's layer 1 imitates teacher 0's layer 1, its layer 2 teacher 1's layer 2. The
# teachers are 64 and 96 wide, the student 24: each match projects the student's hidden state to
# its teacher's width with its own trainable projection (the 4th element: its optimizer options).
MATCHES = [
    {"layer_T": 1, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
     "proj": ["linear", 24, 64, {"lr": 3e-3}], "teacher": 0},
    {"layer_T": 2, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
     "proj": ["linear", 24, 96, {"lr": 3e-3}], "teacher": 1},
]  # fmt: skip


def build_distiller(teachers, student, args, output_dir: Path):
    return textbrewer.MultiTeacherDistiller(
        textbrewer.TrainingConfig(device="cpu", output_dir=str(output_dir), progress_bar=False),
        textbrewer.DistillationConfig(temperature=2, intermediate_matches=MATCHES),
        model_T=teachers,
        model_S=student,
        adaptor_T=adaptor,  # one adaptor for both teachers (or a list, one each)
        adaptor_S=adaptor,
        teacher_weights=args.teacher_weights,  # None: equal weights
        combine_teachers=args.combine_teachers,
    )


def distil(distiller, student, train, args) -> None:
    loader = DataLoader(train, batch_size=32, shuffle=True)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)  # train() adds the projections
    with distiller:
        distiller.train(optimizer, None, loader, args.epochs)


# ----------------------------------------------------------------------------- measurements
@torch.no_grad()
def accuracy(models: list[nn.Module], dataset: TensorDataset) -> float:
    """Accuracy of the summed logits of ``models`` (one model: its own accuracy)."""
    input_ids, attention_mask, labels = dataset.tensors
    logits = sum(model.eval()(input_ids, attention_mask)["logits"] for model in models)
    return (logits.argmax(-1) == labels).float().mean().item()


@torch.no_grad()
def feature_losses(teachers, student, projections, dataset: TensorDataset) -> list[float]:
    """Per match, ``hidden_mse(projection(student layer), teacher layer)`` on ``dataset``."""
    input_ids, attention_mask, _ = dataset.tensors
    hidden_S = student.eval()(input_ids, attention_mask)["hidden"]
    losses = []
    for match, projection in zip(MATCHES, projections):
        hidden_T = teachers[match["teacher"]].eval()(input_ids, attention_mask)["hidden"]
        projected = projection(hidden_S[match["layer_S"]])
        losses.append(hid_mse_loss(projected, hidden_T[match["layer_T"]], attention_mask).item())
    return losses


# ----------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-size", type=int, default=3000)
    parser.add_argument("--teacher-examples", type=int, default=400, help="labels per teacher")
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument(
        "--combine-teachers", choices=["mean_logits", "mean_losses"], default="mean_logits"
    )
    parser.add_argument("--teacher-weights", type=float, nargs=2, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny models: 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default=None, help="checkpoints (default: a temp dir)")
    parser.add_argument("--smoke", action="store_true", help="tiny run, a few seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.train_size, args.teacher_examples, args.test_size, args.epochs = 600, 200, 400, 5
    return args


def run(args, output_dir: Path) -> dict:
    train = make_dataset(args.train_size, seed=args.seed)
    test = make_dataset(args.test_size, seed=args.seed + 1)
    half = args.teacher_examples
    teachers = [
        train_teacher(width, Subset(train, part), args, output_dir / f"teacher_{i}", seed=i)
        for i, (width, part) in enumerate([(64, range(half)), (96, range(half, 2 * half))])
    ]
    torch.manual_seed(args.seed + 2)
    student = Encoder(24)
    results = {"teacher_params": [sum(p.numel() for p in t.parameters()) for t in teachers]}
    results["student_params"] = sum(p.numel() for p in student.parameters())
    # The projections are built (in match order) with the distiller, before training.
    distiller = build_distiller(teachers, student, args, output_dir / "student")
    results["feature_losses_before"] = feature_losses(teachers, student, distiller.projs, test)
    distil(distiller, student, train, args)
    results.update(
        teacher_accuracies=[accuracy([t], test) for t in teachers],
        teacher_average_accuracy=accuracy(teachers, test),
        student_accuracy=accuracy([student], test),
        feature_losses_after=feature_losses(teachers, student, distiller.projs, test),
        projection_shapes=[tuple(p.weight.shape) for p in distiller.projs],
        checkpoints=sorted(p.name for p in (output_dir / "student").glob("gs*.pkl")),
    )
    return results


def main(argv=None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        torch.manual_seed(args.seed)
        output_dir = Path(args.output_dir or tempfile.mkdtemp(prefix="textbrewer_features_"))
        results = run(args, output_dir)
    finally:
        torch.set_num_threads(previous_threads)
    results["seconds"] = time.perf_counter() - start
    teachers = " / ".join(f"{value:.3f}" for value in results["teacher_accuracies"])
    print(
        f"teachers {teachers}, their average {results['teacher_average_accuracy']:.3f}, "
        f"student {results['student_accuracy']:.3f}"
    )
    changes = ", ".join(
        f"teacher {match['teacher']}: {before:.4f} -> {after:.4f}"
        for match, before, after in zip(
            MATCHES, results["feature_losses_before"], results["feature_losses_after"]
        )
    )
    print(f"feature losses {changes}")
    print(f"done in {results['seconds']:.1f} s")
    return results


if __name__ == "__main__":
    # The library reports epochs and checkpoints at INFO level through `logging` (the "textbrewer"
    # logger), which Python hides until it is configured; log lines go above the progress bar.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with logging_redirect_tqdm():
        main()
