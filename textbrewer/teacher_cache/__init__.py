"""Teacher outputs computed once, stored on disk, and attached to training batches.

``precompute_teacher_outputs`` runs the teacher (with its adaptor) over a dataset once and
stores, per example index, what distillation reads: the logits (optionally only their top-k), the
masks, and the hidden states / attentions that the configured intermediate matches read.
``CachedTeacherDataset`` wraps the same dataset; its ``collate()`` attaches the stored results
to every batch as ``'teacher_cache'``, so every distiller trains without a teacher forward.
The docs' teacher-cache page describes the format, DDP, resuming and the top-k error.
"""

from textbrewer.teacher_cache.dataset import (
    CachedCollate,
    CachedExample,
    CachedTeacherDataset,
    default_sequence_length,
)
from textbrewer.teacher_cache.precompute import precompute_teacher_outputs
from textbrewer.teacher_cache.reader import StoredLayers, TeacherCache

__all__ = [
    "CachedCollate",
    "CachedExample",
    "CachedTeacherDataset",
    "StoredLayers",
    "TeacherCache",
    "default_sequence_length",
    "precompute_teacher_outputs",
]
