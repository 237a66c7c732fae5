"""The two ``train()`` call styles side by side: TextBrewer 0.2.x scripts run unchanged.

* TextBrewer 0.2.x style: ``train(optimizer, dataloader, num_epochs, scheduler_class=...,
  scheduler_args=..., max_grad_norm=...)``: the distiller builds the LR scheduler itself, as
  ``scheduler_class(optimizer=optimizer, **scheduler_args)``;
* documented style: ``train(optimizer, scheduler, dataloader, num_epochs)`` with a scheduler you
  built (``max_grad_norm`` is accepted as a keyword in both styles).

The style is told from the second positional argument: a data source means 0.2.x order. Two
identical students trained the two ways, with the same schedule and gradient clipping, end with
identical weights, checkpoint by checkpoint.

One case differs: with projection layers (``proj`` in a match), ``train()`` adds their param groups
to the optimizer when it starts, after a pre-built scheduler was made, so that scheduler would not
drive them. The distiller refuses it with an error saying to pass ``scheduler_class`` instead; the
example prints that message.

Measured on a shared 2-core CPU machine: about 1.5 s (``--smoke``: well under a second), plus ~3 s
to import torch. Prints ``identical final weights: True`` and ``identical checkpoints: 4 of 4``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.contrib.logging import logging_redirect_tqdm

import textbrewer


class Tagger(nn.Module):
    """A per-token classifier: (batch, length) ids -> (batch, length, 4) logits."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(30, dim)
        self.mix = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, 4)

    def forward(self, input_ids, mask):
        hidden = torch.tanh(self.mix(self.embed(input_ids)))
        return self.out(hidden), hidden


def adaptor(batch, outputs):
    logits, hidden = outputs
    # logits_mask selects the real tokens of 3-D logits for the KD loss
    return {"logits": logits, "logits_mask": batch[1], "hidden": [hidden], "inputs_mask": batch[1]}


def make_loader(batches: int, seed: int) -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, 30, (batches * 8, 12), generator=generator)
    mask = (torch.rand(batches * 8, 12, generator=generator) < 0.8).long()
    dataset = torch.utils.data.TensorDataset(input_ids, mask)
    # a seeded generator: both runs see the same shuffled order
    return torch.utils.data.DataLoader(
        dataset, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )


def make_distiller(teacher, student, output_dir: Path, proj: bool = False):
    match = {"layer_T": 0, "layer_S": 0, "feature": "hidden", "loss": "hidden_mse", "weight": 1}
    if proj:
        match["proj"] = ["linear", 16, 16]
    return textbrewer.GeneralDistiller(
        textbrewer.TrainingConfig(device="cpu", output_dir=str(output_dir), ckpt_frequency=2),
        textbrewer.DistillationConfig(temperature=4, intermediate_matches=[match]),
        teacher,
        student,
        adaptor,
        adaptor,
    )


def schedule(total_steps: int) -> dict:
    """``scheduler_args`` for LambdaLR: linear warm-up over 10% of the steps, then linear decay."""
    warmup = max(1, total_steps // 10)

    def factor(step: int) -> float:
        return (
            step / warmup
            if step < warmup
            else max(0.0, (total_steps - step) / (total_steps - warmup))
        )

    return {"lr_lambda": factor}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=25)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-grad-norm", type=float, default=0.5)
    parser.add_argument("--output-dir", default=None, help="checkpoints (default: a temp dir)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny models: 1)")
    parser.add_argument("--smoke", action="store_true", help="tiny run, a second or two")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batches = 6
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)  # tiny matrices: a second thread only adds overhead
    try:
        return run(args)
    finally:
        torch.set_num_threads(previous_threads)


def run(args) -> dict:
    start = time.perf_counter()
    output_dir = Path(args.output_dir or tempfile.mkdtemp(prefix="textbrewer_calls_"))
    torch.manual_seed(0)
    teacher, initial_student = Tagger(dim=16), Tagger(dim=16)
    total_steps = args.batches * args.epochs
    students = {}

    # TextBrewer 0.2.x style: the distiller builds the scheduler from a class and its arguments.
    student = students["legacy"] = copy.deepcopy(initial_student)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-2)
    with make_distiller(teacher, student, output_dir / "legacy") as distiller:
        distiller.train(
            optimizer,
            make_loader(args.batches, seed=1),
            args.epochs,
            scheduler_class=torch.optim.lr_scheduler.LambdaLR,
            scheduler_args=schedule(total_steps),
            max_grad_norm=args.max_grad_norm,
        )

    # Documented style: a scheduler you built, second positional argument.
    student = students["documented"] = copy.deepcopy(initial_student)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, **schedule(total_steps))
    with make_distiller(teacher, student, output_dir / "documented") as distiller:
        distiller.train(
            optimizer,
            scheduler,
            make_loader(args.batches, seed=1),
            args.epochs,
            max_grad_norm=args.max_grad_norm,
        )

    legacy, documented = (students[name].state_dict() for name in ("legacy", "documented"))
    same_weights = all(torch.equal(legacy[key], documented[key]) for key in legacy)
    checkpoints = sorted(
        (path.name for path in (output_dir / "legacy").glob("gs*.pkl")),
        key=lambda name: int(name[2:-4]),
    )
    same_checkpoints = sum(
        all(
            torch.equal(value, other)
            for value, other in zip(
                torch.load(output_dir / "legacy" / name).values(),
                torch.load(output_dir / "documented" / name).values(),
            )
        )
        for name in checkpoints
    )
    moved = any(
        not torch.equal(value, initial_student.state_dict()[key]) for key, value in legacy.items()
    )
    print(f"checkpoints: {', '.join(checkpoints)}")
    print(f"identical final weights: {same_weights} (and the student did train: {moved})")
    print(f"identical checkpoints: {same_checkpoints} of {len(checkpoints)}")

    # With projections, a pre-built scheduler cannot drive their param groups: a clear error.
    student = copy.deepcopy(initial_student)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, **schedule(total_steps))
    distiller = make_distiller(teacher, student, output_dir / "with_proj", proj=True)
    try:
        distiller.train(optimizer, scheduler, make_loader(args.batches, seed=1), args.epochs)
        refusal = None
    except ValueError as error:
        refusal = str(error)
        print(f"with a projection and a pre-built scheduler: ValueError: {refusal}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return {
        "identical_weights": same_weights,
        "student_changed": moved,
        "checkpoints": checkpoints,
        "identical_checkpoints": same_checkpoints,
        "projection_refusal": refusal,
    }


if __name__ == "__main__":
    # The library reports epochs and checkpoints at INFO level through `logging` (the "textbrewer"
    # logger), which Python hides until it is configured; log lines go above the progress bar.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with logging_redirect_tqdm():
        main()
