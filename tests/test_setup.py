"""The built wheel: what setup.py packages and declares (a PEP 561 marker, the torch floor)."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def build_wheel(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(REPO_ROOT / "setup.py", source)
    shutil.copy(REPO_ROOT / "README.md", source)
    shutil.copytree(
        REPO_ROOT / "textbrewer",
        source / "textbrewer",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    # With build isolation, as `pip install .` builds: the venv's own setuptools may be too old to
    # build wheels without the `wheel` package (Python 3.11's venvs bundle setuptools 65).
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(source)]
    subprocess.run([*command, "-w", str(tmp_path / "dist")], check=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("textbrewer-*.whl")
    return zipfile.ZipFile(wheel)


def test_setup_declares_py_typed_and_the_torch_2_3_floor(monkeypatch):
    setuptools = pytest.importorskip("setuptools")
    monkeypatch.chdir(REPO_ROOT)  # setup.py reads README.md and the version relative to it
    distribution = setuptools.distutils.core.run_setup("setup.py", stop_after="init")
    assert distribution.package_data == {"textbrewer": ["py.typed"]}
    assert (REPO_ROOT / "textbrewer" / "py.typed").is_file()
    assert sorted(map(str, distribution.install_requires)) == [
        "numpy",
        "tensorboardX",
        "torch>=2.3",
        "tqdm",
    ]


@pytest.mark.slow
def test_the_wheel_ships_py_typed_and_requires_torch_2_3(tmp_path):
    with build_wheel(tmp_path) as wheel:
        names = wheel.namelist()
        metadata = next(name for name in names if name.endswith(".dist-info/METADATA"))
        requires = [
            line.split(":", 1)[1].strip()
            for line in wheel.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line
        ]
    assert "textbrewer/py.typed" in names
    assert "textbrewer/training/engine.py" in names
    assert "textbrewer/teacher_cache/precompute.py" in names  # subpackages ship too
    assert sorted(requires) == ["numpy", "tensorboardX", "torch>=2.3", "tqdm"]
