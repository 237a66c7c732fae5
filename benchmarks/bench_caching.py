"""Teacher-logits caching: ``BasicDistiller`` epoch time with ``is_caching_logits=True`` vs without.

Setting: the encoder of ``_models.py`` (teacher 4 x 256, student 2 x 128), batch 16, length 64, a
list of 32 batches, logits-only KD (``kd_loss_type='ce'``, T=4), AdamW, epoch mode.

How an epoch is timed: with ``ckpt_frequency=1`` the loop writes a checkpoint at the end of every
epoch. The library's checkpoint writer is wrapped (``_models.SaveTimer``) to record when each write
starts and ends, so epoch ``k`` lasts from the end of write ``k-1`` to the start of write ``k``
(epoch 1 from the ``train()`` call): every micro-batch, the epoch-start work (reshuffle, RNG
capture) and the loss read-back before the checkpoint are inside, the file write is not. Caching
runs the teacher over the whole list once before epoch 1, so epoch 1 includes it and is reported
apart; the comparison uses epochs 2.. (median per run). Runs alternate cached / uncached (order
flipped every repetition); the speed-up is the median over repetitions of
uncached epoch time / cached epoch time, each pair run back to back. Times are CPU time of the
process (one torch thread; see ``_models.Clock``), with wall time alongside.

Usage: ``python benchmarks/bench_caching.py [--smoke] [--reps R] [--epochs E] [--threads T]``.
"""

from __future__ import annotations

import argparse
import tempfile

from _models import (
    FULL,
    SMOKE,
    TEMPERATURE,
    Clock,
    SaveTimer,
    format_table,
    fresh_student,
    logits_adaptor,
    machine_info,
    make_batches,
    make_models,
    make_optimizer,
    median,
    quiesce,
    setup,
    training_config,
)

from textbrewer import BasicDistiller, DistillationConfig

VARIANTS = {"no caching": False, "is_caching_logits=True": True}


def epoch_times(cached: bool, env: dict, epochs: int, saves: SaveTimer) -> list[Clock]:
    """Trains ``epochs`` epochs; returns each epoch's duration, checkpoint writes excluded."""
    student = fresh_student(env["student"])
    distiller = BasicDistiller(
        training_config(env["output_dir"], ckpt_frequency=1, ckpt_epoch_frequency=1),
        DistillationConfig(temperature=TEMPERATURE, kd_loss_type="ce", is_caching_logits=cached),
        env["teacher"],
        student,
        logits_adaptor,
        logits_adaptor,
    )
    optimizer = make_optimizer(student)
    quiesce()
    saves.reset()
    start = Clock.now()
    distiller.train(optimizer, None, env["data"], epochs)
    if len(saves.calls) != epochs:
        raise RuntimeError(f"expected one checkpoint per epoch, got {len(saves.calls)}")
    ends = [start] + [end for _, end in saves.calls[:-1]]
    return [write_start - previous for (write_start, _), previous in zip(saves.calls, ends)]


def run(
    smoke: bool = False,
    reps: int | None = None,
    epochs: int | None = None,
    threads: int | None = None,
) -> list[dict]:
    """One row per variant: epoch times (epochs 2..), first epoch, speed-up over no caching."""
    setup(threads or 1)
    sizes = SMOKE if smoke else FULL
    reps = reps or (2 if smoke else 3)
    epochs = max(2, epochs or (2 if smoke else 3))
    batches = 8 if smoke else 32
    samples: dict[str, dict[str, list[float]]] = {
        name: {key: [] for key in ("epoch", "first", "epoch_wall", "first_wall")}
        for name in VARIANTS
    }
    with tempfile.TemporaryDirectory() as output_dir, SaveTimer() as saves:
        teacher, student = make_models(sizes)
        env = {
            "teacher": teacher,
            "student": student,
            "data": make_batches(batches, sizes),
            "output_dir": output_dir,
        }
        for cached in VARIANTS.values():  # warm-up
            epoch_times(cached, {**env, "data": env["data"][:2]}, 2, saves)
        for rep in range(reps):
            names = list(VARIANTS) if rep % 2 == 0 else list(reversed(VARIANTS))
            for name in names:
                times = epoch_times(VARIANTS[name], env, epochs, saves)
                for clock, suffix in (("cpu", ""), ("wall", "_wall")):
                    seconds = [getattr(t, clock) for t in times]
                    samples[name][f"first{suffix}"].append(seconds[0] * 1e3)
                    samples[name][f"epoch{suffix}"].append(median(seconds[1:]) * 1e3)
    return _rows(samples, batches, epochs, reps)


def _rows(samples: dict, batches: int, epochs: int, reps: int) -> list[dict]:
    base = samples["no caching"]
    rows = []
    for name, values in samples.items():
        speedups = [plain / mine for plain, mine in zip(base["epoch"], values["epoch"])]
        wall_speedups = [
            plain / mine for plain, mine in zip(base["epoch_wall"], values["epoch_wall"])
        ]
        epoch_ms = median(values["epoch"])
        rows.append(
            {
                "variant": name,
                "batches": batches,
                "epochs": epochs,
                "reps": reps,
                "epoch_ms": epoch_ms,
                "batch_ms": epoch_ms / batches,
                "first_epoch_ms": median(values["first"]),
                "speedup": median(speedups),
                "speedup_min": min(speedups),
                "speedup_max": max(speedups),
                "spread": (max(values["epoch"]) - min(values["epoch"])) / epoch_ms,
                "epoch_wall_ms": median(values["epoch_wall"]),
                "first_epoch_wall_ms": median(values["first_wall"]),
                "speedup_wall": median(wall_speedups),
            }
        )
    return rows


COLUMNS = [
    ("variant", "variant", "s"),
    ("epoch_ms", "epoch ms (epochs 2..)", ".0f"),
    ("batch_ms", "ms/batch", ".1f"),
    ("first_epoch_ms", "epoch 1 ms (incl. caching)", ".0f"),
    ("speedup", "speed-up (median of pairs)", ".2f"),
    ("speedup_min", "min", ".2f"),
    ("speedup_max", "max", ".2f"),
    ("spread", "epoch spread", ".1%"),
    ("epoch_wall_ms", "wall epoch ms", ".0f"),
    ("first_epoch_wall_ms", "wall epoch 1 ms", ".0f"),
    ("speedup_wall", "wall speed-up", ".2f"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds")
    parser.add_argument("--reps", type=int, default=None, help="interleaved repetitions")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (>= 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    args = parser.parse_args()
    rows = run(args.smoke, args.reps, args.epochs, args.threads)
    print(machine_info())
    sizes = SMOKE if args.smoke else FULL
    print(
        f"BasicDistiller, teacher {sizes.teacher.layers}x{sizes.teacher.hidden}, student "
        f"{sizes.student.layers}x{sizes.student.hidden}, batch {sizes.batch}, length "
        f"{sizes.length}; {rows[0]['batches']} batches, {rows[0]['epochs']} epochs per run, "
        f"{rows[0]['reps']} interleaved reps; checkpoint writes excluded\n"
    )
    print(format_table(rows, COLUMNS))


if __name__ == "__main__":
    main()
