"""Real SIGKILLs: a job killed mid-run or mid-checkpoint-write resumes to the same weights.

The job (tests/distillers/kill_job.py) runs in its own process and kills itself with SIGKILL at
a precise point, so no ``finally`` or ``atexit`` runs, as when a scheduler preempts a job. The
same command then restarts it (``resume_from='auto'``); it must end ``torch.equal`` to a run
never killed, with every ``gs*.pkl`` loadable and no temporary file left behind.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import checkpoint_steps
from tests.distillers.kill_job import distill
from textbrewer.training.checkpoint import load_state_file

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc (Linux)"),
]

ROOT = Path(__file__).resolve().parents[2]
JOB = Path(__file__).resolve().parent / "kill_job.py"


def job(workdir, *arguments):
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(JOB), str(workdir), *map(str, arguments)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def never_killed(tmp_path_factory):
    """The final weights and checkpoints of the job run without interruption (in-process)."""
    workdir = tmp_path_factory.mktemp("never_killed")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        student = distill(workdir)
    finally:
        torch.set_num_threads(threads)
    return student.state_dict(), workdir / "out"


def assert_resumed_like_never_killed(workdir, never_killed):
    reference, reference_dir = never_killed
    final = torch.load(workdir / "final.pt")
    for key, value in reference.items():
        assert torch.equal(final[key], value), key
    out = workdir / "out"
    assert checkpoint_steps(out) == [2, 4, 6, 8]
    for name in sorted(os.listdir(out)):
        assert not name.endswith(".tmp"), name
        if name.endswith(".state.pt"):
            assert load_state_file(out / name)["parts"]["progress"]["global_step"] > 0
            continue
        loaded = torch.load(out / name, weights_only=True)  # every checkpoint loads, safely
        if name.endswith(".pkl"):
            original = torch.load(reference_dir / name)
            assert all(torch.equal(loaded[k], original[k]) for k in original), name


def test_a_job_killed_mid_run_resumes_to_the_same_weights(tmp_path, never_killed):
    # 2 micro-batches per step: batch 11 is in the middle of step 6, after checkpoint 4.
    killed = job(tmp_path, "kill-at-batch", 11)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert checkpoint_steps(tmp_path / "out") == [2, 4]
    assert not (tmp_path / "final.pt").exists()
    restarted = job(tmp_path)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert_resumed_like_never_killed(tmp_path, never_killed)


@pytest.mark.parametrize("killed_file", ["gs4.state.pt", "gs6.pkl"])
def test_a_job_killed_mid_checkpoint_write_resumes_to_the_same_weights(
    tmp_path, never_killed, killed_file
):
    killed = job(tmp_path, "kill-in-write", killed_file)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    out = tmp_path / "out"
    half_written = [name for name in os.listdir(out) if name.endswith(".tmp")]
    assert len(half_written) == 1
    assert half_written[0].startswith(f".{killed_file}.")
    assert killed_file not in os.listdir(out)  # never a truncated file under the real name
    stray = out / "notes.tmp"  # not ours: never deleted
    stray.write_text("keep me")
    restarted = job(tmp_path)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert stray.read_text() == "keep me"
    stray.unlink()
    assert_resumed_like_never_killed(tmp_path, never_killed)
