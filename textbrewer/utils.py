"""Helpers around a training run: parameter tables, endless data streams and weight init.

- :func:`display_parameters` counts a model's parameters and buffers per module, as a text table and
  as a tree of :class:`ParameterNode`.
- :func:`cycle` turns a re-iterable data source (a list, a ``DataLoader``) into an endless stream,
  which is how step-mode training reads its data.
- :func:`initializer_builder` makes a function for ``module.apply`` that re-initialises the
  weights of linear and embedding layers.
- :func:`set_seed` seeds Python's, numpy's and torch's (CPU and CUDA) global random generators.
"""

from __future__ import annotations

import math
import numbers
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Callable, TypeVar

import numpy as np
import torch
from torch import nn

__all__ = [
    "ParameterNode",
    "cycle",
    "display_parameters",
    "initializer_builder",
    "set_seed",
    "tqdm_print",
]

T = TypeVar("T")

_ROOT_NAME = "model"
_SHARED_MARK = "(shared)"
_BYTES_PER_MIB = 2**20


@dataclass
class ParameterNode:
    """One node of the tree built by :func:`display_parameters`.

    The root is called ``"model"``; every other node is one component of the dotted state-dict keys
    (``"encoder"``, ``"layer"``, ``"0"``, ``"weight"``, ...). A leaf stands for one tensor; an inner
    node sums the values of its subtree.

    Attributes:
        name: The key component, with ``"(shared)"`` appended for a tensor whose storage was already
            counted under an earlier key (tied weights).
        children: The child nodes by name, in the order their keys were first seen.
        count: The number of elements in the subtree; a shared tensor counts 0.
        mib: The memory of those elements in MiB (``numel * element_size / 2**20``); a shared tensor
            counts 0.

    Example:
        >>> node = ParameterNode("bias", count=2, mib=8 / 2**20)
        >>> node.children
        {}
    """

    name: str
    children: dict[str, ParameterNode] = field(default_factory=dict)
    count: int = 0
    mib: float = 0.0


def display_parameters(
    model: nn.Module | Mapping[str, torch.Tensor], max_level: int | None = None
) -> tuple[str, ParameterNode]:
    """Tabulates the number and memory of a model's parameters, module by module.

    The tree has the root ``model`` and one level per component of the dotted keys of
    ``model.state_dict()`` (buffers included), children in the order their keys are first seen.
    Each tensor contributes ``numel`` elements and ``numel * element_size / 2**20`` MiB to its leaf
    and to every node above it. A tensor whose ``data_ptr()`` was already seen (a tied weight)
    counts 0 and its leaf's name gets ``"(shared)"`` appended; empty and meta-device tensors own no
    storage (their ``data_ptr()`` is 0) and are never marked shared, so a model built on the meta
    device can be inspected too.

    The text starts with a newline and a header, then has one row per displayed node in pre-order:
    its label (``'  ' * depth + '--' + name``), element count, share of the root's count and MiB. A
    node with exactly one child above ``max_level`` (at any depth when ``max_level`` is None) shows
    only its label; a node at depth ``max_level`` shows its row and hides its subtree. The label
    column is one wider than the longest displayed label. When the model holds no elements at all,
    every ratio reads 0.00%.

    Args:
        model: A module, read through its ``state_dict()``, or a mapping of names to tensors.
        max_level: The deepest level to display (the root is level 0), or None for all levels.

    Returns:
        The table as a string, and the root of the tree (with the complete tree, whatever
        ``max_level`` is).

    Raises:
        TypeError: If ``model`` is neither a module nor a mapping of ``str`` to tensors, or
            ``max_level`` is not an int or None.
        ValueError: If ``max_level`` is negative.

    Example:
        >>> text, root = display_parameters(nn.Linear(3, 2))
        >>> text.splitlines()[2].split()
        ['--model:', '8', '100.00%', '0.00']
        >>> root.count, root.children["weight"].count, root.children["bias"].count
        (8, 6, 2)
    """
    _check_max_level(max_level)
    root = _build_tree(_named_tensors(model))
    rows = list(_displayed_rows(root, max_level))
    width = 1 + max(len(label) for label, _, _ in rows)
    total = root.count
    lines = [f"{'LAYER NAME':<{width}}\t{'#PARAMS':>15}\t{'RATIO':>10}\t{'MEM(MB)':>8}\n"]
    for label, node, label_only in rows:
        if label_only:
            lines.append(f"{label:{width}}\n")
        else:
            ratio = node.count / total if total else 0.0
            lines.append(
                f"{label + ':':<{width}}\t{node.count:15,d}\t{ratio:>10.2%}\t{node.mib:>8.2f}\n"
            )
    return "\n" + "".join(lines), root


