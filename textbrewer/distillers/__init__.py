"""The distillers and ``BasicTrainer``, all driven by the one loop in ``base.py``."""

from textbrewer.distillers.base import AbstractDistiller
from textbrewer.distillers.basic import BasicDistiller
from textbrewer.distillers.general import GeneralDistiller
from textbrewer.distillers.multi_task import MultiTaskDistiller
from textbrewer.distillers.multi_teacher import MultiTeacherDistiller
from textbrewer.distillers.trainer import BasicTrainer

__all__ = [
    "AbstractDistiller",
    "BasicDistiller",
    "BasicTrainer",
    "GeneralDistiller",
    "MultiTaskDistiller",
    "MultiTeacherDistiller",
]
