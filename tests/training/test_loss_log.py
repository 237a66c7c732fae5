"""LossLog.record_step: per-step scalars read back with the losses, in the same transfer."""

import torch

from textbrewer.training.loss_log import LossLog


class RecordingWriter:
    def __init__(self):
        self.scalars = []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, step, value))


def test_step_scalars_are_written_at_the_optimizer_step_after_the_losses(monkeypatch):
    writer = RecordingWriter()
    log = LossLog(writer)
    for micro in range(4):
        log.record(micro, micro // 2 + 1, torch.tensor(1.0 + micro), {"kd": torch.tensor(0.5)})
        if micro % 2 == 1:
            norm = torch.tensor(3.0 * (micro // 2 + 1), dtype=torch.float64)
            log.record_step(micro // 2 + 1, {"learning_rate": 0.1 / (micro + 1), "grad_norm": norm})
    reads = []
    original = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: reads.append(t) or original(t))
    log.flush()
    assert len(reads) == 1  # one read-back for losses and step scalars together
    steps = [entry for entry in writer.scalars if entry[0].startswith("train/")]
    assert steps == [
        ("train/learning_rate", 1, 0.05),
        ("train/grad_norm", 1, 3.0),
        ("train/learning_rate", 2, 0.025),
        ("train/grad_norm", 2, 6.0),
    ]
    assert log.last_losses == {"total_loss": 2.5, "kd": 0.5}


def test_host_only_step_scalars_need_no_tensor():
    writer = RecordingWriter()
    log = LossLog(writer)
    log.record(0, 1, torch.tensor(1.0), {})
    log.record_step(1, {"kd_loss_weight": 0.25})
    log.flush()
    assert writer.scalars == [("scalar/total_loss", 0, 1.0), ("train/kd_loss_weight", 1, 0.25)]


def test_values_are_stacked_once_per_flush_and_mixed_dtypes_read_as_each_totals_dtype(monkeypatch):
    writer = RecordingWriter()
    log = LossLog(writer)
    stacks = []
    original = torch.stack
    monkeypatch.setattr(
        torch, "stack", lambda tensors: stacks.append(len(tensors)) or original(tensors)
    )
    third = 1.0 / 3.0
    log.record(0, 1, torch.tensor(0.5), {"kd": torch.tensor(0.25)})
    log.record(1, 1, torch.tensor(third), {"kd": torch.tensor(third, dtype=torch.float64)})
    log.record(2, 2, torch.tensor(third, dtype=torch.float64), {"kd": 2})  # a Python number
    assert stacks == []  # nothing stacked per micro-batch
    log.flush()
    assert stacks == [6]  # one stack of every pending value
    float32_third = torch.tensor(third).item()
    assert writer.scalars == [
        ("scalar/total_loss", 0, 0.5),
        ("scalar/kd", 0, 0.25),
        ("scalar/total_loss", 1, float32_third),
        ("scalar/kd", 1, float32_third),  # read in its record's total's dtype (float32)
        ("scalar/total_loss", 2, third),
        ("scalar/kd", 2, 2.0),
    ]