def _check_max_level(max_level: object) -> None:
    if max_level is None:
        return
    if isinstance(max_level, bool) or not isinstance(max_level, numbers.Integral):
        raise TypeError(
            f"`max_level` must be a non-negative int or None, got {max_level!r} "
            f"of type {type(max_level).__name__}"
        )
    if max_level < 0:
        raise ValueError(f"`max_level` must be a non-negative int or None, got {max_level!r}")


def _named_tensors(model: object) -> Mapping[str, torch.Tensor]:
    if isinstance(model, nn.Module):
        return model.state_dict()
    if not isinstance(model, Mapping):
        raise TypeError(
            "`model` must be an nn.Module or a mapping of names to tensors, "
            f"got {type(model).__name__}"
        )
    for name, tensor in model.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise TypeError(
                "`model` as a mapping must map str names to tensors, got "
                f"{name!r} ({type(name).__name__}) -> {type(tensor).__name__}"
            )
    return model


def _build_tree(named_tensors: Mapping[str, torch.Tensor]) -> ParameterNode:
    root = ParameterNode(_ROOT_NAME)
    seen_storages: set[tuple[torch.device, int]] = set()
    for key, tensor in named_tensors.items():
        *parents, leaf_name = key.split(".")
        count, mib = tensor.numel(), tensor.numel() * tensor.element_size() / _BYTES_PER_MIB
        storage = (tensor.device, tensor.data_ptr())
        # Empty and meta-device tensors all report data_ptr() 0 without sharing anything.
        has_storage = count > 0 and storage[1] != 0
        if has_storage and storage in seen_storages:
            count, mib, leaf_name = 0, 0.0, leaf_name + _SHARED_MARK
        if has_storage:
            seen_storages.add(storage)
        node = root
        for name in [*parents, leaf_name]:
            node.count += count
            node.mib += mib
            node = node.children.setdefault(name, ParameterNode(name))
        node.count += count
        node.mib += mib
    return root


def _displayed_rows(
    node: ParameterNode, max_level: int | None, depth: int = 0
) -> Iterator[tuple[str, ParameterNode, bool]]:
    """Yields ``(label, node, label_only)`` for the displayed nodes, in pre-order."""
    label = "  " * depth + "--" + node.name
    above_max_level = max_level is None or depth < max_level
    yield label, node, above_max_level and len(node.children) == 1
    if above_max_level:
        for child in node.children.values():
            yield from _displayed_rows(child, max_level, depth + 1)


def cycle(iterable: Iterable[T]) -> Iterator[T]:
    """Yields the items of ``iterable`` again and again, forever.

    Each pass calls ``iter(iterable)`` afresh and nothing is cached, so a shuffling ``DataLoader``
    reshuffles on every pass and memory stays flat. This is
    ``while True: for x in iterable: yield x`` with one guard: a pass that yields no item at all
    raises ``ValueError``, because an empty data source, or an iterator or generator that a first
    pass has exhausted, would otherwise make the loop spin forever without yielding. Pass a
    re-iterable object (a list, a ``Dataset``, a ``DataLoader``), not an iterator.

    Args:
        iterable: A non-empty object that can be iterated over more than once.

    Yields:
        The items of ``iterable``, pass after pass.

    Raises:
        TypeError: If ``iterable`` cannot be iterated (raised by this call, before any item).
        ValueError: When a pass yields nothing (raised by the ``next()`` that starts that pass).

    Example:
        >>> stream = cycle([1, 2, 3])
        >>> [next(stream) for _ in range(7)]
        [1, 2, 3, 1, 2, 3, 1]
    """
    if not (hasattr(type(iterable), "__iter__") or hasattr(type(iterable), "__getitem__")):
        raise TypeError(f"`iterable` must be iterable, got {type(iterable).__name__}")
    return _cycle(iterable)


