"""The loss benchmark runs in smoke mode, and its chunked losses agree with the plain formulas.

No timing is asserted: timings depend on the machine.
"""

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_losses.py"


@pytest.fixture(scope="module")
def rows():
    spec = importlib.util.spec_from_file_location("bench_losses", BENCH_PATH)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only add wake-up latency
    try:
        return bench.run(smoke=True)
    finally:
        torch.set_num_threads(threads)


def test_smoke_run_covers_every_loss_with_and_without_mask(rows):
    seen = {(row["section"], row["loss"], row["mask"]) for row in rows}
    for section in ("attention", "attention_small"):
        for loss in ("attention_mse", "attention_mse_sum", "attention_ce", "attention_ce_mean"):
            assert {(section, loss, "no"), (section, loss, "yes")} <= seen
    for section in ("hidden", "hidden_small"):
        for loss in ("hidden_mse", "cos", "fsp", "mmd"):
            assert {(section, loss, "no"), (section, loss, "yes")} <= seen
        assert (section, "pkd", "no") in seen
    for loss in ("ce", "kl", "reverse_kl", "jsd", "bce"):
        assert ("large_vocab", loss, "no") in seen
    for loss in ("ce", "kl", "jsd", "bce"):
        assert ("large_vocab_bf16", loss, "yes") in seen
    for loss in ("ce", "mse"):
        assert {("logits", loss, "no"), ("logits", loss, "yes")} <= seen
    for loss in ("ce", "kl", "reverse_kl", "mse", "jsd", "bce"):
        assert {("logits_small", loss, "no"), ("logits_small", loss, "yes")} <= seen
        assert ("classes_small", loss, "no") in seen


def test_every_row_is_measured(rows):
    for row in rows:
        for key in ("ours_ms", "plain_ms", "v02_ms", "ours_mib", "plain_mib", "v02_mib", "value"):
            assert math.isfinite(row[key]), (row["loss"], key)
        assert row["ours_ms"] > 0
        assert row["plain_mib"] > 0


def full_precision(rows):
    return [row for row in rows if not row["section"].endswith("bf16")]


def test_losses_equal_the_plain_and_0_2_x_formulas(rows):
    for row in full_precision(rows):
        assert row["value_diff"] <= 1e-5 * max(1.0, abs(row["value"])), row
        assert row["grad_rel_diff"] <= 1e-5, row
        assert row["v02_value_diff"] <= 1e-5 * max(1.0, abs(row["value"])), row
        assert row["v02_grad_rel_diff"] <= 1e-5, row


def test_bf16_losses_equal_the_float32_formula_to_bf16_rounding(rows):
    low = [row for row in rows if row["section"] == "large_vocab_bf16"]
    assert len(low) == 4
    for row in low:
        assert row["value_diff"] <= 1e-5 * max(1.0, abs(row["value"])), row
        assert row["grad_rel_diff"] <= 2**-7, row  # the gradient comes back in bfloat16


def test_chunked_kd_losses_equal_the_plain_formula(rows):
    large = [row for row in rows if row["section"] == "large_vocab"]
    assert len(large) == 5
    for row in large:
        assert row["value_diff"] <= 1e-6 * abs(row["value"]), row
        assert row["grad_rel_diff"] <= 2e-6, row
