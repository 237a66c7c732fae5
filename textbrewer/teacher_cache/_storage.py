"""The on-disk format of a teacher cache: names, dtypes, sequence-length axes, atomic writes.

Layout of ``output_dir``::

    precompute.json          the run's parameters (written first; a resume must agree with it)
    chunks/00000/<name>.npy  one .npy per stored array, rows = the chunk's examples in order
    chunks/00000/meta.json   what each array is (adaptor key, layer, dtype, length axes)
    chunks/00001/...
    manifest.json            written last: the cache is complete and usable

A chunk covers the examples ``[c * chunk_size, (c + 1) * chunk_size)``; its folder is written
under a temporary name and renamed when every array is on disk, so a chunk folder that exists is
complete. Arrays are plain ``.npy`` files (``numpy.save``, no pickle); bfloat16, which numpy
lacks, is stored as its 16-bit pattern and viewed back.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "textbrewer-teacher-cache"
VERSION = 1
MANIFEST = "manifest.json"
RUN_PARAMETERS = "precompute.json"
CHUNKS = "chunks"
CHUNK_META = "meta.json"


def array_name(teacher: int, key: str, position: int | None = None) -> str:
    """``'t0.hidden.3'``: teacher, adaptor key and list position (layer, or logits index)."""
    return f"t{teacher}.{key}" if position is None else f"t{teacher}.{key}.{position}"


def length_axes(key: str, batched_dims: int) -> list[int]:
    """The sequence-length axes of one example's array (the batch axis removed).

    ``hidden`` (batch, length, dim) -> [0]; ``attention`` (batch, heads, length, length) ->
    [1, 2] or (batch, length, length) -> [0, 1]; 3-D ``logits`` and their top-k -> [0]; masks
    (batch, length) -> [0]; pooled 2-D features and 2-D logits have none.
    """
    if key == "attention":
        return [batched_dims - 3, batched_dims - 2] if batched_dims >= 3 else []
    if key in ("logits_mask", "inputs_mask"):
        return [0] if batched_dims >= 2 else []
    return [0] if batched_dims >= 3 else []


def to_numpy(tensor: torch.Tensor) -> tuple[np.ndarray, str]:
    """A host numpy view of ``tensor`` and the torch dtype name to restore it with."""
    tensor = tensor.detach().cpu().contiguous()
    name = str(tensor.dtype).replace("torch.", "")
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: keep the bit pattern
        tensor = tensor.view(torch.int16)
    return tensor.numpy(), name


def to_torch(array: np.ndarray, dtype_name: str) -> torch.Tensor:
    """The tensor ``to_numpy`` stored (a copy, so it owns its memory)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if dtype_name == "bfloat16":
        return tensor.view(torch.bfloat16)
    return tensor


def pad_axes(array: np.ndarray, axes: list[int], lengths: list[int]) -> np.ndarray:
    """``array`` with each of ``axes`` zero-padded up to, or cut down to, ``lengths``."""
    slices: list[Any] = [slice(None)] * array.ndim
    pads = [(0, 0)] * array.ndim
    for axis, length in zip(axes, lengths):
        size = array.shape[axis]
        if size > length:
            slices[axis] = slice(0, length)
        elif size < length:
            pads[axis] = (0, length - size)
    array = array[tuple(slices)]
    if any(after for _, after in pads):
        array = np.pad(array, pads)
    return array


def write_json(path: Path, content: dict) -> None:
    """Writes ``content`` as JSON atomically (temporary file, flush, ``os.replace``)."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(content, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def read_json(path: Path) -> dict:
    """Reads a JSON file written by ``write_json``."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def chunk_dir(root: Path, chunk: int) -> Path:
    """The folder of a complete chunk."""
    return root / CHUNKS / f"{chunk:05d}"


def write_chunk(
    root: Path, chunk: int, arrays: dict[str, np.ndarray], meta: dict, rank: int
) -> None:
    """Writes one chunk's arrays and description under a temporary folder, then renames it."""
    final = chunk_dir(root, chunk)
    temporary = final.with_name(f".{final.name}.tmp-r{rank}-{os.getpid()}")
    temporary.mkdir(parents=True)
    write_json(temporary / CHUNK_META, meta)
    for name, array in arrays.items():
        with open(temporary / f"{name}.npy", "wb") as handle:
            np.save(handle, array, allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())
    try:
        os.replace(temporary, final)
    except OSError:
        if not final.is_dir():
            raise
        # Another process completed this chunk meanwhile: its copy is as good as ours.
        shutil.rmtree(temporary)


def remove_partial_chunks(root: Path) -> None:
    """Deletes the temporary folders an interrupted run left behind."""
    folder = root / CHUNKS
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.name.startswith(".") and ".tmp-" in entry.name:
            shutil.rmtree(entry)
