"""``GeneralDistiller``: ``BasicDistiller`` plus intermediate-feature matches."""

from __future__ import annotations

from typing import Any

from torch import nn

from textbrewer.configurations import DistillationConfig, TrainingConfig
from textbrewer.distillers._matching import MatchComputer, MatchingHooks
from textbrewer.distillers._teachers import check_match_teachers
from textbrewer.distillers.basic import BasicDistiller


class GeneralDistiller(MatchingHooks, BasicDistiller):
    """Single-teacher distillation with intermediate matches (the recommended distiller).

    For each ``IntermediateMatch`` the student's ``hidden``/``attention`` element ``layer_S`` (after
    its projection, if ``proj`` is set) is compared with the teacher's element ``layer_T`` by
    ``MATCH_LOSS_MAP[loss](S, T, mask=inputs_mask)``. Projections are built here, in match order,
    and added to the optimizer when ``train()`` starts. ``is_caching_logits`` is ignored (with a
    warning): the matches need the teacher's features at every step.

    Args:
        train_config: training settings.
        distill_config: distillation settings, with ``intermediate_matches``.
        model_T: the teacher.
        model_S: the student.
        adaptor_T: the teacher's adaptor.
        adaptor_S: the student's adaptor.
        custom_matches: optional list of dicts (or objects) with ``module_T``, ``module_S``,
            ``weight``, ``loss`` and optionally ``proj_func`` and ``proj_group``: the outputs of
            the two modules are captured by forward hooks at every step and
            ``loss(out_S, out_T, mask_S, mask_T) * weight`` is added (logged as
            ``unweighted_custom_match_<i>``).

    Example:
        >>> teacher = torch.nn.Linear(4, 8)
        >>> student = torch.nn.Linear(4, 6)
        >>> adaptor = lambda batch, out: {"logits": out, "hidden": [out.unsqueeze(1)]}
        >>> config = DistillationConfig(intermediate_matches=[{"layer_T": 0, "layer_S": 0,
        ...     "feature": "hidden", "loss": "hidden_mse", "weight": 1, "proj": ["linear", 6, 8]}])
        >>> distiller = GeneralDistiller(
        ...     TrainingConfig(device="cpu", output_dir=tmp_dir, progress_bar=False), config,
        ...     teacher, student, adaptor, adaptor)
        >>> len(distiller.extra_param_groups())
        1
    """

    _supports_caching = False

    def __init__(
        self,
        train_config: TrainingConfig,
        distill_config: DistillationConfig,
        model_T: nn.Module,
        model_S: nn.Module,
        adaptor_T: Any,
        adaptor_S: Any,
        custom_matches: list[Any] | None = None,
    ) -> None:
        super().__init__(train_config, distill_config, model_T, model_S, adaptor_T, adaptor_S)
        self.matches = MatchComputer(
            distill_config.intermediate_matches or [], custom_matches, self.device
        )
        check_match_teachers(
            self.matches.matches, self.matches.custom, self.teachers(), type(self).__name__
        )
