"""TextBrewer 0.2.x's ``textbrewer.distiller_utils``, as aliases over this library.

0.2.x subclasses start with ``from textbrewer.distiller_utils import *``; this module gives them
the same names, each the one implementation (nothing here is a copy): the distiller classes,
``AbstractDistiller``, ``CustomMatch``, the step helpers (``get_outputs_from_batch``,
``post_adaptor``, ``move_to_device``, ``auto_forward``, ``select_logits_with_mask``,
``probability_shift_``), the preset maps, the configurations, and the modules and typing names
the 0.2.x star import also brought (``torch``, ``nn``, ``F``, ``np``, ``Optional``, ...).
"""

import logging
import os
import random
from typing import Any, Callable, Dict, List, Optional, Tuple, Union  # noqa: UP035

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from textbrewer.configurations import DistillationConfig, TrainingConfig
from textbrewer.distillers._batches import get_outputs_from_batch, move_to_device
from textbrewer.distillers._matching import CustomMatch
from textbrewer.distillers._protocol import (
    auto_forward,
    post_adaptor,
    probability_shift_,
    select_logits_with_mask,
)
from textbrewer.distillers.base import AbstractDistiller
from textbrewer.distillers.basic import BasicDistiller
from textbrewer.distillers.general import GeneralDistiller
from textbrewer.distillers.multi_task import MultiTaskDistiller
from textbrewer.distillers.multi_teacher import MultiTeacherDistiller
from textbrewer.distillers.trainer import BasicTrainer
from textbrewer.presets import (
    ADAPTOR_KEYS,
    FEATURES,
    KD_LOSS_MAP,
    MATCH_LOSS_MAP,
    PROJ_MAP,
    TEMPERATURE_SCHEDULER,
    WEIGHT_SCHEDULER,
)

logger = logging.getLogger("textbrewer.distiller_utils")

__all__ = [
    "ADAPTOR_KEYS",
    "FEATURES",
    "KD_LOSS_MAP",
    "MATCH_LOSS_MAP",
    "PROJ_MAP",
    "TEMPERATURE_SCHEDULER",
    "WEIGHT_SCHEDULER",
    "AbstractDistiller",
    "Any",
    "BasicDistiller",
    "BasicTrainer",
    "Callable",
    "CustomMatch",
    "Dict",
    "DistillationConfig",
    "F",
    "GeneralDistiller",
    "List",
    "MultiTaskDistiller",
    "MultiTeacherDistiller",
    "Optional",
    "TrainingConfig",
    "Tuple",
    "Union",
    "auto_forward",
    "get_outputs_from_batch",
    "logger",
    "move_to_device",
    "nn",
    "np",
    "os",
    "post_adaptor",
    "probability_shift_",
    "random",
    "select_logits_with_mask",
    "torch",
    "tqdm",
]
