"""A 0.2.x subclass's own projections under DistributedDataParallel (gloo, 2 processes).

The EMD-like subclass of tests/compat/scripts/emd_subclass.py calls `self.projs[i]` in its own
`train_on_batch`; under DDP those calls go through the wrappers, so two processes on half
batches end with the same student and projections as one process on the whole batches.
"""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from compat_reference import load_script

import textbrewer
from tests.conftest import leave_process_group

pytestmark = pytest.mark.slow


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _full_batches():
    generator = torch.Generator().manual_seed(5)
    return [
        {"input_ids": torch.randint(0, 12, (4, 5), generator=generator),
         "attention_mask": torch.ones(4, 5, dtype=torch.float64),
         "labels": torch.randint(0, 3, (4,), generator=generator)}
        for _ in range(3)
    ]  # fmt: skip


def _distil(workdir, batches, local_rank):
    torch.set_default_dtype(torch.float64)
    script = load_script("emd_subclass")
    model_T, model_S = script["build_models"](0)
    distiller = script["EMDLikeDistiller"](
        textbrewer.TrainingConfig(
            device="cpu", output_dir=str(workdir), local_rank=local_rank, progress_bar=False
        ),
        textbrewer.DistillationConfig(temperature=4, hard_label_weight=0.5),
        model_T,
        model_S,
        script["adaptor"],
        script["adaptor"],
    )
    seen = []

    def callback(model, step):
        seen.append(type(distiller.projs[0]).__name__)  # what the subclass calls while training

    distiller.train(torch.optim.AdamW(model_S.parameters(), lr=1e-2), batches, 2, callback=callback)
    return model_S, distiller, seen


def _worker(rank, port, workdir, results):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2"
    )
    torch.set_num_threads(1)
    halves = [{k: v[rank * 2 : (rank + 1) * 2] for k, v in b.items()} for b in _full_batches()]
    student, distiller, seen = _distil(os.path.join(workdir, "ddp"), halves, rank)
    torch.save(
        {"student": student.state_dict(), "projs": [p.state_dict() for p in distiller.projs],
         "seen": seen},
        os.path.join(results, f"rank{rank}.pt"),
    )  # fmt: skip
    leave_process_group()


def test_a_subclass_projections_are_wrapped_and_synchronised_under_ddp(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), str(results)), nprocs=2, join=True)
    try:
        student, distiller, _ = _distil(tmp_path / "single", _full_batches(), -1)
    finally:
        torch.set_default_dtype(torch.float32)
    for rank in range(2):
        saved = torch.load(results / f"rank{rank}.pt")
        assert saved["seen"] == ["DistributedDataParallel", "DistributedDataParallel"]
        for key, value in student.state_dict().items():
            torch.testing.assert_close(saved["student"][key], value, rtol=1e-9, atol=1e-10)
        for proj_state, proj in zip(saved["projs"], distiller.projs):
            for key, value in proj.state_dict().items():
                torch.testing.assert_close(proj_state[key], value, rtol=1e-9, atol=1e-10)
