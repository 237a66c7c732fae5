"""Run the teacher(s) over a dataset once and store what distillation reads, by example index."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, default_collate
from tqdm.auto import tqdm

from textbrewer.configurations import DistillationConfig
from textbrewer.distillers._batches import (
    AdaptorChecker,
    move_to_device,
    split_batch,
    teacher_forward,
)
from textbrewer.teacher_cache import _storage as storage
from textbrewer.teacher_cache._extract import stored_arrays
from textbrewer.teacher_cache._selection import fingerprint, teacher_selection
from textbrewer.teacher_cache.reader import TeacherCache

logger = logging.getLogger(__name__)


def precompute_teacher_outputs(
    model_T: nn.Module | Sequence[nn.Module],
    adaptor_T: Callable | Sequence[Callable],
    data: Any,
    output_dir: str | Path,
    distill_config: DistillationConfig | None = None,
    *,
    collate_fn: Callable | None = None,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    topk: int | None = None,
    dtype: torch.dtype | None = None,
    chunk_size: int = 1024,
    model_args: dict[str, Any] | None = None,
    dataset_id: str | None = None,
    overwrite: bool = False,
    progress_bar: bool = True,
) -> TeacherCache:
    """Runs the teacher(s) with their adaptor(s) over a dataset once and stores the results.

    Stored per example (keyed by its index in ``data``): every ``logits`` tensor the adaptor
    returns (or its ``topk`` largest values and their classes), its ``logits_mask`` and
    ``inputs_mask``, and the ``hidden``/``attention`` layers that ``distill_config``'s
    intermediate matches read (``layer_T`` of the match's ``teacher``). Example ``i`` is
    ``dataset[i]``; batches are ``collate_fn([dataset[i], ...])`` over consecutive indices, fed to
    the teacher as the distillers feed it (a dict batch as keyword arguments, a
    ``{'teacher', 'student'}`` batch's ``'teacher'`` part, ``model_args`` added), without gradients
    and in ``eval()`` mode. Training then reads the results back through
    ``CachedTeacherDataset`` over the same dataset, in any order.

    Resumable: the dataset is cut into chunks of ``chunk_size`` examples, each written atomically;
    calling again with the same arguments computes only the chunks that are missing (and returns
    at once when the cache is complete). Under ``torch.distributed`` (an initialised process
    group), chunk ``c`` is computed by rank ``c % world_size``, and rank 0 writes the manifest
    once every chunk is on disk; every rank must call this function.

    Args:
        model_T: the teacher, or a list of teachers (``MultiTeacherDistiller``; a task's teachers
            in ``MultiTaskDistiller``): the cache then gives a list with one result per teacher.
        adaptor_T: the teacher's adaptor, or one per teacher.
        data: a map-style dataset (``len`` and ``[i]``), or a ``DataLoader`` over one, whose
            ``dataset``, ``collate_fn`` and ``batch_size`` are used (never its sampler: the order
            is by index).
        output_dir: the cache folder (created).
        distill_config: the distillation settings whose matches say which layers to store
            (``None``: logits and masks only).
        collate_fn: builds a batch from a list of examples (default: the loader's, else
            ``torch.utils.data.default_collate``).
        batch_size: examples per teacher forward (default: the loader's, else 32).
        device: where the teacher runs.
        topk: keep only the ``topk`` largest logits of every row, with their classes (for large
            vocabularies; the KD loss is then an approximation, see ``textbrewer.sparse_kd``).
        dtype: floating dtype to store features in, e.g. ``torch.float16`` (default: as computed).
        chunk_size: examples per chunk (the unit of resuming and of the work split between
            ranks); a chunk's outputs are held in host memory until written.
        model_args: extra keyword arguments for the teacher forward, e.g.
            ``{'output_hidden_states': True}``.
        dataset_id: an optional name of the dataset's version; ``CachedTeacherDataset`` given a
            ``dataset_id`` refuses a cache with another.
        overwrite: delete an existing cache in ``output_dir`` made with other arguments.
        progress_bar: show a tqdm bar (rank 0).

    Returns:
        The finished ``TeacherCache``.

    Raises:
        ValueError: ``output_dir`` holds a cache or an unfinished run made with other arguments
            (and ``overwrite`` is false), or the arguments are invalid.
    """
    dataset, collate_fn, batch_size = _data_source(data, collate_fn, batch_size)
    teachers, adaptors = _teachers_and_adaptors(model_T, adaptor_T)
    _check_positive("chunk_size", chunk_size)
    if topk is not None:
        _check_positive("topk", topk)
    selection = teacher_selection(distill_config, len(teachers))
    parameters = {
        "format": storage.FORMAT,
        "version": storage.VERSION,
        "dataset_length": len(dataset),
        "chunk_size": chunk_size,
        "teachers": len(teachers),
        "teacher_list": isinstance(model_T, (list, tuple)),
        "selection": selection,
        "fingerprint": fingerprint(selection),
        "topk": topk,
        "dtype": None if dtype is None else str(dtype).replace("torch.", ""),
        "dataset_id": dataset_id,
    }
    root = Path(output_dir)
    rank, world_size = _rank_and_world()
    differing = _differences(root, parameters, overwrite)  # every rank: all raise, none waits
    if rank == 0:
        _prepare(root, parameters, differing)
    _barrier(world_size)
    if not (root / storage.MANIFEST).exists():
        run = _Run(teachers, adaptors, dataset, collate_fn, batch_size, torch.device(device))
        run.compute(root, parameters, model_args or {}, rank, world_size, progress_bar)
        _barrier(world_size)
        if rank == 0:
            _write_manifest(root, parameters)
        _barrier(world_size)
    return TeacherCache(root)


class _Run:
    """The teachers, their adaptors and the data of one precompute."""

    def __init__(self, teachers, adaptors, dataset, collate_fn, batch_size, device) -> None:
        self.teachers, self.adaptors = teachers, adaptors
        self.dataset, self.collate_fn, self.batch_size = dataset, collate_fn, batch_size
        self.device = device
        self.check = AdaptorChecker()

    def compute(self, root, parameters, model_args, rank, world_size, progress_bar) -> None:
        size, total = parameters["chunk_size"], parameters["dataset_length"]
        chunks = [
            chunk
            for chunk in range(_chunk_count(total, size))
            if chunk % world_size == rank and not storage.chunk_dir(root, chunk).exists()
        ]
        batches = sum(
            -(-(min(total, (c + 1) * size) - c * size) // self.batch_size) for c in chunks
        )
        bar = tqdm(total=batches, desc="teacher outputs", disable=not progress_bar or rank != 0)
        modes = [teacher.training for teacher in self.teachers]
        try:
            for teacher in self.teachers:
                teacher.to(self.device).eval()
            for chunk in chunks:
                start, stop = chunk * size, min(total, (chunk + 1) * size)
                arrays, meta = self._chunk(range(start, stop), parameters, model_args, bar)
                storage.write_chunk(root, chunk, arrays, meta, rank)
        finally:
            bar.close()
            for teacher, mode in zip(self.teachers, modes):
                teacher.train(mode)

    def _chunk(self, indices: range, parameters: dict, model_args: dict, bar) -> tuple:
        pieces: dict[str, list[np.ndarray]] = {}
        meta: dict[str, Any] = {"arrays": {}, "layers": {}}
        for start in range(indices.start, indices.stop, self.batch_size):
            positions = range(start, min(indices.stop, start + self.batch_size))
            batch = self.collate_fn([self.dataset[index] for index in positions])
            batch_T = move_to_device(split_batch(batch)[0], self.device)
            for index, (teacher, adaptor) in enumerate(zip(self.teachers, self.adaptors)):
                outputs = teacher_forward(teacher, batch_T, model_args)
                name = f"adaptor_T[{index}]" if len(self.teachers) > 1 else "adaptor_T"
                result = self.check(adaptor(batch_T, outputs), name)
                arrays, layers = stored_arrays(
                    result,
                    index,
                    parameters["selection"][index],
                    parameters["topk"],
                    _dtype(parameters["dtype"]),
                    len(positions),
                )
                meta["layers"].update(layers)
                for array_key, (tensor, info) in arrays.items():
                    values, dtype_name = storage.to_numpy(tensor)
                    shape = [
                        None if a in info["axes"] else n for a, n in enumerate(values.shape[1:])
                    ]
                    meta["arrays"][array_key] = {**info, "dtype": dtype_name, "shape": shape}
                    pieces.setdefault(array_key, []).append(values)
            bar.update(1)
        return {
            name: _concatenate(parts, meta["arrays"][name]) for name, parts in pieces.items()
        }, meta


def _concatenate(parts: list[np.ndarray], info: dict) -> np.ndarray:
    """Stacks a chunk's batches, zero-padding the length axes to the chunk's longest."""
    axes = [axis + 1 for axis in info["axes"]]  # the batch axis comes first
    lengths = [max(part.shape[axis] for part in parts) for axis in axes]
    return np.concatenate([storage.pad_axes(part, axes, lengths) for part in parts])


def _dtype(name: str | None) -> torch.dtype | None:
    return None if name is None else getattr(torch, name)


def _chunk_count(total: int, size: int) -> int:
    return -(-total // size)


def _differences(root: Path, parameters: dict, overwrite: bool) -> list[str]:
    """The arguments an existing run in ``root`` was made with otherwise (refused unless told)."""
    recorded_path = root / storage.RUN_PARAMETERS
    if not recorded_path.exists():
        return []
    recorded = storage.read_json(recorded_path)
    differing = sorted(key for key in parameters if recorded.get(key) != parameters[key])
    if differing and not overwrite:
        details = ", ".join(
            f"{key}={recorded.get(key)!r} there, {parameters[key]!r} now" for key in differing
        )
        raise ValueError(
            f"`output_dir`={str(root)!r} holds a teacher cache (or an unfinished precompute) "
            f"made with other arguments: {details}. Use another output_dir, or pass "
            "overwrite=True to delete it"
        )
    return differing


def _prepare(root: Path, parameters: dict, differing: list[str]) -> None:
    """Starts or resumes a run in ``root`` (rank 0): clears what an older one left."""
    if differing:
        logger.warning("Deleting the teacher cache in %s (overwrite=True)", root)
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    storage.remove_partial_chunks(root)
    if not (root / storage.RUN_PARAMETERS).exists():
        storage.write_json(root / storage.RUN_PARAMETERS, parameters)


def _write_manifest(root: Path, parameters: dict) -> None:
    count = _chunk_count(parameters["dataset_length"], parameters["chunk_size"])
    missing = [c for c in range(count) if not storage.chunk_dir(root, c).exists()]
    if missing:
        raise RuntimeError(
            f"teacher cache {root}: chunks {missing[:10]} are missing after every rank finished; "
            "did a rank fail? Call precompute_teacher_outputs again to compute them"
        )
    meta = {"arrays": {}, "layers": {}}
    if count:  # every chunk holds the same arrays; the first describes them
        meta = storage.read_json(storage.chunk_dir(root, 0) / storage.CHUNK_META)
    storage.write_json(root / storage.MANIFEST, {**parameters, "chunks": count, **meta})
    logger.info("Teacher cache complete: %s (%d examples)", root, parameters["dataset_length"])


def _data_source(data: Any, collate_fn: Any, batch_size: Any) -> tuple[Any, Callable, int]:
    if isinstance(data, DataLoader):
        collate_fn = collate_fn or data.collate_fn
        batch_size = batch_size or data.batch_size
        data = data.dataset
    if not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
        raise TypeError(
            "`data` must be a map-style dataset (with __len__ and __getitem__: example i is "
            f"data[i]) or a DataLoader over one, got {type(data).__name__}"
        )
    batch_size = 32 if batch_size is None else batch_size
    _check_positive("batch_size", batch_size)
    return data, collate_fn or default_collate, batch_size


def _teachers_and_adaptors(model_T: Any, adaptor_T: Any) -> tuple[list, list]:
    teachers = list(model_T) if isinstance(model_T, (list, tuple)) else [model_T]
    if not teachers:
        raise ValueError("`model_T` is an empty list; give at least one teacher")
    for index, teacher in enumerate(teachers):
        if not isinstance(teacher, nn.Module):
            raise TypeError(
                f"`model_T`[{index}] must be an nn.Module, got {type(teacher).__name__}"
            )
    adaptors = (
        list(adaptor_T) if isinstance(adaptor_T, (list, tuple)) else [adaptor_T] * len(teachers)
    )
    if len(adaptors) != len(teachers):
        raise ValueError(
            f"`adaptor_T` has {len(adaptors)} adaptors for {len(teachers)} teachers; give one "
            "adaptor for all or one per teacher"
        )
    for index, adaptor in enumerate(adaptors):
        if not callable(adaptor):
            raise TypeError(f"`adaptor_T`[{index}] must be callable, got {adaptor!r}")
    return teachers, adaptors


def _check_positive(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{field}`={value!r} must be a positive integer")


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    launched = os.environ.get("WORLD_SIZE", "1")
    if launched.isdigit() and int(launched) > 1:
        # Every process would compute (and write) every chunk: refuse rather than race.
        raise RuntimeError(
            f"this process was launched as one of WORLD_SIZE={launched} (torchrun?), but no "
            "torch.distributed process group is initialised: call "
            "torch.distributed.init_process_group() before precompute_teacher_outputs, so that "
            "each rank computes its share of the chunks"
        )
    return 0, 1


def _barrier(world_size: int) -> None:
    if world_size > 1:
        dist.barrier()
