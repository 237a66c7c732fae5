"""Extend textbrewer by name: a custom match loss and a custom loss-weight scheduler.

What it shows:

* an L1 loss between hidden states, registered with ``MATCH_LOSS_MAP['hidden_l1'] = ...`` (the
  registries are plain dicts), and a cosine-decay weight scheduler registered with
  ``textbrewer.register_new('weight_scheduler', 'cosine_decay', ...)`` (the checked way);
* a ``DistillationConfig`` naming both, written to JSON and read back unchanged (configs hold
  names, not functions, so they round-trip; register the functions before reading the config);
* ``GeneralDistiller`` training with them and logging to tensorboard: the custom loss appears as
  its own part, ``scalar/unweighted_hidden_hidden_l1_1_2``, and the scheduled weight can be read
  back from the logged scalars: ``total = kd_weight * kd + l1``, so ``kd_weight = (total - l1) /
  kd`` at each step, which is compared with ``cosine_decay(step / total_steps)``.

The model is a small MLP "encoder" over generated data (the point here is the plumbing).

Measured on a shared 2-core CPU machine: the full run (200 steps) takes about 2 s, ``--smoke``
well under a second (plus ~3 s to import torch). Prints the logged tags, and the KD weight
recovered from the logs at the first, middle and last step (1.000, 0.500, 0.000), equal to the
schedule to float32 round-off (largest difference 1.2e-07).
"""

from __future__ import annotations

import argparse
import logging
import math
import struct
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn
from tqdm.contrib.logging import logging_redirect_tqdm

import textbrewer
from textbrewer import DistillationConfig, TrainingConfig
from textbrewer.presets import MATCH_LOSS_MAP


# ----------------------------------------------------------------------------- the extensions
def hidden_l1_loss(hidden_S, hidden_T, mask=None):
    """Mean absolute difference of (batch, length, dim) states over the unmasked positions.

    A match loss is called ``loss(feature_S, feature_T, mask=inputs_mask)`` and returns a scalar.
    """
    difference = (hidden_S - hidden_T).abs()
    if mask is None:
        return difference.mean()
    mask = mask.unsqueeze(-1).to(difference.dtype)
    return (difference * mask).sum() / (mask.sum() * difference.shape[-1])


def cosine_decay(progress: float) -> float:
    """A weight scheduler maps training progress in [0, 1] to a weight: here 1 -> 0, smoothly."""
    return 0.5 * (1 + math.cos(math.pi * progress))


MATCH_LOSS_MAP["hidden_l1"] = hidden_l1_loss
textbrewer.register_new("weight_scheduler", "cosine_decay", cosine_decay)


# ----------------------------------------------------------------------------- model and data
class Encoder(nn.Module):
    """Token embeddings -> ``layers`` residual MLP blocks -> mean pool -> 3 classes."""

    def __init__(self, dim: int, layers: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, dim)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, dim), nn.Tanh()) for _ in range(layers)
        )
        self.head = nn.Linear(dim, 3)

    def forward(self, input_ids, attention_mask):
        hidden = self.embed(input_ids)
        states = [hidden]
        for block in self.blocks:
            hidden = hidden + block(hidden)
            states.append(hidden)
        mask = attention_mask.unsqueeze(-1).float()
        return self.head((hidden * mask).sum(1) / mask.sum(1)), states


def adaptor(batch, outputs):
    logits, states = outputs
    return {"logits": logits, "hidden": states, "inputs_mask": batch[1]}


def make_batches(count: int, batch_size: int = 16, length: int = 10) -> list:
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        input_ids = torch.randint(1, 50, (batch_size, length), generator=generator)
        lengths = torch.randint(4, length + 1, (batch_size, 1), generator=generator)
        attention_mask = (torch.arange(length) < lengths).long()
        batches.append((input_ids * attention_mask, attention_mask))
    return batches


def read_scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` from tensorboardX event files (TFRecord framing, no TensorFlow).

    Each record is: length (uint64), its CRC (uint32), an ``Event`` protobuf, the data's CRC.
    """
    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, dict[int, float]] = defaultdict(dict)
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars[value.tag][event.step] = value.simple_value
    return dict(scalars)


# ----------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--output-dir", default=None, help="config, logs, checkpoints")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny models: 1)")
    parser.add_argument("--smoke", action="store_true", help="tiny run, a few seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batches, args.epochs = 8, 2
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
    output_dir = Path(args.output_dir or tempfile.mkdtemp(prefix="textbrewer_custom_"))
    output_dir.mkdir(parents=True, exist_ok=True)

    # The config names the extensions; JSON keeps the names, so it round-trips.
    config = DistillationConfig(
        temperature=2,
        kd_loss_weight=1.0,
        kd_loss_weight_scheduler="cosine_decay",
        intermediate_matches=[
            {"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_l1",
             "weight": 1.0, "proj": ["linear", 16, 32]},
        ],
    )  # fmt: skip
    config.to_json_file(output_dir / "distill_config.json")
    loaded = DistillationConfig.from_json_file(output_dir / "distill_config.json")
    if loaded.to_dict() != config.to_dict():
        raise RuntimeError("the JSON round trip changed the config")
    print(f"config read back from {output_dir / 'distill_config.json'}:\n{loaded}\n")

    torch.manual_seed(0)
    teacher, student = Encoder(dim=32, layers=2), Encoder(dim=16, layers=1)
    log_dir = output_dir / "logs"
    train_config = TrainingConfig(
        device="cpu", output_dir=str(output_dir / "checkpoints"), log_dir=str(log_dir)
    )
    distiller = textbrewer.GeneralDistiller(
        train_config, loaded, teacher, student, adaptor_T=adaptor, adaptor_S=adaptor
    )
    batches = make_batches(args.batches)
    with distiller:
        distiller.train(torch.optim.Adam(student.parameters(), lr=1e-2), None, batches, args.epochs)

    # Recover the KD weight at each step from the logged scalars.
    scalars = read_scalars(log_dir)
    total, kd = scalars["scalar/total_loss"], scalars["scalar/unweighted_kd_loss"]
    l1 = scalars["scalar/unweighted_hidden_hidden_l1_1_2"]
    total_steps = args.batches * args.epochs
    recovered = {step: (total[step] - l1[step]) / kd[step] for step in sorted(total)}
    scheduled = {step: cosine_decay(step / total_steps) for step in recovered}
    error = max(abs(recovered[step] - scheduled[step]) for step in recovered)
    print("logged tags:", ", ".join(sorted(scalars)))
    for step in (0, total_steps // 2, total_steps - 1):
        print(
            f"step {step:3d}: kd weight from the logs {recovered[step]:.3f}, "
            f"cosine_decay says {scheduled[step]:.3f}"
        )
    print(f"largest difference {error:.1e}; done in {time.perf_counter() - start:.1f} s")
    return {
        "tags": sorted(scalars),
        "recovered_kd_weights": [recovered[step] for step in sorted(recovered)],
        "scheduled_kd_weights": [scheduled[step] for step in sorted(scheduled)],
        "max_weight_error": error,
        "config": loaded.to_dict(),
    }


if __name__ == "__main__":
    # The library reports epochs and checkpoints at INFO level through `logging` (the "textbrewer"
    # logger), which Python hides until it is configured; log lines go above the progress bar.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with logging_redirect_tqdm():
        main()
