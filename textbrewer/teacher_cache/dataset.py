"""Training from a teacher cache: a dataset that knows example indices, and its collate."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from torch.utils.data import Dataset, default_collate

from textbrewer.configurations import DistillationConfig
from textbrewer.teacher_cache.reader import TeacherCache


class CachedExample(NamedTuple):
    """One example of a ``CachedTeacherDataset``: its index and the wrapped dataset's item."""

    index: int
    example: Any


class CachedTeacherDataset(Dataset):
    """Wraps the dataset a teacher cache was made from, so batches carry the stored outputs.

    Item ``i`` is ``CachedExample(i, dataset[i])``; the collate function ``collate_fn`` (or one
    from ``collate()``) builds the batch with your collate function and adds the cached teacher
    results of those indices under ``'teacher_cache'`` (SPEC §3): every distiller then uses them
    as the teacher adaptor's result and runs no teacher. Any sampler works (shuffling,
    ``DistributedSampler``), since the results are looked up by index.

    Args:
        dataset: the same map-style dataset (same order) the cache was made from.
        cache: a ``TeacherCache`` or its folder.
        distill_config: the settings you train with: their matches must read exactly the
            stored layers. Give it: ``None`` (the default) skips this check, and reading a layer
            that is not stored then fails on the first step.
        dataset_id: compared with the precompute's ``dataset_id`` when given.
        collate_fn: your collate function, for the ready-made ``self.collate_fn`` (what
            ``collate(collate_fn, sequence_length)`` returns).
        sequence_length: as in ``collate``.

    Raises:
        ValueError: the cache was made from a dataset of another length, for another match
            configuration, or with another ``dataset_id``.

    Example:
        >>> cached = CachedTeacherDataset(dataset, cache_dir, config)  # doctest: +SKIP
        >>> loader = torch.utils.data.DataLoader(
        ...     cached, batch_size=32, shuffle=True, collate_fn=cached.collate(tokenize)
        ... )  # doctest: +SKIP
    """

    def __init__(
        self,
        dataset: Any,
        cache: TeacherCache | str | Path,
        distill_config: DistillationConfig | None = None,
        *,
        dataset_id: str | None = None,
        collate_fn: Callable[[list], Any] | None = None,
        sequence_length: Callable[[Any], int] | None = None,
    ) -> None:
        self.dataset = dataset
        self.cache = cache if isinstance(cache, TeacherCache) else TeacherCache(cache)
        self.cache.check(len(dataset), distill_config, dataset_id)
        self.collate_fn = self.collate(collate_fn, sequence_length)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> CachedExample:
        return CachedExample(int(index), self.dataset[index])

    def collate(
        self,
        collate_fn: Callable[[list], Any] | None = None,
        sequence_length: Callable[[Any], int] | None = None,
    ) -> CachedCollate:
        """The ``collate_fn`` for a DataLoader over this dataset.

        Args:
            collate_fn: your collate function over a list of examples (default
                ``torch.utils.data.default_collate``).
            sequence_length: ``f(teacher_batch) -> int``, the batch's padded length, which
                cached hidden states, attentions and token-level logits are fitted to (default:
                ``default_sequence_length``).
        """
        return CachedCollate(self.cache, collate_fn, sequence_length)


class CachedCollate:
    """``collate_fn`` of ``CachedTeacherDataset``: your batch plus ``'teacher_cache'``.

    A batch that is already a ``{'teacher': ..., 'student': ...}`` dict gets the key added;
    any other batch ``b`` becomes ``{'teacher': b, 'student': b, 'teacher_cache': ...}``, which
    feeds both models ``b`` as before. (A ``batch_postprocessor`` then receives that dict.)

    Args:
        cache: the teacher cache.
        collate_fn: your collate function (default ``torch.utils.data.default_collate``).
        sequence_length: ``f(teacher_batch) -> int`` (default ``default_sequence_length``).
    """

    def __init__(
        self,
        cache: TeacherCache,
        collate_fn: Callable[[list], Any] | None = None,
        sequence_length: Callable[[Any], int] | None = None,
    ) -> None:
        self.cache = cache
        self.collate_fn = collate_fn or default_collate
        self.sequence_length = sequence_length or default_sequence_length

    def __call__(self, items: list[CachedExample]) -> dict[str, Any]:
        """Collates ``items`` (from ``CachedTeacherDataset``) and attaches the cached results."""
        if not all(isinstance(item, CachedExample) for item in items):
            raise TypeError(
                "CachedCollate takes the items of a CachedTeacherDataset (CachedExample(index, "
                "example)); wrap your dataset in CachedTeacherDataset"
            )
        batch = self.collate_fn([item.example for item in items])
        split = isinstance(batch, Mapping) and "teacher" in batch and "student" in batch
        batch_T = batch["teacher"] if split else batch
        length = self.sequence_length(batch_T) if self.cache.needs_length else None
        cached = self.cache.teacher_outputs([item.index for item in items], length)
        if split:
            return {**batch, "teacher_cache": cached}
        return {"teacher": batch, "student": batch, "teacher_cache": cached}


def default_sequence_length(batch: Any) -> int:
    """The padded sequence length of a batch: what cached sequence features are fitted to.

    ``batch['attention_mask']`` or ``batch['input_ids']`` of a dict batch, else the first tensor
    with 2 or more dimensions (in dict or tuple order): its size in dimension 1.

    Raises:
        ValueError: no such tensor; pass ``sequence_length=`` to ``collate()``.
    """
    if isinstance(batch, Mapping):
        candidates = [batch[key] for key in ("attention_mask", "input_ids") if key in batch]
        candidates += list(batch.values())
    elif isinstance(batch, (list, tuple)):
        candidates = list(batch)
    else:
        candidates = [batch]
    for value in candidates:
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            return value.shape[1]
    raise ValueError(
        f"cannot tell the sequence length of a {type(batch).__name__} batch (no 'attention_mask'"
        ", 'input_ids' or tensor of 2+ dimensions): pass sequence_length=lambda batch: ... to "
        "CachedTeacherDataset.collate()"
    )
