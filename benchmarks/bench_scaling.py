"""How ``GeneralDistiller``'s time per step grows with sequence length and number of matches.

Grid: length 64, 128, 256 x intermediate matches 0, 4, 8 (half ``hidden_mse`` through 128->256
linear projections, half ``attention_mse`` with the input mask; 0 means KD only), on the encoder
of ``_models.py`` (teacher 4 x 256, student 2 x 128), batch 16. At each point the distiller's
``train()`` in step mode is timed against the hand loop of ``_models.hand_general_loop`` (same
losses, projections and optimizer groups), exactly as ``bench_loop.py`` does: construction
untimed, warm-up, runs interleaved with the order flipped every repetition, checkpoint writes
subtracted, medians of ms/step and of the per-pair ratios.

Times are CPU time of the process (one torch thread; see ``_models.Clock``); the wall-time ratio is
shown too. The number of steps per run shrinks as the length grows so that each point costs about
the same. As in ``bench_loop.py``, the loop's own cost (which depends on the number of matches,
not on the length) is also measured on the tiny models, with 0, 4 and 8 matches, and the ratio it
implies at each point is printed next to the directly measured one.

Usage: ``python benchmarks/bench_scaling.py [--smoke] [--reps R] [--threads T]``.
"""

from __future__ import annotations

import argparse
import tempfile

from _models import (
    FULL,
    SMOKE,
    SaveTimer,
    format_table,
    machine_info,
    setup,
)
from bench_loop import general_hand, general_library, make_env, time_pair

FULL_GRID = {"lengths": (64, 128, 256), "matches": (0, 4, 8)}
SMOKE_GRID = {"lengths": (8, 16), "matches": (0, 4)}
# Steps per timed run at each full length (about the same wall time per point).
FULL_STEPS = {64: 4, 128: 3, 256: 2}
FULL_TINY = {"steps": 20, "reps": 11}
SMOKE_TINY = {"steps": 3, "reps": 2}


def run(smoke: bool = False, reps: int | None = None, threads: int | None = None) -> list[dict]:
    """One row per (length, matches) point: ms/step of both sides, their ratio, and the ratio
    implied by the loop overhead measured on the tiny models with as many matches."""
    setup(threads or 1)
    base = SMOKE if smoke else FULL
    grid = SMOKE_GRID if smoke else FULL_GRID
    tiny_plan = SMOKE_TINY if smoke else FULL_TINY
    reps = reps or (2 if smoke else 5)
    rows = []
    with tempfile.TemporaryDirectory() as output_dir, SaveTimer() as saves:
        tiny = make_env(SMOKE, output_dir, batches=4)
        overhead = {
            matches: _time_point(tiny, matches, tiny_plan["steps"], tiny_plan["reps"], saves)
            for matches in grid["matches"]
        }
        for length in grid["lengths"]:
            env = make_env(base.at_length(length), output_dir, batches=4)
            steps = 2 if smoke else FULL_STEPS.get(length, 2)
            for index, matches in enumerate(grid["matches"]):
                row = {"length": length, "matches": matches, "steps": steps, "reps": reps}
                # Warm up once per length: the shapes (and so the allocator's blocks) are the same.
                warmup = 2 if index == 0 else 0
                row.update(_time_point(env, matches, steps, reps, saves, warmup))
                row["tiny_overhead_ms"] = overhead[matches]["overhead_ms"]
                row["implied_ratio"] = 1 + row["tiny_overhead_ms"] / row["hand_ms"]
                rows.append(row)
    return rows


def _time_point(
    env, matches: int, steps: int, reps: int, saves: SaveTimer, warmup: int = 2
) -> dict:
    return time_pair(
        lambda: general_library(env, matches),
        lambda: general_hand(env, matches),
        steps,
        reps,
        saves,
        warmup,
    )


COLUMNS = [
    ("length", "length", "d"),
    ("matches", "matches", "d"),
    ("library_ms", "library ms/step", ".1f"),
    ("hand_ms", "hand ms/step", ".1f"),
    ("ratio", "ratio", ".3f"),
    ("ratio_min", "min", ".3f"),
    ("ratio_max", "max", ".3f"),
    ("ratio_wall", "wall ratio", ".3f"),
    ("tiny_overhead_ms", "loop overhead ms/step (tiny models)", "+.3f"),
    ("implied_ratio", "implied ratio", ".4f"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds")
    parser.add_argument("--reps", type=int, default=None, help="interleaved repetitions")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    args = parser.parse_args()
    rows = run(args.smoke, args.reps, args.threads)
    print(machine_info())
    sizes = SMOKE if args.smoke else FULL
    print(
        f"GeneralDistiller vs hand loop; teacher {sizes.teacher.layers}x{sizes.teacher.hidden}, "
        f"student {sizes.student.layers}x{sizes.student.hidden}, batch {sizes.batch}; "
        f"{rows[0]['reps']} interleaved reps per point; checkpoint writes subtracted\n"
    )
    print(
        "CPU time per step; ratio = median over pairs of library / hand. Loop overhead: median "
        f"paired difference on the tiny models (teacher {SMOKE.teacher.layers}x"
        f"{SMOKE.teacher.hidden}, student {SMOKE.student.layers}x{SMOKE.student.hidden}, batch "
        f"{SMOKE.batch}, length {SMOKE.length}) with the same matches; implied ratio = 1 + "
        "overhead / hand ms/step.\n"
    )
    print(format_table(rows, COLUMNS))


if __name__ == "__main__":
    main()
