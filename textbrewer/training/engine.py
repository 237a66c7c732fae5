"""Device, precision and distribution decisions, in one place.

The ``Engine`` owns what differs between a CPU run, a CUDA run, mixed precision and
DistributedDataParallel, so the training loop reads the same for all of them: it wraps modules,
opens autocast, scales the loss, and steps the optimizer.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import logging
import os
import sys
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from textbrewer.configurations import AUTO_DEVICE, TrainingConfig

logger = logging.getLogger(__name__)

_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(config: TrainingConfig) -> torch.device:
    """Returns the device to train on.

    ``'auto'`` means CUDA when ``torch.cuda.is_available()``, else the CPU. CUDA asked for by name
    but absent raises: there is no silent fallback.

    Under DDP (``local_rank >= 0``) a CUDA device without an index becomes ``cuda:<local_rank>``.
    """
    if config.device == AUTO_DEVICE:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(config.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"TrainingConfig `device`={config.device!r} asks for CUDA, which is not available "
                "on this machine; pass device='cpu' to train on the CPU, or device='auto' to use "
                "CUDA only where it is available"
            )
        local_rank = config.local_rank if config.local_rank >= 0 else launcher_local_rank()
        if device.index is None and local_rank >= 0:
            device = torch.device("cuda", local_rank)
    return device


def launched_distributed() -> bool:
    """Whether a launcher such as ``torchrun`` started this process as one of several.

    That is ``WORLD_SIZE`` > 1 in the environment, with ``RANK`` or ``LOCAL_RANK`` set.
    """
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return False
    return world_size > 1 and ("RANK" in os.environ or "LOCAL_RANK" in os.environ)


def launcher_local_rank() -> int:
    """``LOCAL_RANK`` of a distributed launch (see ``launched_distributed``), else ``-1``."""
    if not launched_distributed():
        return -1
    try:
        return int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "-1")))
    except ValueError:
        return -1


def _wants_distributed(config: TrainingConfig) -> bool:
    if config.local_rank >= 0:
        return True
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    # torchrun without `local_rank` in the config (SPEC §10, a declared deviation: TextBrewer
    # 0.2.x ran N independent copies that all wrote the same checkpoint files).
    return dist.is_available() and launched_distributed()


def _init_process_group(device: torch.device) -> None:
    if dist.is_initialized():
        return
    missing = [
        name
        for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
        if name not in os.environ
    ]
    if missing:
        raise RuntimeError(
            "distributed training was asked for (TrainingConfig `local_rank`>=0, or WORLD_SIZE>1 "
            "in the environment), but no process group "
            f"is initialised and the environment lacks {missing}: launch with `torchrun` or call "
            "torch.distributed.init_process_group() first"
        )
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if dist.get_backend() == "gloo":
        atexit.register(_destroy_at_exit, dist.group.WORLD)


def _destroy_at_exit(group: Any) -> None:
    """Destroys the gloo process group this library initialised, if it is still the default.

    Left to interpreter finalisation, gloo's worker threads can release tensors after Python has
    begun to shut down, and a run that succeeded then dies with SIGABRT ("terminate called
    without an active exception") and a failed exit status. A group the user initialised is the
    user's to destroy; NCCL groups are left to ``destroy_process_group()`` in the script, as
    torch recommends, because destroying one on a rank whose peers hang could block its exit.
    """
    if dist.is_initialized() and dist.group.WORLD is group:
        gc.collect()  # DDP wrappers caught in reference cycles still hold the group
        dist.destroy_process_group()
        logger.debug("destroyed the gloo process group at exit")


class Engine:
    """Applies a ``TrainingConfig``'s device, precision and distribution settings.

    Args:
        config: the training configuration.
    """

    def __init__(self, config: TrainingConfig) -> None:
        self.device = resolve_device(config)
        self.distributed = _wants_distributed(config)
        if self.distributed:
            _init_process_group(self.device)
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
        self.rank = dist.get_rank() if self.distributed else 0
        if self.distributed and self.rank == 0:
            logger.info(
                "DistributedDataParallel on: %d processes, backend %s",
                dist.get_world_size(),
                dist.get_backend(),
            )
        self.world_size = dist.get_world_size() if self.distributed else 1
        self.data_parallel = config.data_parallel
        self.precision = config.precision
        if self.precision == "fp16" and self.device.type != "cuda":
            logger.warning(
                "fp16 autocast on %s is slow and rarely useful; bf16 is the CPU choice",
                self.device.type,
            )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.scaling = self.scaler.is_enabled()  # fixed for the engine's life: read it once
        self.autocasts = self.precision != "fp32"  # whether the forwards run under autocast
        self.accumulation = config.gradient_accumulation_steps
        self.measure_grad_norm = config.writes_train_scalars
        self.last_grad_norm: torch.Tensor | None = None

    @property
    def is_main(self) -> bool:
        """Whether this process logs, shows progress and writes checkpoints (rank 0)."""
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast for the forward passes (a no-op in full precision)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_AUTOCAST_DTYPES[self.precision])

    def wrap_trainable(self, module: nn.Module) -> nn.Module:
        """Wraps a trained module (student, projections) in DDP or DataParallel, as configured."""
        if self.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)
        if self.data_parallel:
            return nn.DataParallel(module)
        return module

    def gradient_sync(
        self, modules: Iterable[nn.Module], sync: bool
    ) -> contextlib.AbstractContextManager:
        """Skips DDP's all-reduce on non-final micro-batches of an accumulated step."""
        ddp = [m for m in modules if isinstance(m, nn.parallel.DistributedDataParallel)]
        if sync or not ddp:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        for module in ddp:
            stack.enter_context(module.no_sync())
        return stack

    def no_sync_factory(self, modules: Iterable[nn.Module]) -> Any:
        """``gradient_sync(modules, sync=False)`` as a factory, or ``None`` without DDP.

        The loop asks once per ``train()`` call, so a run without DDP enters no context manager
        per micro-batch.
        """
        modules = list(modules)
        if not any(isinstance(m, nn.parallel.DistributedDataParallel) for m in modules):
            return None
        return functools.partial(self.gradient_sync, modules, False)

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagates ``loss / gradient_accumulation_steps``, scaled under fp16."""
        # Without accumulation or scaling the division by 1 and the scaler's pass-through are
        # skipped: x / 1 is x exactly, and each would add an operator (and its backward) per step.
        if self.accumulation != 1:
            loss = loss / self.accumulation
        if self.scaling:
            loss = self.scaler.scale(loss)
        loss.backward()

    def step(
        self,
        optimizer: torch.optim.Optimizer,
        clip_parameters: Iterable[torch.Tensor],
        max_grad_norm: float,
    ) -> bool:
        """Clips (after unscaling), steps the optimizer and updates the scale.

        The gradient norm of ``clip_parameters`` (before clipping, a device tensor) is kept in
        ``last_grad_norm`` when clipping computes it or ``measure_grad_norm`` asks for it.

        Returns:
            Whether the optimizer really stepped: an fp16 step with inf/NaN gradients is skipped,
            and the caller must not advance the LR scheduler then.
        """
        if max_grad_norm > 0:
            if self.scaling:
                self.scaler.unscale_(optimizer)
            self.last_grad_norm = torch.nn.utils.clip_grad_norm_(
                list(clip_parameters), max_grad_norm
            )
        elif self.measure_grad_norm:
            self.scaler.unscale_(optimizer)
            grads = [p.grad for p in clip_parameters if p.grad is not None]
            self.last_grad_norm = _total_norm(grads) if grads else None
        if not self.scaling:
            optimizer.step()
            return True
        # GradScaler.step already syncs to look for infs; reading the scale back costs no more.
        scale_before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= scale_before

    def gather_objects(self, value: object) -> list[object]:
        """Returns ``value`` from every rank, in rank order (``[value]`` when not distributed)."""
        if not self.distributed:
            return [value]
        gathered: list[object] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank."""
        if not self.distributed:
            return flag
        device = self.device if self.device.type == "cuda" else torch.device("cpu")
        tensor = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item())


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` here (a C call, cheap enough per step)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device type
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return torch.is_autocast_enabled()


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    # The 2-norm of all gradients together, on the device (no read-back).
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6: fused per device
        return torch.nn.utils.get_total_norm(grads)
    device = grads[0].device
    norms = [torch.linalg.vector_norm(grad).to(device) for grad in grads]
    return torch.linalg.vector_norm(torch.stack(norms))


def unwrap(module: nn.Module) -> nn.Module:
    """Returns the module inside DataParallel, DistributedDataParallel and torch.compile wrappers.

    So a checkpoint of a student given as ``torch.compile(model)`` holds the plain model's
    ``state_dict`` (no ``_orig_mod.`` key prefixes).
    """
    while True:
        if isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            module = module.module
        elif "_orig_mod" in module._modules and _is_compiled(module):
            module = module._orig_mod
        else:
            return module


def _is_compiled(module: nn.Module) -> bool:
    # Looked up lazily: importing torch._dynamo costs seconds, and a compiled module can only
    # exist once it has been imported.
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    compiled = getattr(eval_frame, "OptimizedModule", None)
    return compiled is not None and isinstance(module, compiled)
