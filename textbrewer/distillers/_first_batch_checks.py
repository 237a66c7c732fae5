"""Checks made once, on a distiller's first batch, of the KD terms' inputs.

Teacher and student logits must agree in shape for the built-in KD losses (a student batch of
one would otherwise broadcast silently against the teacher's), a softmax KD loss needs a class
dimension, a ``hard_label_weight`` without ``losses`` trains no hard-label term, and a top-k
teacher's stored classes must index the student's logits. Shapes are host values; the top-k
classes' range is the one read-back, once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from textbrewer import sparse_kd
from textbrewer.distillers._kd import check_same_classes

logger = logging.getLogger(__name__)


def check_logits_pairs(results_S: Mapping[str, Any], results_T: Any, kd_loss: Any) -> None:
    """Student and teacher logits without ``logits_mask`` must have the same shape.

    Only for the built-in KD losses, which compare the two row by row and class by class (a
    student batch of 1 would otherwise broadcast silently against the teacher's). Called on the
    first batch; shapes are host values, nothing is read back.

    Raises:
        ValueError: naming the pair, both shapes and the likely cause.
    """
    if getattr(kd_loss, "__module__", None) != "textbrewer.losses":
        return
    teachers = results_T if isinstance(results_T, list) else [results_T]
    for position, result_T in enumerate(teachers):
        if not isinstance(result_T, Mapping) or "logits" not in result_T:
            continue
        if "logits" not in results_S or "logits_mask" in results_S or "logits_mask" in result_T:
            continue  # masked rows are compared after selection, by the KD loss
        if sparse_kd.TOPK_INDICES_KEY in result_T:
            continue  # top-k values from a teacher cache: rows are compared by the top-k loss
        who_T = "adaptor_T" if len(teachers) == 1 else f"adaptor_T[{position}]"
        for index, (student, teacher) in enumerate(zip(results_S["logits"], result_T["logits"])):
            _check_class_dimension(student, index, kd_loss)
            check_same_classes(index, student, teacher, kd_loss, who_T)
            if student.shape != teacher.shape:
                raise ValueError(
                    f"logits[{index}]: adaptor_S returned shape {tuple(student.shape)}, {who_T} "
                    f"{tuple(teacher.shape)}; KD compares them row by row and class by class, so "
                    "the batch sizes, lengths and numbers of classes must agree (teacher and "
                    "student fed different sub-batches? a student head with another "
                    "num_labels?). For token-level logits of different lengths return "
                    "`logits_mask` from both adaptors"
                )


_SOFTMAX_KD = ("kd_ce_loss", "kd_kl_loss", "kd_reverse_kl_loss", "kd_jsd_loss")


def _check_class_dimension(logits: torch.Tensor, index: int, kd_loss: Any) -> None:
    # Softmax KD losses normalise over the last dimension: it must be the classes.
    if getattr(kd_loss, "__name__", "") not in _SOFTMAX_KD:
        return  # 'mse' regresses any shape, one output included
    if logits.dim() < 2:
        raise ValueError(
            f"logits[{index}] has shape {tuple(logits.shape)}: KD with a softmax over the last "
            "dimension would spread it over the batch. Return (batch, classes) logits, or "
            "distil a single output with kd_loss_type='mse' (or 'bce' for a sigmoid output)"
        )
    if logits.shape[-1] == 1:
        logger.warning(
            "logits[%d] has one class (shape %s): its softmax is always 1, so the KD term is 0 "
            "and teaches nothing; use kd_loss_type='mse' (or 'bce' for a sigmoid output) for a "
            "single output",
            index,
            tuple(logits.shape),
        )


def check_topk_classes(results_S: Mapping[str, Any], results_T: Any) -> None:
    """A top-k teacher's stored classes must index the student's logits.

    A cache written for a teacher with a larger vocabulary (another tokenizer) would otherwise
    fail inside ``gather``: an index error on the CPU, a device-side assert that kills the process
    on CUDA. One read-back, on the first batch only.

    Raises:
        ValueError: naming the logits pair, the class range found and the student's classes.
    """
    teachers = results_T if isinstance(results_T, list) else [results_T]
    for position, result_T in enumerate(teachers):
        if not isinstance(result_T, Mapping) or sparse_kd.TOPK_INDICES_KEY not in result_T:
            continue
        key = sparse_kd.TOPK_INDICES_KEY
        who_T = "adaptor_T" if len(teachers) == 1 else f"adaptor_T[{position}]"
        for index, (student, classes) in enumerate(zip(results_S.get("logits", ()), result_T[key])):
            if classes.numel() == 0:
                continue
            low, high = torch.stack([classes.min(), classes.max()]).tolist()
            if low < 0 or high >= student.shape[-1]:
                raise ValueError(
                    f"{key}[{index}] from {who_T} holds classes {low}..{high}, but the student's "
                    f"logits[{index}] have {student.shape[-1]} classes (0..{student.shape[-1] - 1})"
                    "; the top-k teacher cache was made for a teacher with another vocabulary or "
                    "label set. Precompute it with a teacher whose classes are the student's"
                )


def warn_missing_terms(results_S: Mapping[str, Any], hard_label_weight: Any, log: Any) -> None:
    """Warns once when ``hard_label_weight`` is set but ``adaptor_S`` returns no ``losses``."""
    if "losses" in results_S or not isinstance(hard_label_weight, (int, float)):
        return
    if hard_label_weight > 0:
        log.warning(
            "DistillationConfig `hard_label_weight`=%s, but adaptor_S returns no 'losses': the "
            "hard-label term is left out. Return the model's loss as 'losses' (a Hugging Face "
            "model computes it when the batch holds `labels`)",
            hard_label_weight,
        )


def first_batch_checks(distiller: Any, results_S: Mapping[str, Any], results_T: Any) -> None:
    """The checks a distiller makes once per student adaptor (per task), on its first results."""
    terms = getattr(distiller, "terms", None)
    if terms is None or results_T is None:
        return
    check_logits_pairs(results_S, results_T, terms.kd_loss)
    check_topk_classes(results_S, results_T)
    warn_missing_terms(results_S, terms.hard_label_weight, logger)
