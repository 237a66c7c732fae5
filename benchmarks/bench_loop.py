"""Loop overhead: the distillers' ``train()`` against a hand-written PyTorch loop, step for step.

Four cases on the small BERT-like encoder of ``_models.py`` (teacher 4 x 256, student 2 x 128,
batch 16, length 64):

- ``kd_like_0.2.x``: ``BasicDistiller`` with KD (``ce``, T=4) plus the hard-label loss (weight
  0.5), gradient clipping (``max_grad_norm=1``) and a stepped LR scheduler, against the loop as
  TextBrewer 0.2.x wrote it (``_models.hand_02x_loop``: teacher forward under ``no_grad``,
  student forward, ``total_loss = 0; += kd * w; += hard * w; / accumulation``, backward, clip,
  optimizer step, scheduler step, ``zero_grad``);
- ``basic_kd``: ``BasicDistiller``, logits-only KD (``kd_loss_type='ce'``, T=4), against a hand loop
  calling the same ``KD_LOSS_MAP['ce']``;
- ``general_4_matches``: ``GeneralDistiller`` with KD and 4 intermediate matches (2 ``hidden_mse``
  through 128->256 linear projections, 2 ``attention_mse`` with the input mask), against a hand loop
  computing the same losses with the library's loss functions and ``PROJ_MAP`` projections, with
  the same optimizer param groups (so only the loop differs);
- ``trainer``: ``BasicTrainer`` training a teacher-sized model on cross-entropy, against a hand
  supervised loop.

Timing: ``train(optimizer, None, data, None, num_steps=N)`` (step mode) against the hand loop
for the same N steps over the same cycled list of CPU batches. Construction (models, distiller,
optimizer) is outside the timed region; ``train()``'s own set-up is inside it. Step mode
checkpoints at ``num_steps`` whatever ``ckpt_steps`` is: that one file (written to a temporary
directory) is timed separately and subtracted. ``log_every_n_steps=10``, so the timed runs include
the loop's periodic loss read-back. Both sides are warmed up, then run interleaved, the order
alternating (L H H L L H ...), ``reps`` times. Times are CPU time of the process (one torch
thread, so all the work is on the calling thread): on a shared machine wall time also counts the
time spent descheduled; wall times are printed too. The table gives median ms/step, the median of
the per-pair ratios (library / hand, each pair run back to back) and their min-max.

The loop's own cost is Python and scalar-tensor work that does not grow with the model, so it is
also measured on the tiny ``SMOKE`` models, where a step costs a few ms and the difference is not
lost in the noise of a 150 ms step: the median of the paired differences (library - hand) is the
overhead per step, and ``1 + overhead / hand ms/step`` the ratio it implies at the benchmark size.
Two counts that machine load cannot disturb complete it: the aten operators (a
``TorchDispatchMode`` counter: forward, backward and optimizer) and the Python function calls
(``sys.setprofile``) the library makes per step beyond the hand loop's.

Syncs: ``Tensor.item/.tolist/.cpu/__float__/__bool__/__int__`` are patched with counters while
the distiller trains N and 2N steps (tiny models; counts do not depend on sizes); the difference
divided by N is the count per micro-batch (so the fixed end-of-run read-back cancels). Only calls
made from ``textbrewer`` code count as the library's; AdamW's reads of its CPU step counters
(``torch`` code, not device syncs) are reported apart. Measured with ``log_every_n_steps`` above
the run length (expected: 0) and with 1 (expected: 1, the batched read-back every step, which
shows that the counter sees it).

Compiled steps (``--compile [BACKEND]``, default inductor): ``TrainingConfig(torch_compile=...)``
against eager, both through the library, in the same interleaved way, at the benchmark size and
on the tiny models; compilation happens in the warm-up and is not timed.

Usage: ``python benchmarks/bench_loop.py [--smoke] [--reps R] [--steps N] [--threads T]
[--cases NAME ...] [--compile [BACKEND]]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from typing import Callable

import torch
from _models import (
    FULL,
    HARD_LABEL_WEIGHT,
    MAX_GRAD_NORM,
    SEED,
    SMOKE,
    TEMPERATURE,
    Encoder,
    OpCounter,
    SaveTimer,
    Sizes,
    SyncCounter,
    count_python_calls,
    format_table,
    fresh_student,
    full_adaptor,
    hand_02x_loop,
    hand_general_loop,
    hand_kd_loop,
    hand_supervised_loop,
    hard_label_adaptor,
    intermediate_matches,
    logits_adaptor,
    machine_info,
    make_batches,
    make_models,
    make_optimizer,
    make_projections,
    make_scheduler,
    median,
    quiesce,
    setup,
    supervised_adaptor,
    timed,
    training_config,
)
from torch import nn

from textbrewer import BasicDistiller, BasicTrainer, DistillationConfig, GeneralDistiller


@dataclasses.dataclass
class Runner:
    """``runner(num_steps)`` trains ``model`` for that many optimizer steps."""

    model: nn.Module
    train: Callable[[int], None]

    def __call__(self, num_steps: int) -> None:
        self.train(num_steps)


@dataclasses.dataclass
class Env:
    sizes: Sizes
    teacher: Encoder
    student: Encoder
    supervised: Encoder
    data: list
    output_dir: str


def make_env(sizes: Sizes, output_dir: str, batches: int = 8) -> Env:
    teacher, student = make_models(sizes)
    torch.manual_seed(SEED + 1)
    supervised = Encoder(sizes.teacher)
    return Env(sizes, teacher, student, supervised, make_batches(batches, sizes), output_dir)


# -------------------------------------------------------------------------------------------------
# The cases: each builds a fresh student, optimizer and (for the library) distiller, untimed,
# and returns the function that trains.
# -------------------------------------------------------------------------------------------------


def _library_runner(distiller, model, data) -> Runner:
    optimizer = make_optimizer(model)

    def train(steps: int) -> None:
        distiller.train(optimizer, None, data, None, num_steps=steps)

    return Runner(model, train)


def basic_kd_library(env: Env, **config) -> Runner:
    student = fresh_student(env.student)
    distiller = BasicDistiller(
        training_config(env.output_dir, **config),
        DistillationConfig(temperature=TEMPERATURE, kd_loss_type="ce"),
        env.teacher,
        student,
        logits_adaptor,
        logits_adaptor,
    )
    return _library_runner(distiller, student, env.data)


def basic_kd_hand(env: Env) -> Runner:
    student = fresh_student(env.student)
    optimizer = make_optimizer(student)
    return Runner(
        student, lambda steps: hand_kd_loop(env.teacher, student, optimizer, env.data, steps)
    )


def general_library(env: Env, matches: int = 4, **config) -> Runner:
    student = fresh_student(env.student)
    torch.manual_seed(SEED)  # the projections are drawn alike on both sides
    distiller = GeneralDistiller(
        training_config(env.output_dir, **config),
        DistillationConfig(
            temperature=TEMPERATURE,
            kd_loss_type="ce",
            intermediate_matches=intermediate_matches(matches, env.sizes),
        ),
        env.teacher,
        student,
        full_adaptor,
        full_adaptor,
    )
    return _library_runner(distiller, student, env.data)


def general_hand(env: Env, matches: int = 4) -> Runner:
    student = fresh_student(env.student)
    match_list = intermediate_matches(matches, env.sizes)
    torch.manual_seed(SEED)
    projections = make_projections(match_list)
    optimizer = make_optimizer(student, projections)

    def train(steps: int) -> None:
        hand_general_loop(env.teacher, student, projections, match_list, optimizer, env.data, steps)

    return Runner(student, train)


def kd_02x_library(env: Env, **config) -> Runner:
    student = fresh_student(env.student)
    distiller = BasicDistiller(
        training_config(env.output_dir, **config),
        DistillationConfig(
            temperature=TEMPERATURE, kd_loss_type="ce", hard_label_weight=HARD_LABEL_WEIGHT
        ),
        env.teacher,
        student,
        logits_adaptor,
        hard_label_adaptor,
    )
    optimizer = make_optimizer(student)
    scheduler = make_scheduler(optimizer)

    def train(steps: int) -> None:
        distiller.train(
            optimizer, scheduler, env.data, None, num_steps=steps, max_grad_norm=MAX_GRAD_NORM
        )

    return Runner(student, train)


def kd_02x_hand(env: Env) -> Runner:
    student = fresh_student(env.student)
    optimizer = make_optimizer(student)
    scheduler = make_scheduler(optimizer)
    return Runner(
        student,
        lambda steps: hand_02x_loop(env.teacher, student, optimizer, scheduler, env.data, steps),
    )


def trainer_library(env: Env, **config) -> Runner:
    model = fresh_student(env.supervised)
    trainer = BasicTrainer(training_config(env.output_dir, **config), model, supervised_adaptor)
    return _library_runner(trainer, model, env.data)


def trainer_hand(env: Env) -> Runner:
    model = fresh_student(env.supervised)
    optimizer = make_optimizer(model)
    return Runner(model, lambda steps: hand_supervised_loop(model, optimizer, env.data, steps))


CASES = {
    "kd_like_0.2.x": (kd_02x_library, kd_02x_hand),
    "basic_kd": (basic_kd_library, basic_kd_hand),
    "general_4_matches": (general_library, general_hand),
    "trainer": (trainer_library, trainer_hand),
}


# -------------------------------------------------------------------------------------------------
# Measurements
# -------------------------------------------------------------------------------------------------


def time_pair(
    library: Callable[[], Runner],
    hand: Callable[[], Runner],
    steps: int,
    reps: int,
    saves: SaveTimer,
    warmup_steps: int = 2,
) -> dict:
    """Interleaved timings of ``library()`` and ``hand()`` runners: ms/step medians and ratios.

    Ratios and ``*_ms`` use CPU time (see ``_models.Clock``); ``*_wall_ms`` and ``wall_ratio`` the
    same runs' wall time.
    """
    if warmup_steps:  # allocator, kernels, first optimizer-state allocation
        for make in (library, hand):
            make()(warmup_steps)
    times: dict[str, list] = {"library": [], "hand": []}
    for rep in range(reps):
        order = ("library", "hand") if rep % 2 == 0 else ("hand", "library")
        for side in order:
            runner = (library if side == "library" else hand)()
            quiesce()
            times[side].append(timed(lambda runner=runner: runner(steps), saves))
            if side == "library" and not saves.calls:
                raise RuntimeError(
                    "the library wrote no checkpoint through _checkpoint.atomic_save: the "
                    "checkpoint writer was not intercepted, so its time was not subtracted"
                )
    result = {}
    for clock, suffix in (("cpu", ""), ("wall", "_wall")):
        lib = [getattr(t, clock) * 1e3 / steps for t in times["library"]]
        own = [getattr(t, clock) * 1e3 / steps for t in times["hand"]]
        ratios = [a / b for a, b in zip(lib, own)]
        result.update(
            {
                f"library{suffix}_ms": median(lib),
                f"hand{suffix}_ms": median(own),
                f"ratio{suffix}": median(ratios),
                f"ratio{suffix}_min": min(ratios),
                f"ratio{suffix}_max": max(ratios),
                f"overhead{suffix}_ms": median([a - b for a, b in zip(lib, own)]),
                f"overhead{suffix}_min_ms": min(lib) - min(own),
                f"library{suffix}_spread": (max(lib) - min(lib)) / median(lib),
                f"hand{suffix}_spread": (max(own) - min(own)) / median(own),
            }
        )
    return result


def syncs_per_micro_batch(make: Callable[[], Runner], steps: int) -> dict:
    """Counted calls per micro-batch, by origin: the extra count of 2N steps over N steps, / N.

    Fixed per-call costs (the read-back at the final checkpoint, set-up) cancel out.
    """
    totals = []
    for count in (steps, 2 * steps):
        runner = make()
        with SyncCounter() as counter:
            runner(count)
        totals.append(counter.counts)
    return {origin: (totals[1][origin] - totals[0][origin]) / steps for origin in totals[0]}


def work_per_step(make: Callable[[], Runner], steps: int) -> dict:
    """aten operators and Python calls per step: the extra count of 2N steps over N steps, / N."""
    totals = []
    for count in (steps, 2 * steps):
        runner = make()
        with OpCounter() as ops:
            runner(count)
        runner = make()
        calls = count_python_calls(lambda runner=runner, count=count: runner(count))
        totals.append((ops.count, calls))
    return {
        "aten_ops": (totals[1][0] - totals[0][0]) / steps,
        "python_calls": (totals[1][1] - totals[0][1]) / steps,
    }


def measure_case(name: str, env: Env, tiny: Env, plan: dict, saves: SaveTimer) -> dict:
    """Times one case at the benchmark sizes and on the tiny models, and counts its syncs."""
    make_library, make_hand = CASES[name]
    row = {"case": name, "steps": plan["steps"], "reps": plan["reps"]}
    row.update(
        time_pair(
            lambda: make_library(env), lambda: make_hand(env), plan["steps"], plan["reps"], saves
        )
    )
    # The loop's own cost does not grow with the model (it is Python and scalar tensor work), so
    # measuring it where the model costs almost nothing resolves it far below the noise above.
    small = time_pair(
        lambda: make_library(tiny),
        lambda: make_hand(tiny),
        plan["tiny_steps"],
        plan["tiny_reps"],
        saves,
    )
    row["tiny_hand_ms"] = small["hand_ms"]
    row["tiny_library_ms"] = small["library_ms"]
    row["tiny_ratio"] = small["ratio"]
    row["tiny_ratio_min"] = small["ratio_min"]
    row["tiny_ratio_max"] = small["ratio_max"]
    row["tiny_overhead_ms"] = small["overhead_ms"]
    row["tiny_overhead_min_ms"] = small["overhead_min_ms"]
    row["implied_ratio"] = 1 + small["overhead_ms"] / row["hand_ms"]
    # Deterministic counts, immune to machine load: what the loop adds per step.
    work = {
        side: work_per_step(lambda make=make: make(tiny), plan["sync_steps"])
        for side, make in (("library", make_library), ("hand", make_hand))
    }
    for key in ("aten_ops", "python_calls"):
        row[f"extra_{key}_per_step"] = work["library"][key] - work["hand"][key]
    steps = plan["sync_steps"]
    quiet = syncs_per_micro_batch(lambda: make_library(tiny, log_every_n_steps=10 * steps), steps)
    every = syncs_per_micro_batch(lambda: make_library(tiny, log_every_n_steps=1), steps)
    hand = syncs_per_micro_batch(lambda: make_hand(tiny), steps)
    row.update(
        {
            "syncs_per_micro_batch": quiet["textbrewer"],
            "syncs_per_micro_batch_log_every_1": every["textbrewer"],
            "torch_internal_reads_library": quiet["torch"],
            "torch_internal_reads_hand": hand["torch"],
            "user_code_reads_library": quiet["user"],
        }
    )
    return row


def measure_compiled(name: str, env: Env, tiny: Env, plan: dict, saves: SaveTimer, backend: str):
    """``torch_compile`` against eager, both through the library, at both sizes.

    Compilation is not timed: ``time_pair``'s warm-up runs compile, and later runs (each with a
    fresh student and distiller) reuse dynamo's cached graphs, as later steps of a run do.
    """
    make_library = CASES[name][0]
    row = {"case": name, "backend": backend}
    compiled = {"backend": backend}
    for label, where, steps, reps in (
        ("", env, plan["steps"], plan["reps"]),
        ("tiny_", tiny, plan["tiny_steps"], plan["compile_tiny_reps"]),
    ):
        # The first compiled run compiles (wall time, from a clean dynamo cache); the eager
        # run beside it is the warm-up of the other side.
        torch._dynamo.reset()
        first = timed(lambda where=where: make_library(where, torch_compile=compiled)(2), saves)
        eager = timed(lambda where=where: make_library(where)(2), saves)
        row[f"{label}compile_s"] = first.wall - eager.wall
        timing = time_pair(
            lambda where=where: make_library(where, torch_compile=compiled),
            lambda where=where: make_library(where),
            steps,
            reps,
            saves,
            warmup_steps=0,
        )
        row[f"{label}compiled_ms"] = timing["library_ms"]
        row[f"{label}eager_ms"] = timing["hand_ms"]
        row[f"{label}compile_ratio"] = timing["ratio"]
        row[f"{label}compile_ratio_min"] = timing["ratio_min"]
        row[f"{label}compile_ratio_max"] = timing["ratio_max"]
    return row


FULL_PLAN = {
    "steps": 8,
    "reps": 7,
    "tiny_steps": 40,
    "tiny_reps": 31,
    "sync_steps": 4,
    "compile_tiny_reps": 9,
}
SMOKE_PLAN = {
    "steps": 2,
    "reps": 2,
    "tiny_steps": 2,
    "tiny_reps": 1,
    "sync_steps": 2,
    "compile_tiny_reps": 1,
}
COMPILED_CASES = ["kd_like_0.2.x", "general_4_matches", "trainer"]


def run(
    smoke: bool = False,
    reps: int | None = None,
    steps: int | None = None,
    threads: int | None = None,
    cases: list[str] | None = None,
) -> list[dict]:
    """Measures every case; returns one row per case (keys: see ``COLUMNS``, ``SYNC_COLUMNS``)."""
    setup(threads or 1)
    sizes = SMOKE if smoke else FULL
    plan = _plan(smoke, reps, steps)
    rows = []
    with tempfile.TemporaryDirectory() as output_dir, SaveTimer() as saves:
        env, tiny = make_env(sizes, output_dir), make_env(SMOKE, output_dir)
        for name in cases or CASES:
            rows.append(measure_case(name, env, tiny, plan, saves))
    return rows


def run_compiled(
    smoke: bool = False,
    reps: int | None = None,
    steps: int | None = None,
    threads: int | None = None,
    backend: str = "inductor",
    cases: list[str] | None = None,
) -> list[dict]:
    """Compiled against eager per case (keys: see ``COMPILE_COLUMNS``)."""
    setup(threads or 1)
    sizes = SMOKE if smoke else FULL
    plan = _plan(smoke, reps, steps)
    with tempfile.TemporaryDirectory() as output_dir, SaveTimer() as saves:
        env, tiny = make_env(sizes, output_dir), make_env(SMOKE, output_dir)
        return [
            measure_compiled(name, env, tiny, plan, saves, backend)
            for name in cases or COMPILED_CASES
        ]


def _plan(smoke: bool, reps: int | None, steps: int | None) -> dict:
    plan = dict(SMOKE_PLAN if smoke else FULL_PLAN)
    plan["reps"] = reps or plan["reps"]
    plan["steps"] = steps or plan["steps"]
    return plan


COLUMNS = [
    ("case", "case", "s"),
    ("library_ms", "library ms/step", ".1f"),
    ("hand_ms", "hand ms/step", ".1f"),
    ("ratio", "ratio", ".3f"),
    ("ratio_min", "min", ".3f"),
    ("ratio_max", "max", ".3f"),
    ("library_wall_ms", "library wall ms/step", ".1f"),
    ("hand_wall_ms", "hand wall ms/step", ".1f"),
    ("ratio_wall", "wall ratio", ".3f"),
]

COMPILE_COLUMNS = [
    ("case", "case", "s"),
    ("backend", "backend", "s"),
    ("compiled_ms", "compiled ms/step", ".1f"),
    ("eager_ms", "eager ms/step", ".1f"),
    ("compile_ratio", "ratio", ".3f"),
    ("compile_ratio_min", "min", ".3f"),
    ("compile_ratio_max", "max", ".3f"),
    ("compile_s", "compile s (first step)", ".1f"),
    ("tiny_compiled_ms", "tiny compiled ms/step", ".2f"),
    ("tiny_eager_ms", "tiny eager ms/step", ".2f"),
    ("tiny_compile_ratio", "tiny ratio", ".3f"),
    ("tiny_compile_ratio_min", "min", ".3f"),
    ("tiny_compile_ratio_max", "max", ".3f"),
    ("tiny_compile_s", "tiny compile s", ".1f"),
]

OVERHEAD_COLUMNS = [
    ("case", "case", "s"),
    ("tiny_library_ms", "tiny-model library ms/step", ".2f"),
    ("tiny_hand_ms", "tiny-model hand ms/step", ".2f"),
    ("tiny_ratio", "tiny ratio", ".3f"),
    ("tiny_ratio_min", "min", ".3f"),
    ("tiny_ratio_max", "max", ".3f"),
    ("tiny_overhead_ms", "loop overhead ms/step", "+.3f"),
    ("tiny_overhead_min_ms", "min-based", "+.3f"),
    ("hand_ms", "benchmark-model hand ms/step", ".1f"),
    ("implied_ratio", "implied ratio at benchmark size", ".4f"),
    ("extra_aten_ops_per_step", "extra aten ops/step", ".0f"),
    ("extra_python_calls_per_step", "extra Python calls/step", ".0f"),
]

SYNC_COLUMNS = [
    ("case", "case", "s"),
    ("syncs_per_micro_batch", "library syncs/micro-batch (log_every > run)", ".2f"),
    ("syncs_per_micro_batch_log_every_1", "library syncs/micro-batch (log_every=1)", ".2f"),
    ("user_code_reads_library", "adaptor/model reads/micro-batch", ".2f"),
    ("torch_internal_reads_library", "torch-internal reads (library run)", ".1f"),
    ("torch_internal_reads_hand", "torch-internal reads (hand loop)", ".1f"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds")
    parser.add_argument("--reps", type=int, default=None, help="interleaved repetitions")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per timed run")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), help="default: all")
    parser.add_argument(
        "--compile",
        nargs="?",
        const="inductor",
        metavar="BACKEND",
        help="instead: TrainingConfig(torch_compile={'backend': BACKEND}) against eager "
        "(default backend: inductor)",
    )
    args = parser.parse_args()
    sizes = SMOKE if args.smoke else FULL
    if args.compile:
        rows = run_compiled(
            args.smoke, args.reps, args.steps, args.threads, args.compile, args.cases
        )
        print(machine_info())
        print(
            f"teacher {sizes.teacher.layers}x{sizes.teacher.hidden}, student "
            f"{sizes.student.layers}x{sizes.student.hidden}, batch {sizes.batch}, length "
            f"{sizes.length}; tiny: teacher {SMOKE.teacher.layers}x{SMOKE.teacher.hidden}, "
            f"student {SMOKE.student.layers}x{SMOKE.student.hidden}, batch {SMOKE.batch}, "
            f"length {SMOKE.length}; compilation not timed\n"
        )
        print("Compiled against eager (CPU time; ratio = median over pairs compiled / eager):")
        print(format_table(rows, COMPILE_COLUMNS))
        return
    rows = run(args.smoke, args.reps, args.steps, args.threads, args.cases)
    print(machine_info())
    print(
        f"teacher {sizes.teacher.layers}x{sizes.teacher.hidden}, student "
        f"{sizes.student.layers}x{sizes.student.hidden}, batch {sizes.batch}, length "
        f"{sizes.length}; {rows[0]['steps']} steps per run, {rows[0]['reps']} interleaved reps; "
        "AdamW; checkpoint writes subtracted\n"
    )
    print("Time per step (CPU time; ratio = median over pairs of library / hand):")
    print(format_table(rows, COLUMNS))
    print(
        f"\nLoop overhead measured on the tiny models (teacher {SMOKE.teacher.layers}x"
        f"{SMOKE.teacher.hidden}, student {SMOKE.student.layers}x{SMOKE.student.hidden}, batch "
        f"{SMOKE.batch}, length {SMOKE.length}), median of paired differences; implied ratio = "
        "1 + overhead / benchmark-model hand ms/step:"
    )
    print(format_table(rows, OVERHEAD_COLUMNS))
    print("\nReads from the device per micro-batch (Tensor.item/tolist/cpu/__float__/...):")
    print(format_table(rows, SYNC_COLUMNS))


if __name__ == "__main__":
    main()