def _cycle(iterable: Iterable[T]) -> Iterator[T]:
    passes = 0
    while True:
        passes += 1
        empty_pass = True
        for item in iterable:
            empty_pass = False
            yield item
        if empty_pass:
            raise ValueError(
                f"`iterable` ({type(iterable).__name__}) yielded no items in pass {passes}; "
                "cycle() needs a non-empty object that can be iterated more than once (a list, a "
                "Dataset, a DataLoader), not an empty one or an exhausted iterator or generator"
            )


def initializer_builder(std: float) -> Callable[[nn.Module], None]:
    """Builds a weight initialiser for ``module.apply``.

    The returned ``init(module)`` draws the weights of every ``nn.Linear`` and ``nn.Embedding`` from
    N(0, std²) with the torch RNG and sets ``nn.Linear`` biases to 0; other modules are left as they
    are. An embedding's ``padding_idx`` row is drawn like the others.

    Args:
        std: The standard deviation of the weights, a positive finite number.

    Returns:
        The function to pass to ``module.apply``.

    Raises:
        TypeError: If ``std`` is not a real number.
        ValueError: If ``std`` is not positive and finite.

    Example:
        >>> layer = nn.Linear(4, 3)
        >>> _ = layer.apply(initializer_builder(0.02))
        >>> layer.bias.tolist()
        [0.0, 0.0, 0.0]
    """
    if isinstance(std, bool) or not isinstance(std, numbers.Real):
        raise TypeError(
            f"`std` must be a positive number, got {std!r} of type {type(std).__name__}"
        )
    if not (math.isfinite(std) and std > 0):
        raise ValueError(f"`std` must be a positive finite number, got {std!r}")
    std = float(std)

    def init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            with torch.no_grad():
                module.weight.normal_(mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            with torch.no_grad():
                module.bias.zero_()

    return init


_MAX_SEED = 2**32 - 1  # numpy's legacy global generator takes seeds in [0, 2**32 - 1]


def set_seed(seed: int) -> None:
    """Seeds every global random generator a training run draws from.

    That is Python's ``random`` (``random.shuffle`` orders the cached batches of
    ``is_caching_logits``), numpy's global generator (``MultiTaskDistiller`` draws each step's
    task from it, and so do the augmentations of :mod:`textbrewer.data_utils`), torch's CPU
    generator (weight init, projections, dropout, ``DataLoader`` shuffling without a generator of
    its own) and the generator of every CUDA device (lazily, so it is safe without CUDA).

    It does not make kernels deterministic (see ``torch.use_deterministic_algorithms``) and cannot
    fix Python's hash seed of a running process (set ``PYTHONHASHSEED`` before it starts).

    Args:
        seed: An int in ``[0, 2**32 - 1]``.

    Raises:
        TypeError: If ``seed`` is not an int (a bool is not accepted).
        ValueError: If ``seed`` is outside ``[0, 2**32 - 1]``.

    Example:
        >>> set_seed(0)
        >>> first = (random.random(), float(np.random.rand()), float(torch.rand(1)))
        >>> set_seed(0)
        >>> first == (random.random(), float(np.random.rand()), float(torch.rand(1)))
        True
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(
            f"`seed`={seed!r} must be an int in [0, 2**32 - 1], got {type(seed).__name__}"
        )
    if not 0 <= seed <= _MAX_SEED:
        raise ValueError(
            f"`seed`={seed!r} is out of range: it must be in [0, 2**32 - 1] "
            "(numpy's global generator accepts no other)"
        )
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def tqdm_print(*values: object, sep: str = " ", end: str = "\n", file: object = None) -> None:
    """``print`` that keeps tqdm progress bars intact (use it in callbacks).

    A plain ``print`` while the training progress bar is shown writes into the bar's line and
    leaves a broken bar behind; this prints above the bar (``tqdm.write``) and redraws it.
    Arguments are those of ``print``; ``file`` defaults to standard output.

    Example:
        >>> def callback(model, step):
        ...     tqdm_print(f"step {step}: accuracy 0.91")
    """
    from tqdm.auto import tqdm

    tqdm.write(sep.join(str(value) for value in values), file=file, end=end)
