"""textbrewer: knowledge distillation for NLP models in PyTorch.

The public face of the package: it re-exports the configurations, the distillers and the preset
registries, and holds no logic of its own.
"""

__version__ = "0.3.0"

from textbrewer import (  # distiller_*: TextBrewer 0.2.x module paths, aliases
    data_utils,
    distiller_basic,
    distiller_general,
    distiller_multitask,
    distiller_multiteacher,
    distiller_train,
    distiller_utils,
    losses,
    presets,
    recipes,
    utils,
)
from textbrewer._validation import ConfigError
from textbrewer.configurations import DistillationConfig, TrainingConfig
from textbrewer.distillers import (
    BasicDistiller,
    BasicTrainer,
    GeneralDistiller,
    MultiTaskDistiller,
    MultiTeacherDistiller,
)
from textbrewer.presets import (
    ADAPTOR_KEYS,
    FEATURES,
    KD_LOSS_MAP,
    MAPS,
    MATCH_LOSS_MAP,
    PROJ_MAP,
    TEMPERATURE_SCHEDULER,
    WEIGHT_SCHEDULER,
    register_new,
)
from textbrewer.training.checkpoint import CorruptStateError
from textbrewer.training.faults import NonFiniteWeightsError
from textbrewer.training.loss_log import NonFiniteLossError
from textbrewer.training.run_report import TrainResult

Distillers = {
    "Basic": BasicDistiller,
    "General": GeneralDistiller,
    "MultiTeacher": MultiTeacherDistiller,
    "MultiTask": MultiTaskDistiller,
    "Train": BasicTrainer,
}

__all__ = [
    "ADAPTOR_KEYS",
    "FEATURES",
    "KD_LOSS_MAP",
    "MAPS",
    "MATCH_LOSS_MAP",
    "PROJ_MAP",
    "TEMPERATURE_SCHEDULER",
    "WEIGHT_SCHEDULER",
    "BasicDistiller",
    "BasicTrainer",
    "ConfigError",
    "CorruptStateError",
    "DistillationConfig",
    "Distillers",
    "GeneralDistiller",
    "MultiTaskDistiller",
    "MultiTeacherDistiller",
    "NonFiniteLossError",
    "NonFiniteWeightsError",
    "TrainResult",
    "TrainingConfig",
    "__version__",
    "data_utils",
    "distiller_basic",
    "distiller_general",
    "distiller_multitask",
    "distiller_multiteacher",
    "distiller_train",
    "distiller_utils",
    "losses",
    "presets",
    "recipes",
    "utils",
    "register_new",
]
