"""Where micro-batches come from and which optimizer steps are checkpoints.

Epoch mode, step mode and multi-task sampling are three plans for the same loop. A plan yields
``MicroBatch`` items lazily (so a batch is fetched and post-processed right before its forward, as
in TextBrewer 0.2.x, which fixes the order of random draws) and answers two questions: is this
optimizer step a checkpoint, and is training done. Plans and their sources remember their position,
so a resumed run continues with exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Iterator
from typing import Any, Callable, Optional, Protocol

import numpy as np

from textbrewer.training.checkpoint import capture_rng_state, restore_rng_state

logger = logging.getLogger(__name__)

_Postprocessor = Optional[Callable[[Any], Any]]


@dataclasses.dataclass
class MicroBatch:
    """One micro-batch and where it sits in the schedule."""

    batch: Any
    epoch: int
    starts_epoch: bool
    ends_step: bool


class Plan(Protocol):
    """What the loop asks of a plan (``EpochPlan``, ``StepPlan``).

    Attributes:
        total_steps: optimizer steps the run takes (an int).
        schedule_steps: the weight schedules' denominator, ``steps_per_epoch * num_epochs`` or
            ``num_steps`` with the value as given: a float ``num_epochs``/``num_steps`` keeps
            its fraction here, as in TextBrewer 0.2.x (equal to ``total_steps`` when integral).
        num_epochs: whole passes over the data in epoch mode, ``None`` in step mode.
    """

    total_steps: int
    schedule_steps: float
    num_epochs: int | None

    def micro_batches(self) -> Iterator[MicroBatch]:
        """Yields the remaining micro-batches, lazily."""

    def is_checkpoint(self, global_step: int) -> bool:
        """Whether the optimizer step just taken is a checkpoint."""

    def is_done(self, global_step: int) -> bool:
        """Whether training stops after the optimizer step just taken."""

    def describe(self) -> dict[str, Any]:
        """What must match for a resume to be valid."""

    def state_dict(self) -> dict[str, Any]:
        """This rank's position in the data."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Positions the plan where ``state_dict`` was taken."""


@dataclasses.dataclass
class TaskBatch:
    """A multi-task micro-batch: the sampled task's name and its batch."""

    task: str
    batch: Any


def _set_sampler_epoch(data: Any, epoch: int) -> None:
    # A DistributedSampler reshuffles per epoch only if told the epoch before iter().
    for sampler in (
        getattr(data, "sampler", None),
        getattr(getattr(data, "batch_sampler", None), "sampler", None),
    ):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)


class LoaderPasses:
    """Reads a data source pass after pass (each pass calls ``iter()`` afresh), resumably.

    Args:
        data: any iterable; a ``DataLoader`` with shuffling reshuffles on every pass.
        name: how messages refer to it, e.g. ``"dataloader"``.
        keep_rng: capture the RNG states at every pass start, which ``state_dict`` saves so
            that a resumed pass shuffles alike; a run that never saves its training state
            skips it (about 50 us a pass, which a short pass feels).
    """

    def __init__(self, data: Any, name: str = "dataloader", keep_rng: bool = True) -> None:
        self.data = data
        self.name = name
        self.keep_rng = keep_rng
        self.pass_index = -1
        self.position = 0
        self._rng_at_pass_start: dict[str, Any] | None = None
        self._iterator: Iterator[Any] | None = None

    def start_pass(self, pass_index: int) -> None:
        """Begins pass ``pass_index`` (sets a distributed sampler's epoch, then ``iter()``)."""
        self.pass_index = pass_index
        self.position = 0
        self._rng_at_pass_start = capture_rng_state() if self.keep_rng else None
        _set_sampler_epoch(self.data, pass_index)
        self._iterator = iter(self.data)

    def next_in_pass(self) -> tuple[bool, Any]:
        """Returns ``(True, batch)``, or ``(False, None)`` when the pass is over."""
        if self._iterator is None:
            return False, None
        try:
            batch = next(self._iterator)
        except StopIteration:
            self._iterator = None
            return False, None
        self.position += 1
        return True, batch

    def next_cycled(self) -> Any:
        """Returns the next batch, starting a new pass when one ends (``utils.cycle``)."""
        found, batch = self.next_in_pass()
        if found:
            return batch
        self.start_pass(self.pass_index + 1)
        found, batch = self.next_in_pass()
        if not found:
            raise ValueError(
                f"`{self.name}` yielded no batch in a whole pass; an empty dataset, or an "
                "iterator/generator that an earlier pass exhausted, cannot be cycled"
            )
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The position: pass index, batches read in it, and the RNG state when it began."""
        return {
            "pass_index": self.pass_index,
            "position": self.position,
            "rng": self._rng_at_pass_start,
            "active": self._iterator is not None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Re-enters the saved pass: same RNG, same ``iter()``, then skips the batches read."""
        self.pass_index = state["pass_index"]
        if not state["active"]:
            self.position, self._iterator = state["position"], None
            return
        restore_rng_state(state["rng"])
        self.start_pass(state["pass_index"])
        for _ in range(state["position"]):
            found, _batch = self.next_in_pass()
            if not found:
                raise ValueError(
                    f"cannot resume: `{self.name}` ran out after {self.position} batches of pass "
                    f"{self.pass_index}, but the checkpoint had read {state['position']}; resume "
                    "with the same data"
                )


