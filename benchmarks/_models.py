"""Shared pieces of the loop benchmarks: a small BERT-like encoder, data, hand loops, timers.

The encoder is plain torch: embeddings (token + position, LayerNorm), ``layers`` post-LN
transformer blocks with explicit softmax attention (so the attention probabilities exist as tensors,
as in BERT), and a classifier on the first token. ``forward(input_ids, attention_mask, labels)``
returns ``(logits, hidden_states, attentions)``: ``hidden_states`` holds the embeddings and every
layer's output, (batch, length, hidden); ``attentions`` every layer's probabilities, (batch, heads,
length, length). ``FULL`` is the benchmark setting: teacher 4 layers, hidden 256; student 2 layers,
hidden 128; both 4 heads (so their attention maps have equal shapes and ``attention_mse`` needs no
projection); batch 16, length 64. ``SMOKE`` keeps the layer counts with tiny widths (teacher 4 x 32,
student 2 x 16, batch 4, length 16): ``--smoke`` runs and the loop-overhead measurements use it.

The hand-written loops below do the arithmetic a distiller does (teacher forward under
``no_grad``, student forward and backward, optimizer step, ``zero_grad``) with the library's own
loss functions and projection factories, so a comparison measures the loop and nothing else. They
read nothing back from the device.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import importlib.util
import itertools
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

# Run from a checkout without `pip install -e .`: measure the library next to these files.
if importlib.util.find_spec("textbrewer") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import textbrewer
from textbrewer import presets
from textbrewer.training import checkpoint as _checkpoint

SEED = 1234
VOCAB = 1000
CLASSES = 3
TEMPERATURE = 4.0
CPU = torch.device("cpu")

# -------------------------------------------------------------------------------------------------
# The model
# -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    hidden: int
    layers: int
    heads: int = 4
    vocab: int = VOCAB
    max_length: int = 512
    classes: int = CLASSES

    @property
    def intermediate(self) -> int:
        return 4 * self.hidden


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The models and the batch shape of one benchmark setting."""

    teacher: EncoderConfig
    student: EncoderConfig
    batch: int
    length: int

    def at_length(self, length: int) -> Sizes:
        return dataclasses.replace(self, length=length)


# The benchmark setting: teacher 4 x 256, student 2 x 128, batch 16, length 64.
FULL = Sizes(EncoderConfig(hidden=256, layers=4), EncoderConfig(hidden=128, layers=2), 16, 64)
# Same layer counts (the matches index layers up to 4), tiny widths: seconds for the whole suite.
SMOKE = Sizes(EncoderConfig(hidden=32, layers=4), EncoderConfig(hidden=16, layers=2), 4, 16)


class Block(nn.Module):
    """Post-LN transformer block with explicit attention probabilities."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.qkv = nn.Linear(config.hidden, 3 * config.hidden)
        self.out = nn.Linear(config.hidden, config.hidden)
        self.norm1 = nn.LayerNorm(config.hidden)
        self.up = nn.Linear(config.hidden, config.intermediate)
        self.down = nn.Linear(config.intermediate, config.hidden)
        self.norm2 = nn.LayerNorm(config.hidden)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor):
        batch, length, hidden = x.shape
        head_dim = hidden // self.heads
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim) + key_bias
        probs = scores.softmax(-1)
        context = (probs @ v).transpose(1, 2).reshape(batch, length, hidden)
        x = self.norm1(x + self.out(context))
        x = self.norm2(x + self.down(F.gelu(self.up(x))))
        return x, probs


class Encoder(nn.Module):
    """Small BERT-like classifier returning ``(logits, hidden_states, attentions)``."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.tokens = nn.Embedding(config.vocab, config.hidden)
        self.positions = nn.Embedding(config.max_length, config.hidden)
        self.norm = nn.LayerNorm(config.hidden)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.classifier = nn.Linear(config.hidden, config.classes)

    def forward(self, input_ids, attention_mask, labels=None):
        length = input_ids.size(1)
        positions = torch.arange(length, device=input_ids.device)
        x = self.norm(self.tokens(input_ids) + self.positions(positions))
        # BERT's additive mask: -10000 on padded keys, broadcast over heads and queries.
        key_bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        hidden_states, attentions = [x], []
        for block in self.blocks:
            x, probs = block(x, key_bias)
            hidden_states.append(x)
            attentions.append(probs)
        return self.classifier(x[:, 0]), tuple(hidden_states), tuple(attentions)


def make_models(sizes: Sizes, seed: int = SEED) -> tuple[Encoder, Encoder]:
    """The teacher (eval mode, frozen) and the student, seeded."""
    torch.manual_seed(seed)
    teacher, student = Encoder(sizes.teacher), Encoder(sizes.student)
    teacher.eval().requires_grad_(False)
    return teacher, student


