"""Teacher cache on disk: epoch time with the cache vs the live teacher vs no teacher at all.

Setting: the encoder of ``_models.py`` (teacher 4 x 256, student 2 x 128), batch 16, length 64,
512 examples, ``GeneralDistiller`` with logits KD and 4 intermediate matches (2 ``hidden_mse``
with projections, 2 ``attention_mse``), AdamW, epoch mode, a shuffling DataLoader
(``num_workers=0``, so reading the cache is on the training thread and inside the timing).

Variants, each the same distiller, data and loader settings:

* ``live teacher``: the teacher runs every step;
* ``teacher cache``: ``precompute_teacher_outputs`` ran once before (timed apart), and
  ``CachedTeacherDataset``'s collate reads each batch's stored logits, hidden states and
  attentions from the memory-mapped ``.npy`` files;
* ``no teacher (limit)``: the same loop with no teacher work at all: one teacher result of the
  right shapes, built once, is attached to every batch. What the cache can at best reach.

Epoch times: the checkpoint writer is wrapped (``_models.SaveTimer``) and epoch ``k`` lasts
from the end of write ``k-1`` to the start of write ``k`` (epoch 1 from the ``train()`` call),
median over epochs 2.. per run, then median over interleaved repetitions (order rotated). Ratios
are taken per repetition against the limit measured in the same repetition. Times are CPU time
of the process (one torch thread), wall time alongside.

Usage: ``python benchmarks/bench_teacher_cache.py [--smoke] [--reps R] [--epochs E]``.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from _models import (
    FULL,
    SMOKE,
    Clock,
    SaveTimer,
    format_table,
    fresh_student,
    full_adaptor,
    intermediate_matches,
    machine_info,
    make_batches,
    make_models,
    make_optimizer,
    median,
    quiesce,
    setup,
    training_config,
)

from textbrewer import DistillationConfig, GeneralDistiller
from textbrewer.distillers._batches import AdaptedOutputs
from textbrewer.teacher_cache import CachedTeacherDataset, precompute_teacher_outputs

VARIANTS = ("live teacher", "teacher cache", "no teacher (limit)")


def examples_of(batches: list[tuple]) -> list[tuple]:
    return [tuple(t[i] for t in batch) for batch in batches for i in range(len(batch[0]))]


class FixedTeacher:
    """Collate that attaches one prebuilt teacher result to every batch (the no-teacher limit)."""

    def __init__(self, result: AdaptedOutputs) -> None:
        self.result = result

    def __call__(self, items):
        batch = torch.utils.data.default_collate(items)
        return {"teacher": batch, "student": batch, "teacher_cache": self.result}


def loaders(env: dict) -> dict:
    """One DataLoader per variant, over the same examples in the same shuffled order."""

    def loader(dataset, collate):
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=env["batch"],
            shuffle=True,
            generator=torch.Generator().manual_seed(0),
            collate_fn=collate,
        )

    cached = CachedTeacherDataset(env["examples"], env["cache"], env["config"])
    return {
        "live teacher": loader(env["examples"], None),
        "teacher cache": loader(cached, cached.collate()),
        "no teacher (limit)": loader(env["examples"], FixedTeacher(env["fixed"])),
    }


def epoch_times(variant: str, env: dict, epochs: int, saves: SaveTimer) -> list[Clock]:
    """Trains ``epochs`` epochs; each epoch's duration, checkpoint writes excluded."""
    student = fresh_student(env["student"])
    distiller = GeneralDistiller(
        training_config(env["output_dir"], ckpt_frequency=1, ckpt_steps=None),
        env["config"],
        env["teacher"],
        student,
        full_adaptor,
        full_adaptor,
    )
    optimizer = make_optimizer(student)
    quiesce()
    saves.reset()
    start = Clock.now()
    distiller.train(optimizer, None, env["loaders"][variant], epochs)
    if len(saves.calls) != epochs:
        raise RuntimeError(f"expected one checkpoint per epoch, got {len(saves.calls)}")
    ends = [start] + [end for _, end in saves.calls[:-1]]
    return [write_start - previous for (write_start, _), previous in zip(saves.calls, ends)]


