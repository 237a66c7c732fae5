"""The distillers and ``BasicTrainer``, all driven by the one loop in ``base.py``.

What a step computes lives here; how a run proceeds (plans, session, engine, checkpoints, the
loss log, ``train()`` arguments) lives in ``textbrewer.training``.

* ``base.py``: ``AbstractDistiller``: the loop, the forward template and the subclass hooks.
* ``basic.py``, ``general.py``, ``multi_teacher.py``, ``multi_task.py``, ``trainer.py``: one
  class each; they write ``compute_loss`` and name their teachers and adaptors.
* ``_batches.py``: forward conventions: device moves, teacher/student sub-batches,
  ``teacher_cache``, ``get_outputs_from_batch``, adaptor-result checks.
* ``_kd.py``: the KD pipeline (row selection, probability shift, temperature, KD loss) and
  ``DistillationTerms`` (KD + hard-label terms with their scheduled weights).
* ``_matching.py``: intermediate matches, projections and hook-based custom matches.
* ``_protocol.py``: TextBrewer 0.2.x's subclass protocol (``kd_loss``, ``d_config``,
  ``train_on_batch`` results) and step helpers; ``textbrewer.distiller_utils`` re-exports them.
* ``_subclass_projections.py``: ``projs``/``projs_group`` a 0.2.x subclass assigns.
* ``_teachers.py``: several teachers: how their KD terms combine (``combine_teachers``,
  ``teacher_weights``) and the check of each match's ``teacher`` index.
"""

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

__all__ = [
    "AbstractDistiller",
    "BasicDistiller",
    "BasicTrainer",
    "CustomMatch",
    "GeneralDistiller",
    "MultiTaskDistiller",
    "MultiTeacherDistiller",
    # TextBrewer 0.2.x's step helpers, for subclasses written against textbrewer.distillers
    "auto_forward",
    "get_outputs_from_batch",
    "move_to_device",
    "post_adaptor",
    "probability_shift_",
    "select_logits_with_mask",
]
