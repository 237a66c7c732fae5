"""The built wheel: what setup.py packages and declares (a PEP 561 marker, the torch floor)."""

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

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
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(source)]
    if importlib.util.find_spec("setuptools") is not None:
        command.append("--no-build-isolation")  # offline and faster when setuptools is here
    subprocess.run([*command, "-w", str(tmp_path / "dist")], check=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("textbrewer-*.whl")
    return zipfile.ZipFile(wheel)


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
    assert sorted(requires) == ["numpy", "tensorboardX", "torch>=2.3", "tqdm"]
