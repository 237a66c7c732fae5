"""Reading a finished teacher cache: the stored results of any examples, as one batch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from textbrewer.configurations import DistillationConfig
from textbrewer.distillers._batches import AdaptedOutputs
from textbrewer.sparse_kd import TOPK_INDICES_KEY
from textbrewer.teacher_cache import _storage as storage
from textbrewer.teacher_cache._selection import describe, fingerprint, teacher_selection

_LIST_KEYS = ("logits", TOPK_INDICES_KEY, "logits_mask")


class StoredLayers(tuple):
    """A teacher's per-layer features with only the cached layers present.

    It has the length of the teacher's full list, so layer indices (negative ones too) mean what
    they mean for the live teacher; reading a layer the cache did not store raises an error that
    lists the stored ones.
    """

    feature = "feature"

    def __getitem__(self, index: Any) -> Any:
        value = super().__getitem__(index)
        if value is None:
            stored = [i for i, item in enumerate(tuple(self)) if item is not None]
            raise IndexError(
                f"teacher {self.feature!r} layer {index} is not in the teacher cache (it stores "
                f"layers {stored}); precompute the cache with the distill_config you train with"
            )
        return value


class StoredHidden(StoredLayers):
    """``StoredLayers`` of ``hidden`` states."""

    feature = "hidden"


class StoredAttention(StoredLayers):
    """``StoredLayers`` of ``attention`` maps."""

    feature = "attention"


_LAYER_TYPES = {"hidden": StoredHidden, "attention": StoredAttention}


class TeacherCache:
    """A finished teacher cache folder, opened for reading (arrays are memory-mapped lazily).

    Args:
        path: the ``output_dir`` of ``precompute_teacher_outputs``.

    Raises:
        FileNotFoundError: the folder holds no finished cache (an unfinished one says how to
            resume).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest = self.path / storage.MANIFEST
        if not manifest.exists():
            unfinished = (self.path / storage.RUN_PARAMETERS).exists()
            raise FileNotFoundError(
                f"{str(self.path)!r} holds no finished teacher cache (no {storage.MANIFEST})"
                + (
                    ": its precompute was interrupted; call precompute_teacher_outputs again "
                    "with the same arguments to finish it"
                    if unfinished
                    else ""
                )
            )
        self.manifest = storage.read_json(manifest)
        if self.manifest.get("format") != storage.FORMAT:
            raise ValueError(f"{str(manifest)!r} is not a textbrewer teacher-cache manifest")
        self._arrays: dict[tuple[int, str], np.ndarray] = {}
        self._names = _names_by_teacher(self.manifest)

    # ----------------------------------------------------------------- what it holds
    @property
    def dataset_length(self) -> int:
        """How many examples the cache holds (the dataset's length when it was made)."""
        return self.manifest["dataset_length"]

    @property
    def selection(self) -> list[dict]:
        """Per teacher, the stored ``hidden`` and ``attention`` layers."""
        return self.manifest["selection"]

    @property
    def topk(self) -> int | None:
        """The number of logits kept per row, or ``None`` for full logits."""
        return self.manifest["topk"]

    @property
    def needs_length(self) -> bool:
        """Whether some stored array has a sequence-length axis (fitted to each batch)."""
        return any(info["axes"] for info in self.manifest["arrays"].values())

    def check(
        self,
        dataset_length: int | None = None,
        distill_config: DistillationConfig | None = None,
        dataset_id: str | None = None,
    ) -> None:
        """Refuses a cache made for another dataset length, match configuration or dataset id.

        Args:
            dataset_length: the length of the dataset it will serve.
            distill_config: the settings it will train with: their matches must read exactly
                the stored teacher layers.
            dataset_id: compared with the ``dataset_id`` given to the precompute, if given.

        Raises:
            ValueError: naming the cache's value and the one given.
        """
        where = f"teacher cache {str(self.path)!r}"
        if dataset_length is not None and dataset_length != self.dataset_length:
            raise ValueError(
                f"{where} was made from a dataset of {self.dataset_length} examples, but this "
                f"dataset has {dataset_length}: example indices would not match; precompute again"
            )
        if distill_config is not None:
            wanted = teacher_selection(distill_config, self.manifest["teachers"])
            if fingerprint(wanted) != self.manifest["fingerprint"]:
                raise ValueError(
                    f"{where} was made for another match configuration: it stores "
                    f"[{describe(self.selection)}] (fingerprint {self.manifest['fingerprint']}), "
                    f"but distill_config's intermediate_matches read [{describe(wanted)}] "
                    f"(fingerprint {fingerprint(wanted)}); precompute again with this config"
                )
        recorded = self.manifest.get("dataset_id")
        if dataset_id is not None and dataset_id != recorded:
            raise ValueError(
                f"{where} was made from dataset_id={recorded!r}, but this dataset has "
                f"dataset_id={dataset_id!r}"
            )

    # ----------------------------------------------------------------- reading
    def teacher_outputs(
        self, indices: Sequence[int], length: int | None = None
    ) -> AdaptedOutputs | list[AdaptedOutputs]:
        """The stored adapted results of ``indices``, batched in that order.

        Args:
            indices: example indices (any order, repeats allowed).
            length: the batch's sequence length: arrays with a length axis are cut or
                zero-padded to it (positions past an example's own length are padding, which
                masked losses ignore). ``None`` keeps the stored length, which must then agree
                between the chunks involved.

        Returns:
            One ``AdaptedOutputs`` (the adaptor's result, with ``hidden``/``attention`` as
            ``StoredLayers``), or a list with one per teacher when the cache was made from a
            list of teachers.
        """
        groups = self._groups(indices)
        tensors = {name: self._gather(name, groups, length) for name in self.manifest["arrays"]}
        results = [self._result(teacher, tensors) for teacher in range(self.manifest["teachers"])]
        return results if self.manifest["teacher_list"] else results[0]

    def _groups(self, indices: Sequence[int]) -> dict[int, list[tuple[int, int]]]:
        size, total = self.manifest["chunk_size"], self.dataset_length
        groups: dict[int, list[tuple[int, int]]] = {}
        for position, index in enumerate(indices):
            index = int(index)
            if not 0 <= index < total:
                raise IndexError(
                    f"example index {index} is out of range of the teacher cache ({total} examples)"
                )
            groups.setdefault(index // size, []).append((position, index % size))
        return groups

    def _gather(self, name: str, groups: dict, length: int | None) -> torch.Tensor:
        info = self.manifest["arrays"][name]
        axes = [axis + 1 for axis in info["axes"]]  # after the batch axis
        parts, order = [], []
        for chunk, members in groups.items():
            array = self._array(chunk, name)
            rows = array[[row for _, row in members]]
            if axes and length is not None:
                rows = storage.pad_axes(rows, axes, [length] * len(axes))
            parts.append(rows)
            order.extend(position for position, _ in members)
        shapes = {part.shape[1:] for part in parts}
        if len(shapes) > 1:
            raise ValueError(
                f"teacher cache array {name!r}: the examples were stored with different sequence "
                f"lengths {sorted(shapes)}; give the batch's length (CachedTeacherDataset's "
                "collate finds it in the batch)"
            )
        stacked = np.concatenate(parts) if len(parts) > 1 else parts[0]
        if order != sorted(order):
            stacked = stacked[np.argsort(order, kind="stable")]
        tensor = storage.to_torch(stacked, info["dtype"])
        return tensor.long() if info["key"] == TOPK_INDICES_KEY else tensor

    def _array(self, chunk: int, name: str) -> np.ndarray:
        key = (chunk, name)
        if key not in self._arrays:
            path = storage.chunk_dir(self.path, chunk) / f"{name}.npy"
            self._arrays[key] = np.load(path, mmap_mode="r", allow_pickle=False)
        return self._arrays[key]

    def _result(self, teacher: int, tensors: dict[str, torch.Tensor]) -> AdaptedOutputs:
        names = self._names[teacher]
        result = AdaptedOutputs()
        for key in _LIST_KEYS:
            if key in names:
                result[key] = [tensors[names[key][p]] for p in sorted(names[key])]
        if "inputs_mask" in names:
            result["inputs_mask"] = tensors[names["inputs_mask"][None]]
        for feature, layer_type in _LAYER_TYPES.items():
            count = self.manifest["layers"].get(f"t{teacher}.{feature}")
            if count is None:
                continue
            layers = [None] * count
            for position, name in names[feature].items():
                layers[position] = tensors[name]
            result[feature] = layer_type(layers)
        return result

    def __getstate__(self) -> dict:
        # DataLoader workers get the cache pickled: they reopen the memory maps themselves.
        state = dict(self.__dict__)
        state["_arrays"] = {}
        return state

    def __repr__(self) -> str:
        return (
            f"TeacherCache({str(self.path)!r}, examples={self.dataset_length}, "
            f"teachers={self.manifest['teachers']}, topk={self.topk}, "
            f"stores=[{describe(self.selection)}])"
        )


def _names_by_teacher(manifest: dict) -> list[dict[str, dict[Any, str]]]:
    names: list[dict[str, dict[Any, str]]] = [{} for _ in range(manifest["teachers"])]
    for name, info in manifest["arrays"].items():
        teacher = int(name.split(".", 1)[0][1:])
        names[teacher].setdefault(info["key"], {})[info["position"]] = name
    return names