def make_env(sizes, count: int, output_dir: str) -> dict:
    teacher, student = make_models(sizes)
    batches = make_batches(count, sizes)
    config = DistillationConfig(temperature=4, intermediate_matches=intermediate_matches(4, sizes))
    examples = examples_of(batches)
    start = Clock.now()
    cache = precompute_teacher_outputs(
        teacher,
        full_adaptor,
        examples,
        f"{output_dir}/cache",
        config,
        batch_size=sizes.batch,
        progress_bar=False,
    )
    precompute = Clock.now() - start
    with torch.no_grad():
        fixed = AdaptedOutputs(full_adaptor(batches[0], teacher(*batches[0])))
    env = {
        "teacher": teacher,
        "student": student,
        "config": config,
        "examples": examples,
        "cache": cache,
        "fixed": fixed,
        "batch": sizes.batch,
        "output_dir": output_dir,
        "precompute": precompute,
    }
    env["loaders"] = loaders(env)
    return env


def run(smoke: bool = False, reps: int | None = None, epochs: int | None = None) -> list[dict]:
    """One row per variant: epoch time, ratio to the no-teacher limit, speed-up over live."""
    setup(1)
    sizes = SMOKE if smoke else FULL
    reps = reps or (1 if smoke else 3)
    epochs = max(2, epochs or (2 if smoke else 3))
    count = 4 if smoke else 32
    samples = {name: {"cpu": [], "wall": []} for name in VARIANTS}
    with tempfile.TemporaryDirectory() as output_dir, SaveTimer() as saves:
        env = make_env(sizes, count, output_dir)
        for variant in VARIANTS:  # warm-up
            epoch_times(variant, env, 2, saves)
        for rep in range(reps):
            order = VARIANTS[rep % 3 :] + VARIANTS[: rep % 3]
            for variant in order:
                times = epoch_times(variant, env, epochs, saves)
                for clock in ("cpu", "wall"):
                    samples[variant][clock].append(median([getattr(t, clock) for t in times[1:]]))
    return _rows(samples, env["precompute"], count, epochs, reps)


def _rows(samples: dict, precompute: Clock, batches: int, epochs: int, reps: int) -> list[dict]:
    limit, live = samples["no teacher (limit)"], samples["live teacher"]
    rows = []
    for name, values in samples.items():
        rows.append(
            {
                "variant": name,
                "batches": batches,
                "epochs": epochs,
                "reps": reps,
                "epoch_ms": median(values["cpu"]) * 1e3,
                "ratio_to_limit": median([v / b for v, b in zip(values["cpu"], limit["cpu"])]),
                "speedup_over_live": median([b / v for v, b in zip(values["cpu"], live["cpu"])]),
                "epoch_wall_ms": median(values["wall"]) * 1e3,
                "ratio_to_limit_wall": median(
                    [v / b for v, b in zip(values["wall"], limit["wall"])]
                ),
                "precompute_ms": precompute.cpu * 1e3 if name == "teacher cache" else 0.0,
            }
        )
    return rows


COLUMNS = [
    ("variant", "variant", "s"),
    ("epoch_ms", "epoch ms (CPU)", ".0f"),
    ("ratio_to_limit", "/ no-teacher limit", ".3f"),
    ("speedup_over_live", "speed-up over live", ".2f"),
    ("epoch_wall_ms", "wall epoch ms", ".0f"),
    ("ratio_to_limit_wall", "wall / limit", ".3f"),
    ("precompute_ms", "one-off precompute ms", ".0f"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds")
    parser.add_argument("--reps", type=int, default=None, help="interleaved repetitions")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (>= 2)")
    args = parser.parse_args()
    rows = run(args.smoke, args.reps, args.epochs)
    print(machine_info())
    print(
        f"GeneralDistiller, KD + 4 matches; {rows[0]['batches']} batches per epoch, "
        f"{rows[0]['epochs']} epochs per run, {rows[0]['reps']} interleaved reps\n"
    )
    print(format_table(rows, COLUMNS))


if __name__ == "__main__":
    main()