def make_batches(count: int, sizes: Sizes, seed: int = SEED) -> list[tuple]:
    """``count`` CPU tuples ``(input_ids, attention_mask, labels)``, padded to ``sizes.length``."""
    batch_size, length = sizes.batch, sizes.length
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        ids = torch.randint(0, VOCAB, (batch_size, length), generator=generator)
        lengths = torch.randint(length // 2, length + 1, (batch_size,), generator=generator)
        mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
        labels = torch.randint(0, CLASSES, (batch_size,), generator=generator)
        batches.append((ids * mask, mask, labels))
    return batches


# -------------------------------------------------------------------------------------------------
# Adaptors and matches
# -------------------------------------------------------------------------------------------------


def logits_adaptor(batch, outputs):
    return {"logits": outputs[0]}


def full_adaptor(batch, outputs):
    return {
        "logits": outputs[0],
        "hidden": outputs[1],
        "attention": outputs[2],
        "inputs_mask": batch[1],
    }


def supervised_adaptor(batch, outputs):
    return {"losses": F.cross_entropy(outputs[0], batch[2])}


def _hidden(layer_S: int, layer_T: int, sizes: Sizes) -> dict:
    return {
        "layer_T": layer_T,
        "layer_S": layer_S,
        "feature": "hidden",
        "loss": "hidden_mse",
        "weight": 1,
        "proj": ["linear", sizes.student.hidden, sizes.teacher.hidden],
    }


def _attention(layer_S: int, layer_T: int) -> dict:
    return {
        "layer_T": layer_T,
        "layer_S": layer_S,
        "feature": "attention",
        "loss": "attention_mse",
        "weight": 1,
    }


def intermediate_matches(count: int, sizes: Sizes) -> list[dict]:
    """0, 4 or 8 matches: half ``hidden_mse`` with a student->teacher linear projection, half
    ``attention_mse`` (equal head counts, no projection).

    Student hidden states are indexed 0..2 (embeddings, layer 1, layer 2), attentions 0..1; the
    teacher's hidden states 0..4 and attentions 0..3.
    """
    pairs = {
        0: ([], []),
        4: ([(1, 2), (2, 4)], [(0, 1), (1, 3)]),
        8: ([(1, 1), (1, 2), (2, 3), (2, 4)], [(0, 0), (0, 1), (1, 2), (1, 3)]),
    }
    hidden, attention = pairs[count]
    return [_hidden(s, t, sizes) for s, t in hidden] + [_attention(s, t) for s, t in attention]


# -------------------------------------------------------------------------------------------------
# Hand-written loops (the baselines)
# -------------------------------------------------------------------------------------------------


def _to_device(batch: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    return [tensor.to(device, non_blocking=True) for tensor in batch]


def hand_kd_loop(teacher, student, optimizer, data, num_steps, device=CPU):
    """Logits-only KD: ``kd_ce(logits_S, logits_T, T)`` with the library's KD loss."""
    kd_loss = presets.KD_LOSS_MAP["ce"]
    teacher.eval()
    student.train()
    optimizer.zero_grad()
    for _, batch in zip(range(num_steps), itertools.cycle(data)):
        batch = _to_device(batch, device)
        with torch.no_grad():
            logits_T = teacher(*batch)[0]
        logits_S = student(*batch)[0]
        loss = kd_loss(logits_S, logits_T, TEMPERATURE)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


HARD_LABEL_WEIGHT = 0.5
MAX_GRAD_NORM = 1.0


def hard_label_adaptor(batch, outputs):
    """The 0.2.x-style case's student adaptor: logits, and the cross-entropy as ``losses``."""
    return {"logits": outputs[0], "losses": F.cross_entropy(outputs[0], batch[2])}


def make_scheduler(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """A linear LR decay, stepped after every optimizer step (as 0.2.x scripts schedule)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / 1000))


def hand_02x_loop(teacher, student, optimizer, scheduler, data, num_steps, device=CPU):
    """The loop as TextBrewer 0.2.x wrote it, for logits KD plus the hard-label loss.

    Per batch: move it to the device, teacher forward under ``no_grad`` and its adaptor, student
    forward and its adaptor, ``total_loss = 0``, ``+= kd_loss * kd_loss_weight``, ``+= sum of the
    losses' means * hard_label_weight``, ``/ gradient_accumulation_steps`` (1), backward, clip the
    student's gradients, optimizer step, scheduler step, ``zero_grad``. No tensorboard and no
    progress bar (0.2.x drew one; leaving it out makes this baseline faster, not slower).
    """
    kd_loss = presets.KD_LOSS_MAP["ce"]
    kd_loss_weight, gradient_accumulation_steps = 1, 1
    teacher.eval()
    student.train()
    optimizer.zero_grad()
    for _, batch in zip(range(num_steps), itertools.cycle(data)):
        batch = _to_device(batch, device)
        with torch.no_grad():
            results_T = logits_adaptor(batch, teacher(*batch))
        results_S = hard_label_adaptor(batch, student(*batch))
        total_loss = 0
        total_loss += (
            kd_loss(results_S["logits"], results_T["logits"], TEMPERATURE) * kd_loss_weight
        )
        total_loss += sum(loss.mean() for loss in [results_S["losses"]]) * HARD_LABEL_WEIGHT
        total_loss = total_loss / gradient_accumulation_steps
        total_loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()


def make_projections(matches: list[dict]) -> list[nn.Module | None]:
    """One ``PROJ_MAP`` projection per match that has ``proj``, built like the distiller does."""
    projections = []
    for match in matches:
        proj = match.get("proj")
        projections.append(presets.PROJ_MAP[proj[0]](proj[1], proj[2]) if proj else None)
    return projections


def hand_general_loop(
    teacher, student, projections, matches, optimizer, data, num_steps, device=CPU
):
    """KD plus intermediate matches, with the library's loss functions and projections."""
    kd_loss = presets.KD_LOSS_MAP["ce"]
    functions = [presets.MATCH_LOSS_MAP[match["loss"]] for match in matches]
    teacher.eval()
    student.train()
    optimizer.zero_grad()
    for _, batch in zip(range(num_steps), itertools.cycle(data)):
        batch = _to_device(batch, device)
        with torch.no_grad():
            logits_T, hidden_T, attention_T = teacher(*batch)
        logits_S, hidden_S, attention_S = student(*batch)
        features_S = {"hidden": hidden_S, "attention": attention_S}
        features_T = {"hidden": hidden_T, "attention": attention_T}
        loss = kd_loss(logits_S, logits_T, TEMPERATURE)
        for match, function, projection in zip(matches, functions, projections):
            feature_S = features_S[match["feature"]][match["layer_S"]]
            if projection is not None:
                feature_S = projection(feature_S)
            feature_T = features_T[match["feature"]][match["layer_T"]]
            loss = loss + match["weight"] * function(feature_S, feature_T, mask=batch[1])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def hand_supervised_loop(model, optimizer, data, num_steps, device=CPU):
    """Supervised training: cross-entropy of the logits against the labels."""
    model.train()
    optimizer.zero_grad()
    for _, batch in zip(range(num_steps), itertools.cycle(data)):
        batch = _to_device(batch, device)
        loss = F.cross_entropy(model(*batch)[0], batch[2])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def make_optimizer(
    student: nn.Module, projections: Sequence[nn.Module | None] = ()
) -> torch.optim.Optimizer:
    """AdamW over the student, plus one param group per projection.

    A distiller adds the projections' groups itself when ``train()`` starts, one per projection;
    a hand loop passes its projections here to get the same groups (so AdamW does the same work).
    """
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    for projection in projections:
        if projection is not None:
            optimizer.add_param_group({"params": list(projection.parameters())})
    return optimizer


def fresh_student(base: nn.Module) -> nn.Module:
    """A copy of ``base`` so each timed run starts from the same weights and a fresh optimizer."""
    return copy.deepcopy(base)


# -------------------------------------------------------------------------------------------------
# Library configs
# -------------------------------------------------------------------------------------------------


def training_config(output_dir: str, **overrides: Any) -> textbrewer.TrainingConfig:
    """CPU, no progress bar, step-mode checkpoints only at the run's end (see ``SaveTimer``)."""
    options = {
        "device": "cpu",
        "output_dir": output_dir,
        "progress_bar": False,
        "log_every_n_steps": 10,
        "ckpt_steps": 10**9,
    }
    options.update(overrides)
    return textbrewer.TrainingConfig(**options)


# -------------------------------------------------------------------------------------------------
# Measurement helpers
# -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Clock:
    """A reading of both clocks: wall time and this process's CPU time (seconds).

    With one torch thread all the work runs on the calling thread, so CPU time is the time the
    work took while it had a core: it leaves out the time spent descheduled when other processes
    share the machine, which wall time does not. With more torch threads, CPU time adds up every
    thread (spin-waiting included): read the wall-time columns then.
    """

    wall: float
    cpu: float

    @staticmethod
    def now() -> Clock:
        return Clock(time.perf_counter(), time.process_time())

    def __sub__(self, other: Clock) -> Clock:
        return Clock(self.wall - other.wall, self.cpu - other.cpu)

    def __add__(self, other: Clock) -> Clock:
        return Clock(self.wall + other.wall, self.cpu + other.cpu)


ZERO = Clock(0.0, 0.0)


class SaveTimer:
    """Times every checkpoint write of the library while active.

    Step mode always checkpoints at ``num_steps`` (and epoch mode at epoch ends); writing a file
    with ``fsync`` is not loop overhead, so the benchmarks subtract it. The library's writer
    ``textbrewer.training.checkpoint.atomic_save`` is wrapped (files are still written, into a
    temporary directory); each call's start and end are recorded on both clocks.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Clock, Clock]] = []
        self._original: Callable | None = None

    def __enter__(self) -> SaveTimer:
        original = self._original = _checkpoint.atomic_save

        def timed_save(obj: Any, path: Any) -> None:
            start = Clock.now()
            try:
                original(obj, path)
            finally:
                self.calls.append((start, Clock.now()))

        _checkpoint.atomic_save = timed_save
        return self

    def __exit__(self, *exc_info: object) -> None:
        _checkpoint.atomic_save = self._original

    @property
    def total(self) -> Clock:
        return sum((end - start for start, end in self.calls), ZERO)

    def reset(self) -> None:
        self.calls = []


def timed(function: Callable[[], Any], saves: SaveTimer | None = None) -> Clock:
    """How long ``function()`` takes on both clocks, minus the checkpoint writes made meanwhile."""
    if saves is not None:
        saves.reset()
    start = Clock.now()
    function()
    elapsed = Clock.now() - start
    return elapsed - saves.total if saves is not None else elapsed


_SYNC_METHODS = ("item", "tolist", "cpu", "__float__", "__bool__", "__int__")
_TEXTBREWER_DIR = str(Path(textbrewer.__file__).parent)
_TORCH_DIR = str(Path(torch.__file__).parent)


class SyncCounter:
    """Counts calls of ``Tensor.item/.tolist/.cpu/__float__/__bool__/__int__`` while active.

    Each call is attributed to the Python code that made it (the frame right above the patched
    method): ``textbrewer`` (the library), ``torch`` (e.g. AdamW reading its CPU step counters,
    which are not device syncs), or ``user`` (the benchmark's models, adaptors and hand loops).
    Read-backs that are not method calls (boolean-mask indexing, ``nonzero``) are not seen; the
    benchmark models use neither.
    """

    def __init__(self) -> None:
        self.counts = {"textbrewer": 0, "torch": 0, "user": 0}
        self._saved: dict[str, Any] = {}

    def __enter__(self) -> SyncCounter:
        for name in _SYNC_METHODS:
            self._saved[name] = torch.Tensor.__dict__.get(name, _MISSING)
            setattr(torch.Tensor, name, self._counting(getattr(torch.Tensor, name)))
        return self

    def __exit__(self, *exc_info: object) -> None:
        for name, original in self._saved.items():
            if original is _MISSING:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, original)
        self._saved = {}

    def _counting(self, method: Callable) -> Callable:
        counts = self.counts

        def counted(tensor, *args, **kwargs):
            filename = sys._getframe(1).f_code.co_filename
            if filename.startswith(_TEXTBREWER_DIR):
                counts["textbrewer"] += 1
            elif filename.startswith(_TORCH_DIR):
                counts["torch"] += 1
            else:
                counts["user"] += 1
            return method(tensor, *args, **kwargs)

        return counted


_MISSING = object()


class OpCounter(TorchDispatchMode):
    """Counts the aten operators dispatched while active: forwards, backward, optimizer step."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def count_python_calls(function: Callable[[], Any]) -> int:
    """How many Python function calls (``sys.setprofile`` "call" events) ``function()`` makes."""
    calls = 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        if event == "call":
            calls += 1

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        function()
    finally:
        sys.setprofile(previous)
    return calls


_FROZEN = []


def quiesce() -> None:
    """Collects garbage before a timed run; the first call also freezes the survivors.

    ``gc.freeze`` moves the objects alive at the first call (torch's modules, including the
    ``torch._dynamo`` stack the first optimizer imports, and the benchmark's models and data) out
    of the collector's view, so later collections, in or out of timed regions, scan only objects
    created since (a full collection of torch's heap takes ~0.2 s here). Objects made later, like
    each run's student and optimizer, are collected normally.
    """
    gc.collect()
    if not _FROZEN:
        gc.freeze()
        _FROZEN.append(True)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def setup(threads: int | None = None) -> int:
    """Seeds torch and fixes the thread count (default: the usable cores); returns the count."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = threads or cores or 1
    torch.set_num_threads(threads)
    torch.manual_seed(SEED)
    return threads


def machine_info() -> str:
    """CPU model, usable cores, torch threads, torch/python versions, and the load average."""
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"CPU: {model}; usable cores: {cores}; torch threads: {torch.get_num_threads()}; "
        f"torch {torch.__version__}; python {platform.python_version()}; "
        f"textbrewer {textbrewer.__version__}; load average (1/5/15 min): {load}"
    )


def format_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A Markdown table; ``columns`` are ``(key, header, format spec)``."""
    header = "| " + " | ".join(title for _, title, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    lines = [header, rule]
    for row in rows:
        cells = [format(row[key], spec) for key, _, spec in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
