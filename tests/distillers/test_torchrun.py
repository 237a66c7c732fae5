"""A real torchrun launch (2 gloo processes on CPU), with no `local_rank` in the script.

WORLD_SIZE > 1 in the environment switches DistributedDataParallel on (SPEC §10): the two
processes train like one process on the combined batch, and only rank 0 writes files. A
2-process run that crashed and was restarted with resume_from='auto' ends bitwise equal to the
uninterrupted 2-process run.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import checkpoint_steps
from tests.distillers.torchrun_job import distill, full_batches

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
JOB = Path(__file__).resolve().parent / "torchrun_job.py"


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun(workdir, *arguments):
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    environment.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(JOB),
        str(workdir),
        *map(str, arguments),
    ]
    return subprocess.run(
        command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
    )


def results(workdir):
    return [torch.load(Path(workdir) / "results" / f"rank{r}.pt") for r in range(2)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """One 2-process run of 6 steps, shared by the tests (each launch takes seconds)."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    launched = torchrun(workdir, 6)
    assert launched.returncode == 0, launched.stderr[-3000:]
    return workdir


def test_torchrun_without_local_rank_trains_like_one_process_on_the_combined_batch(
    tmp_path, uninterrupted
):
    ranks = results(uninterrupted)
    assert [r["distributed"] for r in ranks] == [True, True]
    assert [r["world_size"] for r in ranks] == [2, 2]
    torch.set_num_threads(1)
    student, projs = distill(tmp_path / "single", full_batches(), 6)
    for saved in ranks:
        for key, value in student.state_dict().items():
            torch.testing.assert_close(saved["student"][key], value, rtol=0, atol=1e-6)
        for key, value in projs.state_dict().items():
            torch.testing.assert_close(saved["projs"][key], value, rtol=0, atol=1e-6)
    files = ["gs2.pkl", "gs2.state.pt", "gs4.pkl", "gs4.state.pt", "gs6.pkl", "gs6.state.pt"]
    assert sorted(os.listdir(uninterrupted / "out")) == files
    # Only rank 0 wrote: every file of the directory, and nothing on rank 1.
    assert ranks[1]["written"] == ranks[1]["saves"] == []
    assert ranks[0]["written"] == files
    assert len(ranks[0]["saves"]) == len(files)


def test_two_process_run_crashed_and_resumed_equals_the_uninterrupted_run(tmp_path, uninterrupted):
    crashed = torchrun(tmp_path / "job", 6, "-", 4)
    assert crashed.returncode != 0
    assert "simulated crash at step 4" in crashed.stderr
    # gs4.pkl was written, its training state was not: the restart resumes from step 2.
    assert checkpoint_steps(tmp_path / "job" / "out") == [2, 4]
    assert not (tmp_path / "job" / "out" / "gs4.state.pt").exists()
    restarted = torchrun(tmp_path / "job", 6, "auto")
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert "Resumed from" in restarted.stderr
    assert "gs2.state.pt" in restarted.stderr
    for reference, resumed in zip(results(uninterrupted), results(tmp_path / "job")):
        for key, value in reference["student"].items():
            assert torch.equal(resumed["student"][key], value), key
        for key, value in reference["projs"].items():
            assert torch.equal(resumed["projs"][key], value), key
    for name in ("gs2.pkl", "gs4.pkl", "gs6.pkl"):
        original = torch.load(uninterrupted / "out" / name)
        again = torch.load(tmp_path / "job" / "out" / name)
        assert all(torch.equal(original[k], again[k]) for k in original), name
