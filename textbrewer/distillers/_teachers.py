"""Several teachers: how their KD terms are combined, and which teacher each match reads from.

Used by ``MultiTeacherDistiller`` and by ``MultiTaskDistiller`` tasks that have several teachers.
The 0.2.x behaviour (the element-wise mean of the teachers' logits, equal weights) is the
default; the arithmetic of every mode is written out in the docs' multi-teacher page.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, Callable

import torch
from torch import nn

from textbrewer import sparse_kd
from textbrewer.distillers._batches import AdaptorResult
from textbrewer.distillers._kd import (
    DistillationTerms,
    check_lengths,
    check_logits_sides,
    to_float32,
)

MEAN_LOGITS = "mean_logits"
MEAN_LOSSES = "mean_losses"
COMBINATIONS = (MEAN_LOGITS, MEAN_LOSSES)
"""The values of ``combine_teachers``."""


class TeacherCombination:
    """How the KD term of several teachers is formed.

    ``'mean_logits'`` (the default, TextBrewer 0.2.x): the teachers' logits, selected by teacher
    0's ``logits_mask``, are averaged, ``l_T = sum_i l_i / n`` or with weights
    ``l_T = sum_i (w_i / sum_j w_j) l_i``, and that average is distilled once.
    ``'mean_losses'``: every teacher is distilled on its own, as a single-teacher distiller would
    (its own ``logits_mask``, probability shift and temperature-scheduler result), and the KD
    losses are averaged, ``KD = sum_i KD_i / n`` or ``sum_i (w_i / sum_j w_j) KD_i``.

    Args:
        mode: ``'mean_logits'`` or ``'mean_losses'``.
        weights: one non-negative number per teacher (normalised to sum to 1), or ``None`` for
            equal weights.
        count: the number of teachers.
        field: how the caller names ``weights`` in messages (e.g. ``"teacher_weights['a']"``).
    """

    def __init__(
        self,
        mode: str,
        weights: Sequence[float] | None,
        count: int,
        field: str = "teacher_weights",
    ) -> None:
        if mode not in COMBINATIONS:
            raise ValueError(
                f"`combine_teachers`={mode!r} is not a way to combine teachers (known: "
                f"{', '.join(map(repr, COMBINATIONS))})"
            )
        self.mode = mode
        self.count = count
        self.weights = normalised_weights(weights, count, field)

    def mean(self, values: Sequence[torch.Tensor]) -> torch.Tensor:
        """The (weighted) mean of one tensor per teacher, as the docs write it.

        Equal weights keep 0.2.x's arithmetic, ``sum(values) / len(values)``, to the last bit.
        """
        if self.weights is None:
            return sum(values) / len(values)
        total = None
        for weight, value in zip(self.weights, values):
            term = value * weight
            total = term if total is None else total + term
        return total

    def averaged_logits(self, results_T: Sequence[AdaptorResult]) -> AdaptorResult:
        """``{'logits': [mean of the teachers' selected logits, per logits tensor]}``.

        Every teacher's logits are selected by teacher 0's ``logits_mask`` (0.2.x ignores the
        other teachers' masks); ``{}`` when some teacher returns no ``logits``.
        """
        if not all("logits" in result for result in results_T):
            return {}
        check_logits_counts(results_T)
        if any(sparse_kd.TOPK_INDICES_KEY in result for result in results_T):
            raise ValueError(
                "combine_teachers='mean_logits' averages the teachers' logits class by class, "
                "but a teacher cache stores top-k logits (different classes per teacher); use "
                "combine_teachers='mean_losses', or precompute with topk=None"
            )
        averaged = [
            self.mean([to_float32(result["logits"][position]) for result in results_T])
            for position in range(len(results_T[0]["logits"]))
        ]
        masks = results_T[0].get("logits_mask")
        # Averaging whole rows and letting the KD loss apply teacher 0's masks gives the numbers
        # of selecting first, without a shape that depends on the masks' values.
        return {"logits": averaged, "logits_mask": masks} if masks else {"logits": averaged}

    def mean_of_losses(
        self,
        kd_of: Callable[[AdaptorResult], torch.Tensor | None],
        results_T: Sequence[AdaptorResult],
    ) -> torch.Tensor | None:
        """The (weighted) mean over teachers of ``kd_of(results_T[i])``, each teacher's own KD.

        ``None`` when some teacher returns no ``logits`` (there is then no KD term, as in
        ``'mean_logits'`` mode).
        """
        if not all("logits" in result for result in results_T):
            return None
        check_logits_counts(results_T)
        return self.mean([kd_of(result) for result in results_T])


def combined_kd_parts(
    terms: DistillationTerms,
    combination: TeacherCombination,
    results_S: AdaptorResult,
    results_T: Sequence[AdaptorResult],
) -> list[tuple[str, Any, Any]]:
    """``(name, unweighted loss, weight)`` of the KD and hard-label terms against several teachers.

    ``'mean_logits'`` hands ``terms`` the averaged teacher; ``'mean_losses'`` computes
    ``terms``' KD loss against each teacher and averages those (the part is still
    ``unweighted_kd_loss``, weighted by ``kd_loss_weight``), then adds the hard-label term.
    """
    check_logits_sides(
        results_S, list(results_T), [f"adaptor_T[{i}]" for i in range(len(results_T))]
    )
    if combination.mode == MEAN_LOGITS:
        return terms.parts(results_S, combination.averaged_logits(results_T), check_sides=False)
    parts = []
    if "logits" in results_S:
        kd = combination.mean_of_losses(lambda one: _kd_of(terms, results_S, one), results_T)
        if kd is not None:
            parts.append(("unweighted_kd_loss", kd, terms.kd_loss_weight))
    return parts + terms.parts(results_S, {}, check_sides=False)  # the hard-label term alone


def _kd_of(
    terms: DistillationTerms, results_S: AdaptorResult, result_T: AdaptorResult
) -> torch.Tensor:
    # Each teacher as a single-teacher distiller sees it: its own logits_mask, probability
    # shift and temperature-scheduler result.
    check_lengths(results_S, result_T)
    return terms.kd(
        results_S["logits"],
        result_T["logits"],
        results_S.get("logits_mask"),
        result_T.get("logits_mask"),
        results_S.get("labels"),
        result_T.get(sparse_kd.TOPK_INDICES_KEY),
    )


def normalised_weights(weights: Any, count: int, field: str) -> list[float] | None:
    """Checks per-teacher weights and returns them divided by their sum (``None`` stays)."""
    if weights is None:
        return None
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
        raise TypeError(
            f"`{field}`={weights!r} must be a list with one number per teacher ({count}), or None "
            "for equal weights"
        )
    if len(weights) != count:
        raise ValueError(
            f"`{field}`={list(weights)!r} has {len(weights)} weight(s) for {count} teachers; give "
            "one per teacher, in `model_T` order"
        )
    for weight in weights:
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
            raise TypeError(f"`{field}`={list(weights)!r}: {weight!r} is not a number")
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(
                f"`{field}`={list(weights)!r}: every weight must be a finite number >= 0"
            )
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"`{field}`={list(weights)!r}: the weights must not all be 0")
    return [float(weight) / total for weight in weights]


def check_logits_counts(results_T: Sequence[AdaptorResult]) -> None:
    """Every teacher must return as many logits tensors as teacher 0."""
    count = len(results_T[0]["logits"])
    for index, result in enumerate(results_T[1:], start=1):
        if len(result["logits"]) != count:
            raise ValueError(
                f"adaptor_T[{index}] returned {len(result['logits'])} logits tensor(s), teacher 0 "
                f"returned {count}; every teacher must return as many"
            )


def check_match_teachers(
    matches: Sequence[Any],
    custom_matches: Sequence[Any],
    teachers: Sequence[nn.Module],
    owner: str,
    models_field: str = "model_T",
) -> None:
    """Checks the ``teacher`` index of every match against the distiller's teachers.

    With one teacher, a match may name teacher 0 or none; with several, every match must name
    one, and a custom match's ``module_T`` must belong to the teacher it names.

    Args:
        matches: the ``IntermediateMatch`` list.
        custom_matches: the ``CustomMatch`` list.
        teachers: the teachers the matches read from.
        owner: the distiller (and task) for messages, e.g. ``"MultiTeacherDistiller"``.
        models_field: how messages name the list of teachers (``"model_T['nli']"`` for a task).
    """
    named = [(f"intermediate_matches[{i}]", m.teacher) for i, m in enumerate(matches)]
    named += [(f"custom_matches[{i}]", m.teacher) for i, m in enumerate(custom_matches)]
    for field, teacher in named:
        _check_one_teacher(field, teacher, len(teachers), owner, models_field)
    if len(teachers) > 1:
        for index, custom in enumerate(custom_matches):
            module_T = custom.module_T
            if not any(module is module_T for module in teachers[custom.teacher].modules()):
                raise ValueError(
                    f"`custom_matches[{index}].module_T` is not a submodule of "
                    f"{models_field}[{custom.teacher}], the teacher its `teacher`={custom.teacher} "
                    "names; name the teacher that module belongs to"
                )


def _check_one_teacher(field: str, teacher: Any, count: int, owner: str, models: str) -> None:
    if count == 1:
        if teacher not in (None, 0):
            raise ValueError(
                f"`{field}.teacher`={teacher!r}, but {owner} has one teacher: leave `teacher` "
                "out (or give 0); several teachers go in a list (MultiTeacherDistiller's "
                "`model_T`, or a task's entry of MultiTaskDistiller's `model_T`)"
            )
        return
    if teacher is None:
        raise ValueError(
            f"`{field}` does not say which teacher it reads from, and {owner} has {count} "
            f"teachers: add 'teacher': <index into {models}, 0 to {count - 1}> to the match"
        )
    if isinstance(teacher, bool) or not isinstance(teacher, int) or not 0 <= teacher < count:
        raise ValueError(
            f"`{field}.teacher`={teacher!r} is not a teacher of {owner}: it has {count} "
            f"teachers, indices 0 to {count - 1} of {models}"
        )
