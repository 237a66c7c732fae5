"""Every script in docs/snippets runs as the docs show it (the pages literalinclude them)."""

import copy
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from textbrewer import presets

SNIPPETS = Path(__file__).parent.parent / "docs" / "snippets"


@pytest.fixture
def run_snippet(tmp_path, monkeypatch):
    # The snippets register losses and features globally, as a user script would: undo that.
    saved = {name: copy.copy(registry) for name, registry in presets.MAPS.items()}
    features, keys = list(presets.FEATURES), list(presets.ADAPTOR_KEYS)
    monkeypatch.chdir(tmp_path)
    yield lambda name: runpy.run_path(str(SNIPPETS / name), run_name="__main__")
    for name, registry in presets.MAPS.items():
        registry.clear()
        registry.update(saved[name])
    presets.FEATURES[:] = features
    presets.ADAPTOR_KEYS[:] = keys


OTHERS = sorted(
    p.name for p in SNIPPETS.glob("*.py") if p.name not in ("customisation.py", "distributed.py")
)


@pytest.mark.slow
@pytest.mark.parametrize("name", OTHERS)
def test_docs_snippet_runs_to_the_end(name, run_snippet):
    assert "__name__" in run_snippet(name)


def test_the_customisation_subclass_trains_saves_and_resumes_its_own_module(run_snippet, tmp_path):
    namespace = run_snippet("customisation.py")
    assert namespace["same"] is True  # resumed from gs8: the same bridge as never stopped
    out = tmp_path / "saved_models" / "pooled"
    assert sorted(p.name for p in out.iterdir()) == [
        "gs16.pkl",
        "gs16.state.pt",
        "gs8.pkl",
        "gs8.state.pt",
    ]
    bridges = [
        torch.load(out / f"gs{step}.state.pt", weights_only=False)["parts"]["extra_modules"][
            "modules"
        ][0]["weight"]
        for step in (8, 16)
    ]
    assert not torch.equal(bridges[0], bridges[1])  # the bridge trained between checkpoints
    assert torch.equal(bridges[1], namespace["resumed"].bridge.weight.detach())
    assert "unweighted_pooled_cos" in namespace["parts"]


@pytest.mark.slow
def test_the_distributed_snippet_runs_under_torchrun(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(SNIPPETS / "distributed.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
