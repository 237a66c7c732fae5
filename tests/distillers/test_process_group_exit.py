"""Who destroys the process group at exit: the library its own gloo group, the user theirs.

A gloo group left to interpreter finalisation can abort a finished run with SIGABRT; each case
runs in a fresh interpreter with an ``atexit`` hook, registered before the library's (so run
after them), that reports whether a group is still initialised.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.distillers.test_torchrun import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import atexit, sys
    import torch
    import torch.distributed as dist

    if sys.argv[1] == "user":
        atexit.register(dist.destroy_process_group)  # the user's own, run after the report
    atexit.register(lambda: print("initialised at exit:", dist.is_initialized(), flush=True))

    import textbrewer
    from tests.conftest import make_batches, make_models, simple_adaptor

    if sys.argv[1] == "user":
        dist.init_process_group("gloo")
    teacher, student = make_models()
    distiller = textbrewer.BasicDistiller(
        textbrewer.TrainingConfig(
            device="cpu", output_dir=sys.argv[2], local_rank=0, progress_bar=False
        ),
        textbrewer.DistillationConfig(),
        teacher,
        student,
        simple_adaptor,
        simple_adaptor,
    )
    distiller.train(torch.optim.SGD(student.parameters(), lr=0.1), make_batches(2), 1)
    print("initialised after train:", dist.is_initialized(), flush=True)
    """
)


def run(tmp_path, owner):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    environment = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        OMP_NUM_THREADS="1",
        RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
    )
    return subprocess.run(
        [sys.executable, str(script), owner, str(tmp_path / "out")],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("owner", "initialised_at_exit"),
    [("library", False), ("user", True)],  # the library destroys only the group it initialised
)
def test_the_gloo_group_is_destroyed_at_exit_by_whoever_initialised_it(
    tmp_path, owner, initialised_at_exit
):
    finished = run(tmp_path, owner)
    assert finished.returncode == 0, finished.stderr[-3000:]
    # Still there for the script after train() either way.
    assert finished.stdout.splitlines() == [
        "initialised after train: True",
        f"initialised at exit: {initialised_at_exit}",
    ]
