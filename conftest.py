"""Doctest namespace for the examples in the package's docstrings."""

import os

import pytest
import torch

import textbrewer


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace, tmp_path):
    doctest_namespace.update(
        os=os,
        torch=torch,
        tmp_dir=str(tmp_path / "out"),
        TrainingConfig=textbrewer.TrainingConfig,
        DistillationConfig=textbrewer.DistillationConfig,
    )