class CachedPasses:
    """Cached (batch, teacher logits) entries, shuffled in place at every pass start.

    The shuffle uses Python's ``random.shuffle`` on the running order, so orders compound across
    epochs as in TextBrewer 0.2.x.
    """

    def __init__(self, entries: list[Any]) -> None:
        self.entries = entries
        self.order = list(range(len(entries)))
        self.pass_index = -1
        self.position = 0

    def start_pass(self, pass_index: int) -> None:
        """Shuffles the running order and begins pass ``pass_index``."""
        self.pass_index = pass_index
        self.position = 0
        random.shuffle(self.order)

    def next_in_pass(self) -> tuple[bool, Any]:
        """Returns ``(True, entry)``, or ``(False, None)`` when the pass is over."""
        if self.position >= len(self.order):
            return False, None
        entry = self.entries[self.order[self.position]]
        self.position += 1
        return True, entry

    def state_dict(self) -> dict[str, Any]:
        """The running order and the position in it."""
        return {"pass_index": self.pass_index, "position": self.position, "order": self.order}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores the order and position (the cache itself is rebuilt by the distiller)."""
        if len(state["order"]) != len(self.entries):
            raise ValueError(
                f"cannot resume: the checkpoint cached {len(state['order'])} batches, this run "
                f"cached {len(self.entries)}; resume with the same data"
            )
        self.pass_index, self.position = state["pass_index"], state["position"]
        self.order = list(state["order"])


class EpochPlan:
    """Epoch mode: ``num_epochs`` passes, checkpoints at fixed offsets within chosen epochs.

    Args:
        source: a ``LoaderPasses`` or ``CachedPasses``.
        num_epochs: passes over the data; a float runs ``int(num_epochs)`` epochs while the
            weight schedules count ``steps_per_epoch * num_epochs`` steps and the last-epoch
            test is ``epoch + 1 == num_epochs`` (TextBrewer 0.2.x with argparse ``type=float``).
        batches_per_epoch: micro-batches in one pass.
        gradient_accumulation_steps: micro-batches per optimizer step.
        ckpt_frequency: checkpoints per epoch.
        ckpt_epoch_frequency: checkpoint every this many epochs (and in the last).
        postprocess: applied to each batch right after it is read.
    """

    mode = "epoch"

    def __init__(
        self,
        source: LoaderPasses | CachedPasses,
        num_epochs: float,
        batches_per_epoch: int,
        gradient_accumulation_steps: int,
        ckpt_frequency: int,
        ckpt_epoch_frequency: int,
        postprocess: _Postprocessor = None,
    ) -> None:
        self.source = source
        self.given_epochs = num_epochs
        self.num_epochs = int(num_epochs)
        self.accumulation = gradient_accumulation_steps
        self.steps_per_epoch = batches_per_epoch // gradient_accumulation_steps
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"the dataloader has {batches_per_epoch} batches per epoch, fewer than "
                f"`gradient_accumulation_steps`={gradient_accumulation_steps}: no optimizer step "
                "could ever be taken"
            )
        self.total_steps = self.steps_per_epoch * self.num_epochs
        self.schedule_steps = self.steps_per_epoch * num_epochs
        self.offsets = {
            int(self.steps_per_epoch * i / ckpt_frequency) for i in range(ckpt_frequency)
        }
        self.ckpt_epoch_frequency = ckpt_epoch_frequency
        self.postprocess = postprocess
        self.epoch = 0
        self._resumed = False

    def micro_batches(self) -> Iterator[MicroBatch]:
        """Yields every micro-batch of every remaining epoch (leftovers included)."""
        for epoch in range(self.epoch, self.num_epochs):
            self.epoch = epoch
            if not self._resumed:
                self.source.start_pass(epoch)
            self._resumed = False
            while True:
                found, batch = self.source.next_in_pass()
                if not found:
                    break
                index = self.source.position - 1
                if self.postprocess is not None:
                    batch = self.postprocess(batch)
                yield MicroBatch(batch, epoch, index == 0, (index + 1) % self.accumulation == 0)

    def is_checkpoint(self, global_step: int) -> bool:
        """Checkpoint at the epoch offsets, in every ``ckpt_epoch_frequency``-th and last epoch."""
        return self.checkpoints_in_epoch(self.epoch + 1) and (
            global_step % self.steps_per_epoch in self.offsets
        )

    def checkpoints_in_epoch(self, epoch_number: int) -> bool:
        """Whether epoch ``epoch_number`` (1-based) is a multiple of the frequency, or the last.

        "The last" compares with ``num_epochs`` as given, so with a non-integral float no epoch
        is the last one (TextBrewer 0.2.x).
        """
        return epoch_number % self.ckpt_epoch_frequency == 0 or epoch_number == self.given_epochs

    def is_done(self, global_step: int) -> bool:
        """Epoch mode ends when the data does (the last epoch's leftovers still run)."""
        return False

    def describe(self) -> dict[str, Any]:
        """What must match for a resume to be valid."""
        return {"mode": self.mode, "num_epochs": self.num_epochs, "total_steps": self.total_steps}

    def state_dict(self) -> dict[str, Any]:
        """The current epoch and the source's position in it."""
        return {"epoch": self.epoch, "source": self.source.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Positions the plan where the checkpoint was taken."""
        self.epoch = state["epoch"]
        self.source.load_state_dict(state["source"])
        self._resumed = True


class StepPlan:
    """Step mode: an endless stream, checkpoints every ``ckpt_steps`` and at ``num_steps``.

    Args:
        next_batch: returns the next (post-processed) micro-batch, forever.
        state_owner: the object whose ``state_dict``/``load_state_dict`` hold the position.
        num_steps: optimizer steps to train for; a float trains ``int(num_steps)`` steps, saves
            a final checkpoint only when ``global_step == num_steps`` and is the weight
            schedules' denominator as given (TextBrewer 0.2.x).
        ckpt_steps: checkpoint interval in optimizer steps (``int(ckpt_steps)``).
        gradient_accumulation_steps: micro-batches per optimizer step.
    """

    mode = "step"
    num_epochs = None

    def __init__(
        self,
        next_batch: Callable[[], tuple[int, Any]],
        state_owner: Any,
        num_steps: float,
        ckpt_steps: float,
        gradient_accumulation_steps: int,
    ) -> None:
        self.next_batch = next_batch
        self.state_owner = state_owner
        self.given_steps = num_steps
        self.total_steps = int(num_steps)
        self.schedule_steps = num_steps
        self.ckpt_steps = int(ckpt_steps)
        self.accumulation = gradient_accumulation_steps
        self.micro_index = 0

    def micro_batches(self) -> Iterator[MicroBatch]:
        """Yields micro-batches forever; the loop stops at ``num_steps``."""
        while True:
            epoch, batch = self.next_batch()
            self.micro_index += 1
            yield MicroBatch(batch, epoch, False, self.micro_index % self.accumulation == 0)

    def is_checkpoint(self, global_step: int) -> bool:
        """Every ``ckpt_steps`` optimizer steps, and at the last."""
        return global_step % self.ckpt_steps == 0 or global_step == self.given_steps

    def is_done(self, global_step: int) -> bool:
        """Whether ``num_steps`` optimizer steps were taken."""
        return global_step >= self.total_steps

    def describe(self) -> dict[str, Any]:
        """What must match for a resume to be valid."""
        return {"mode": self.mode, "total_steps": self.total_steps}

    def state_dict(self) -> dict[str, Any]:
        """The micro-batch count and the source's position."""
        return {"micro_index": self.micro_index, "source": self.state_owner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Positions the plan where the checkpoint was taken."""
        self.micro_index = state["micro_index"]
        self.state_owner.load_state_dict(state["source"])


class CycledLoader:
    """One data source cycled for step mode, with its post-processor.

    ``keep_rng``: see ``LoaderPasses``.
    """

    def __init__(
        self, data: Any, postprocess: _Postprocessor = None, keep_rng: bool = True
    ) -> None:
        self.passes = LoaderPasses(data, keep_rng=keep_rng)
        self.postprocess = postprocess

    def __call__(self) -> tuple[int, Any]:
        """Returns ``(pass_index, batch)`` for the next micro-batch."""
        batch = self.passes.next_cycled()
        if self.postprocess is not None:
            batch = self.postprocess(batch)
        return self.passes.pass_index, batch

    def state_dict(self) -> dict[str, Any]:
        """The source's position."""
        return self.passes.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Re-enters the saved position."""
        self.passes.load_state_dict(state)


class TaskSampler:
    """Multi-task sampling: one ``numpy.random.choice`` per micro-batch, then that task's batch.

    Args:
        dataloaders: task name -> data source, each cycled.
        tau: task ``k`` is drawn with probability ``n_k**tau / sum_j n_j**tau`` (``n`` =
            ``len(dataloader)``) when every source has a length, else uniformly (``p=None``).
        postprocessors: task name -> post-processor, or ``None``.
        keep_rng: see ``LoaderPasses``.
    """

    def __init__(
        self,
        dataloaders: dict[str, Any],
        tau: float,
        postprocessors: dict[str, _Postprocessor] | None,
        keep_rng: bool = True,
    ) -> None:
        self.names = list(dataloaders)
        self.passes = {
            name: LoaderPasses(data, f"dataloaders[{name!r}]", keep_rng)
            for name, data in dataloaders.items()
        }
        self.postprocessors = postprocessors or {}
        unsized = [name for name in self.names if not hasattr(dataloaders[name], "__len__")]
        self.weights: list[float] | None = None
        if not unsized:
            sizes = [len(dataloaders[name]) ** tau for name in self.names]
            self.weights = [size / sum(sizes) for size in sizes]
        else:
            logger.warning(
                "`tau`=%r is ignored: dataloaders %s have no __len__, so the tasks are drawn "
                "uniformly (numpy.random.choice with p=None), as in TextBrewer 0.2.x",
                tau,
                unsized,
            )

    def __call__(self) -> tuple[int, TaskBatch]:
        """Draws a task, then returns ``(0, TaskBatch(task, batch))``."""
        task = str(np.random.choice(self.names, p=self.weights))
        batch = self.passes[task].next_cycled()
        postprocess = self.postprocessors.get(task)
        if postprocess is not None:
            batch = postprocess(batch)
        return 0, TaskBatch(task, batch)

    def state_dict(self) -> dict[str, Any]:
        """Every task source's position."""
        return {name: passes.state_dict() for name, passes in self.passes.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Re-enters every task source's saved position."""
        for name, passes in self.passes.items():
            passes.load_state_dict(state[name])
