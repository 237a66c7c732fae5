"""Precompute: the stored format, resuming after an interruption (exception, SIGKILL), refusals."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import textbrewer
from tests.conftest import make_batches, make_models, simple_adaptor
from textbrewer.teacher_cache import CachedTeacherDataset, TeacherCache, precompute_teacher_outputs

ROOT = Path(__file__).resolve().parents[2]
MATCH = {"layer_T": -1, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 1}
CONFIG = textbrewer.DistillationConfig(intermediate_matches=[MATCH])


def examples(count=20):
    batches = make_batches(-(-count // 4), batch_size=4)
    return [tuple(t[i] for t in batch) for batch in batches for i in range(4)][:count]


class FailingTeacher(torch.nn.Module):
    """Raises at its ``fail_at``-th call (1-based); counts the calls."""

    def __init__(self, teacher, fail_at=None):
        super().__init__()
        self.teacher, self.fail_at, self.calls = teacher, fail_at, 0

    def forward(self, *args):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("interrupted")
        return self.teacher(*args)


def teacher_outputs_by_batch(teacher, data, batch_size):
    """The teacher's (logits, hidden states) over ``data``, run in the batches precompute uses.

    The same batches, so the same bits: a GEMM over 10 rows and one over 2 may round a row
    differently (AVX-512 kernels do).
    """
    outputs = []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            batch = data[start : start + batch_size]
            outputs.append(teacher(*(torch.stack(t) for t in zip(*batch)))[:2])
    logits = torch.cat([logits for logits, _ in outputs])
    hidden = [torch.cat(layer) for layer in zip(*(hidden for _, hidden in outputs))]
    return logits, hidden


def precompute(teacher, path, data, **kwargs):
    kwargs = {"batch_size": 2, "chunk_size": 4, "progress_bar": False, **kwargs}
    return precompute_teacher_outputs(teacher, simple_adaptor, data, path, CONFIG, **kwargs)


def test_the_cache_holds_each_examples_outputs_in_plain_npy_files(tmp_path):
    teacher, _ = make_models()
    data = examples(10)
    cache = precompute(teacher, tmp_path / "c", data)
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["dataset_length"] == 10
    assert manifest["chunks"] == 3
    assert manifest["selection"] == [{"hidden": [-1], "attention": []}]  # as configured
    assert manifest["layers"] == {"t0.hidden": 4}  # stored as layer 3 of 4
    assert sorted(manifest["arrays"]) == [
        "t0.hidden.3",
        "t0.inputs_mask",
        "t0.logits.0",
    ]
    assert manifest["arrays"]["t0.hidden.3"]["axes"] == [0]
    # Per-example shapes; None marks the sequence axis, fitted to each batch.
    assert manifest["arrays"]["t0.hidden.3"]["shape"] == [None, 8]
    assert manifest["arrays"]["t0.logits.0"]["shape"] == [3]
    assert manifest["arrays"]["t0.logits.0"]["dtype"] == "float64"
    # Row i of the arrays is example i's output, loadable without pickle.
    mask = torch.stack([m for _, m, _ in data])
    logits, hidden = teacher_outputs_by_batch(teacher, data, 2)
    stored_hidden = np.concatenate(
        [
            np.load(tmp_path / "c" / "chunks" / f"{c:05d}" / "t0.hidden.3.npy", allow_pickle=False)
            for c in range(3)
        ]
    )
    assert np.array_equal(stored_hidden, hidden[3].numpy())
    outputs = cache.teacher_outputs([7, 2, 2])
    assert torch.equal(outputs["logits"][0], logits[[7, 2, 2]])
    assert torch.equal(outputs["hidden"][-1], hidden[3][[7, 2, 2]])
    assert len(outputs["hidden"]) == 4
    assert torch.equal(outputs["inputs_mask"], mask[[7, 2, 2]])


def test_an_interrupted_precompute_resumes_with_the_missing_chunks_only(tmp_path):
    teacher, _ = make_models()
    data = examples(12)  # 3 chunks of 4 examples, 2 batches each
    failing = FailingTeacher(teacher, fail_at=4)  # dies in chunk 1's second batch
    with pytest.raises(RuntimeError, match="interrupted"):
        precompute(failing, tmp_path / "c", data)
    assert sorted(p.name for p in (tmp_path / "c" / "chunks").iterdir()) == ["00000"]
    with pytest.raises(FileNotFoundError, match="interrupted; call precompute_teacher_outputs"):
        TeacherCache(tmp_path / "c")
    resumed = FailingTeacher(teacher)
    precompute(resumed, tmp_path / "c", data)
    assert resumed.calls == 4  # chunks 1 and 2 only
    again = FailingTeacher(teacher)
    precompute(again, tmp_path / "c", data)
    assert again.calls == 0  # complete: nothing to do
    precompute(teacher, tmp_path / "whole", data)
    for name in ("t0.logits.0", "t0.hidden.3"):
        for chunk in range(3):
            part = f"chunks/{chunk:05d}/{name}.npy"
            assert np.array_equal(
                np.load(tmp_path / "c" / part), np.load(tmp_path / "whole" / part)
            )


SCRIPT = textwrap.dedent(
    """
    import sys, time, torch, textbrewer
    from tests.conftest import make_models, make_batches, simple_adaptor
    from textbrewer.teacher_cache import precompute_teacher_outputs

    class Slow(torch.nn.Module):
        def __init__(self, teacher):
            super().__init__()
            self.teacher = teacher
        def forward(self, *args):
            time.sleep(float(sys.argv[2]))
            return self.teacher(*args)

    batches = make_batches(3, batch_size=4)
    data = [tuple(t[i] for t in b) for b in batches for i in range(4)]
    config = textbrewer.DistillationConfig(intermediate_matches=[{
        "layer_T": -1, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 1}])
    precompute_teacher_outputs(Slow(make_models()[0]), simple_adaptor, data, sys.argv[1], config,
                               batch_size=2, chunk_size=4, progress_bar=False)
    """
)


@pytest.mark.slow
def test_a_precompute_killed_with_sigkill_resumes_to_the_same_cache(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    target = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, str(script), str(target), "0.4"], env=env)
    deadline = time.monotonic() + 120
    while not (target / "chunks" / "00000").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (target / "chunks" / "00000").exists()
    assert not (target / "manifest.json").exists()
    subprocess.run([sys.executable, str(script), str(target), "0"], env=env, check=True)
    precompute(make_models()[0], tmp_path / "whole", examples(12))
    assert not [p for p in (target / "chunks").iterdir() if p.name.startswith(".")]
    resumed, whole = TeacherCache(target), TeacherCache(tmp_path / "whole")
    a, b = resumed.teacher_outputs(range(12)), whole.teacher_outputs(range(12))
    assert torch.equal(a["logits"][0], b["logits"][0])
    assert torch.equal(a["hidden"][3], b["hidden"][3])


def test_another_dataset_length_or_match_configuration_is_refused(tmp_path):
    teacher, _ = make_models()
    data = examples(8)
    cache = precompute(teacher, tmp_path / "c", data, dataset_id="v1")
    with pytest.raises(ValueError, match="dataset of 8 examples, but this dataset has 7"):
        CachedTeacherDataset(data[:7], cache, CONFIG)
    other = textbrewer.DistillationConfig(intermediate_matches=[dict(MATCH, layer_T=2)])
    with pytest.raises(
        ValueError,
        match=r"another match configuration: it stores \[teacher 0: hidden layers \[-1\].*"
        r"read \[teacher 0: hidden layers \[2\]",
    ):
        CachedTeacherDataset(data, cache, other)
    with pytest.raises(ValueError, match="dataset_id='v1', but this dataset has dataset_id='v2'"):
        CachedTeacherDataset(data, cache, CONFIG, dataset_id="v2")
    CachedTeacherDataset(data, cache, CONFIG, dataset_id="v1")  # the matching one is accepted


def test_a_rerun_with_other_arguments_is_refused_unless_overwrite(tmp_path):
    teacher, _ = make_models()
    data = examples(8)
    precompute(teacher, tmp_path / "c", data)
    with pytest.raises(ValueError, match=r"topk=None there, 2 now"):
        precompute(teacher, tmp_path / "c", data, topk=2)
    with pytest.raises(ValueError, match=r"dataset_length=8 there, 4 now"):
        precompute(teacher, tmp_path / "c", data[:4])
    cache = precompute(teacher, tmp_path / "c", data, topk=2, overwrite=True)
    assert cache.topk == 2
    outputs = cache.teacher_outputs([0, 1])
    logits = teacher(*(torch.stack(t) for t in zip(*data[:2])))[0]
    values, classes = logits.topk(2, dim=-1)
    assert torch.equal(outputs["logits"][0], values.detach())
    assert torch.equal(outputs["logits_topk_indices"][0], classes)


def test_storage_dtype_and_bfloat16_round_trip(tmp_path):
    teacher, _ = make_models()
    data = examples(4)
    half = precompute(teacher, tmp_path / "half", data, dtype=torch.float16)
    brain = precompute(teacher, tmp_path / "bf16", data, dtype=torch.bfloat16)
    logits, _ = teacher_outputs_by_batch(teacher, data, 2)
    assert torch.equal(half.teacher_outputs(range(4))["logits"][0], logits.half())
    assert torch.equal(brain.teacher_outputs(range(4))["logits"][0], logits.bfloat16())
    assert torch.equal(
        half.teacher_outputs(range(4))["inputs_mask"], torch.stack([m for _, m, _ in data])
    )


def test_bad_arguments_are_refused(tmp_path):
    teacher, _ = make_models()
    with pytest.raises(TypeError, match="map-style dataset"):
        precompute(teacher, tmp_path / "a", iter(examples(4)))
    with pytest.raises(ValueError, match="`chunk_size`=0 must be a positive integer"):
        precompute(teacher, tmp_path / "a", examples(4), chunk_size=0)
    bad = textbrewer.DistillationConfig(intermediate_matches=[dict(MATCH, layer_T=9)])
    with pytest.raises(IndexError, match="'hidden' layer 9 of teacher 0, out of range"):
        precompute_teacher_outputs(
            teacher, simple_adaptor, examples(4), tmp_path / "b", bad, progress_bar=False
        )
    with pytest.raises(IndexError, match="index 8 is out of range of the teacher cache"):
        precompute(teacher, tmp_path / "c", examples(8)).teacher_outputs([8])


def test_a_dataloader_gives_its_dataset_collate_and_batch_size(tmp_path):
    teacher, _ = make_models()
    data = examples(8)
    calls = []

    def collate(items):
        calls.append(len(items))
        return torch.utils.data.default_collate(items)

    loader = torch.utils.data.DataLoader(data, batch_size=3, shuffle=True, collate_fn=collate)
    cache = precompute_teacher_outputs(
        teacher, simple_adaptor, loader, tmp_path / "c", CONFIG, progress_bar=False
    )
    assert calls == [3, 3, 2]
    assert cache.dataset_length == 8


def test_a_launcher_without_a_process_group_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    teacher, _ = make_models()
    with pytest.raises(RuntimeError, match="WORLD_SIZE=2 .* call torch.distributed.init_process"):
        precompute(teacher, tmp_path / "c", examples(4))
