"""The one training loop, shared by every distiller and by ``BasicTrainer``.

A micro-batch flows: plan -> ``train_on_batch`` (forwards, adaptors, ``compute_loss``) -> backward;
every ``gradient_accumulation_steps`` micro-batches: clip, optimizer step, LR schedule, weight
schedules, logging, checkpoint and callback. Subclasses override ``compute_loss`` and, where the
forward differs, ``train_on_batch``; what they add to the session (projection parameters, state to
resume) they return from the small hooks ``extra_param_groups``/``extra_state``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any, Callable

import torch
from torch import nn

from textbrewer import presets
from textbrewer.configurations import DistillationConfig, TrainingConfig
from textbrewer.distillers._batches import AdaptorChecker, AdaptorResult, call_model
from textbrewer.distillers._kd import KDLoss, LossParts, check_lengths, sum_of_means
from textbrewer.training import checkpoint as ckpt
from textbrewer.training.arguments import SINGLE_SOURCE, CallStyle, TrainCall, parse_train_call
from textbrewer.training.engine import Engine, unwrap
from textbrewer.training.loss_log import LossLog
from textbrewer.training.plans import CycledLoader, EpochPlan, LoaderPasses, StepPlan
from textbrewer.training.session import (
    Progress,
    open_log,
    prepare_optimizer,
    resume_training,
    save_training_state,
)

logger = logging.getLogger(__name__)


class AbstractDistiller:
    """The training session and loop; subclasses define the loss.

    Args:
        train_config: training settings.
        distill_config: distillation settings (``None`` for ``BasicTrainer``).
        model_S: the model being trained (the student).
        adaptor_S: ``adaptor_S(batch, model_outputs) -> dict`` for the student.

    Subclass contract:
        * ``train_on_batch(batch, args) -> (total_loss, parts)`` runs the forwards and returns
          ``compute_loss``'s result; it must not call backward or step anything.
        * ``compute_loss(results_S, results_T) -> (total_loss, parts)``: ``parts`` maps names to
          unweighted scalar tensors, logged as ``scalar/<name>``.
        * ``extra_param_groups() -> list[dict]``: optimizer param groups for trainable modules
          other than the student (added to the optimizer when ``train()`` starts).
        * ``extra_modules() -> list[nn.Module]``: those modules (created on ``self.device``), so
          the session can wrap them in DistributedDataParallel (``wrap_extra_modules`` receives
          the wrapped ones).
        * ``extra_state() -> dict`` / ``load_extra_state(state)``: saved with the training state.
    """

    _call_style: CallStyle = SINGLE_SOURCE

    def __init__(
        self,
        train_config: TrainingConfig,
        distill_config: DistillationConfig | None,
        model_S: nn.Module,
        adaptor_S: Any,
    ) -> None:
        if not isinstance(train_config, TrainingConfig):
            raise TypeError(
                f"`train_config` must be a TrainingConfig, got {type(train_config).__name__}"
            )
        if distill_config is not None and not isinstance(distill_config, DistillationConfig):
            raise TypeError(
                "`distill_config` must be a DistillationConfig, "
                f"got {type(distill_config).__name__}"
            )
        check_module("model_S", model_S)
        self.t_config = train_config
        self.d_config = distill_config
        self._engine = Engine(train_config)
        self.device = self._engine.device
        self.model_S = model_S.to(self.device)
        self.adaptor_S = adaptor_S
        self._check_result = AdaptorChecker()
        self.kd_loss_weight = distill_config.kd_loss_weight if distill_config else 0
        self.hard_label_weight = distill_config.hard_label_weight if distill_config else 1
        self._weight_schedules: dict[str, Callable[[float], float]] = {}
        self._saved_modes: list[list[bool]] = []
        self._ddp_modules: list[nn.Module] = []
        if distill_config is not None:
            self._configure_distillation(distill_config)

    # ----------------------------------------------------------------- hooks for subclasses
    def teachers(self) -> list[nn.Module]:
        """The teacher models (kept in eval mode and run without gradients)."""
        return []

    def train_on_batch(self, batch: Any, args: dict[str, Any]) -> tuple[torch.Tensor, LossParts]:
        """Runs the forward passes on one micro-batch and returns ``compute_loss``'s result.

        Args:
            batch: the (post-processed) micro-batch, on the host; it is moved to the device here.
            args: extra keyword arguments for every model forward.

        Returns:
            ``(total_loss, parts)`` as ``compute_loss`` returns them. Nothing is stepped.
        """
        raise NotImplementedError

    def compute_loss(
        self, results_S: AdaptorResult, results_T: Any
    ) -> tuple[torch.Tensor, LossParts]:
        """Combines the adaptors' results into ``(total_loss, unweighted named parts)``."""
        raise NotImplementedError

    def extra_param_groups(self) -> list[dict[str, Any]]:
        """Optimizer param groups of trainable modules besides the student (default: none)."""
        return []

    def extra_modules(self) -> list[nn.Module]:
        """Trainable modules besides the student, for device placement and DDP (default: none)."""
        return []

    def wrap_extra_modules(self, wrapped: list[nn.Module]) -> None:
        """Receives ``extra_modules()`` as the session wrapped them (DDP), or unwrapped again."""

    def extra_state(self) -> dict[str, Any]:
        """State to save for resuming besides the student and optimizer (default: none)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restores what ``extra_state`` returned."""

    # ----------------------------------------------------------------- modes
    def __enter__(self) -> AbstractDistiller:
        self._saved_modes.append(self._set_training_modes())
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._restore_modes(self._saved_modes.pop())

    def _set_training_modes(self) -> list[bool]:
        models = [self.model_S, *self.teachers()]
        previous = [model.training for model in models]
        self.model_S.train()
        for teacher in self.teachers():
            teacher.eval()
        return previous

    def _restore_modes(self, previous: list[bool]) -> None:
        for model, was_training in zip([self.model_S, *self.teachers()], previous):
            model.train(was_training)

    # ----------------------------------------------------------------- the loop
    def train(self, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> None:
        """Trains the student.

        Two call styles are accepted, positionally or by keyword:

        * documented: ``train(optimizer, scheduler, dataloader, num_epochs, num_steps=None,
          callback=None, batch_postprocessor=None, **args)``;
        * TextBrewer 0.2.x: ``train(optimizer, dataloader, num_epochs, scheduler_class=None,
          scheduler_args=None, scheduler=None, max_grad_norm=-1.0, num_steps=None,
          callback=None, batch_postprocessor=None, **args)``.

        Args:
            optimizer: optimizer over the student's parameters; projection param groups are
                added to it when training starts.
            *args: the positional arguments of either style.
            **kwargs: ``scheduler``, ``dataloader``, ``num_epochs``, ``num_steps`` (step mode,
                needs ``ckpt_steps``), ``callback(model=..., step=...)``, ``batch_postprocessor``,
                ``scheduler_class`` with ``scheduler_args`` (built as
                ``scheduler_class(optimizer=optimizer, **scheduler_args)`` after the projection
                groups are added), ``max_grad_norm`` (clip the student's gradients when > 0),
                ``resume_from`` (a ``gs{N}.pkl`` written with ``save_training_state=True``, its
                ``.state.pt``, or the output directory for its latest one); any other keyword is
                passed to every model forward.
        """
        call = parse_train_call(self._call_style, optimizer, args, kwargs)
        plan = self._build_plan(call)
        scheduler = prepare_optimizer(call, self.extra_param_groups())
        self._reset_weights()
        progress = Progress()
        if call.resume_from is not None:
            resume_training(self, call, plan, scheduler, progress)
        log = open_log(self._engine, self.t_config, plan.total_steps, progress.global_step)
        previous_modes = self._set_training_modes()
        try:
            with self._wrapped_for_training():
                self._run(call, plan, scheduler, progress, log)
        finally:
            log.close()
            self._restore_modes(previous_modes)

    def _run(self, call: TrainCall, plan: Any, scheduler: Any, progress: Progress, log: LossLog):
        engine, optimizer = self._engine, call.optimizer
        accumulation = self.t_config.gradient_accumulation_steps
        optimizer.zero_grad()
        for micro in plan.micro_batches():
            if micro.starts_epoch:
                logger.info("Epoch %d/%d", micro.epoch + 1, plan.num_epochs)
                optimizer.zero_grad()
            with engine.gradient_sync(self._ddp_modules, sync=micro.ends_step):
                total, parts = self.train_on_batch(micro.batch, call.model_args)
                engine.backward(total / accumulation)
            log.record(progress.micro_index, progress.global_step + 1, total, parts)
            progress.micro_index += 1
            if not micro.ends_step:
                continue
            stepped = engine.step(optimizer, unwrap(self.model_S).parameters(), call.max_grad_norm)
            if stepped and scheduler is not None:  # a skipped fp16 step keeps the LR where it is
                scheduler.step()
            optimizer.zero_grad()
            progress.global_step += 1
            self._update_weights(progress.global_step / plan.total_steps)
            if log.progress is not None:
                log.progress.update(1)
            if progress.global_step % self.t_config.log_every_n_steps == 0:
                log.flush(engine)
            if plan.is_checkpoint(progress.global_step):
                log.flush(engine)
                self._checkpoint(call, plan, scheduler, progress)
            if plan.is_done(progress.global_step):
                break
        log.flush(engine)
        logger.info("Training done after %d optimizer steps", progress.global_step)

    # ----------------------------------------------------------------- session helpers
    def _build_plan(self, call: TrainCall) -> Any:
        _check_postprocessor(call.batch_postprocessor)
        if call.num_steps is not None:
            return self._step_plan(call, CycledLoader(call.data, call.batch_postprocessor))
        if not hasattr(call.data, "__len__"):
            raise TypeError(
                f"epoch mode needs a `dataloader` with __len__ to place checkpoints; "
                f"{type(call.data).__name__} has none: train with num_steps=... instead"
            )
        return self._epoch_plan(call, LoaderPasses(call.data), len(call.data))

    def _epoch_plan(self, call: TrainCall, source: Any, batches_per_epoch: int) -> EpochPlan:
        config = self.t_config
        return EpochPlan(
            source,
            call.num_epochs,
            batches_per_epoch,
            config.gradient_accumulation_steps,
            config.ckpt_frequency,
            config.ckpt_epoch_frequency,
            call.batch_postprocessor,
        )

    def _step_plan(self, call: TrainCall, source: Any) -> StepPlan:
        if self.t_config.ckpt_steps is None:
            raise ValueError(
                f"training by `num_steps`={call.num_steps} needs TrainingConfig(ckpt_steps=...) "
                "to know when to save checkpoints; it is None"
            )
        return StepPlan(
            source,
            source,
            call.num_steps,
            self.t_config.ckpt_steps,
            self.t_config.gradient_accumulation_steps,
        )

    def _reset_weights(self) -> None:
        config = self.d_config
        if config is None:
            return
        self.kd_loss_weight = config.kd_loss_weight
        self.hard_label_weight = config.hard_label_weight

    def _update_weights(self, fraction_done: float) -> None:
        for name, schedule in self._weight_schedules.items():
            setattr(self, name, schedule(fraction_done))

    @contextlib.contextmanager
    def _wrapped_for_training(self) -> Iterator[None]:
        engine = self._engine
        student, extras = self.model_S, self.extra_modules()
        self.model_S = engine.wrap_trainable(student)
        wrapped = [engine.wrap_trainable(module) for module in extras]
        self.wrap_extra_modules(wrapped)
        self._ddp_modules = [self.model_S, *wrapped]
        try:
            yield
        finally:
            self.model_S = student
            self.wrap_extra_modules(extras)
            self._ddp_modules = []

    def _checkpoint(self, call: TrainCall, plan: Any, scheduler: Any, progress: Progress):
        step = progress.global_step
        path = ckpt.checkpoint_path(self.t_config.output_dir, step)
        if self._engine.is_main:
            ckpt.atomic_save(unwrap(self.model_S).state_dict(), path)
            logger.info("Saved checkpoint %s", path)
        if call.callback is not None:
            call.callback(model=self.model_S, step=step)
            self.model_S.train()
        if self.t_config.save_training_state:
            # Taken after the callback, so random draws an evaluation makes are part of it.
            save_training_state(self, call, plan, scheduler, progress, ckpt.state_path_for(path))

    # ----------------------------------------------------------------- forward helpers
    def _configure_distillation(self, config: DistillationConfig) -> None:
        self._kd = KDLoss(
            _lookup(presets.KD_LOSS_MAP, config.kd_loss_type, "kd_loss_type", "KD_LOSS_MAP"),
            config.temperature,
            _temperature_scheduler(config.temperature_scheduler),
            config.probability_shift,
        )
        for field in ("kd_loss_weight", "hard_label_weight"):
            name = getattr(config, f"{field}_scheduler")
            if name != "none":
                self._weight_schedules[field] = _lookup(
                    presets.WEIGHT_SCHEDULER, name, f"{field}_scheduler", "WEIGHT_SCHEDULER"
                )

    def _logits_and_label_parts(self, results_S: AdaptorResult, results_T: AdaptorResult):
        """``(name, unweighted loss, weight)`` for the KD and hard-label terms that apply."""
        parts = []
        if "logits" in results_S and "logits" in results_T:
            check_lengths(results_S, results_T)
            kd = self._kd(
                results_S["logits"],
                results_T["logits"],
                results_S.get("logits_mask"),
                results_T.get("logits_mask"),
                results_S.get("labels"),
            )
            parts.append(("unweighted_kd_loss", kd, self.kd_loss_weight))
        if "losses" in results_S:
            parts.append(
                (
                    "unweighted_hard_label_loss",
                    sum_of_means(results_S["losses"]),
                    self.hard_label_weight,
                )
            )
        return parts

    def _teacher_outputs(self, model: nn.Module, batch: Any, args: dict[str, Any]) -> Any:
        # Teachers never build a graph; no_grad (not inference_mode) because their outputs
        # are saved for the student's backward by the losses.
        with torch.no_grad():
            return call_model(model, batch, args)

    def _loss_without_autocast(self, results_S: Any, results_T: Any):
        # Losses run in float32 (inputs are cast up in the loss helpers): softmax and sums over
        # large dimensions are not accurate in float16/bfloat16.
        with torch.autocast(self.device.type, enabled=False):
            return self.compute_loss(results_S, results_T)


def check_module(name: str, model: Any) -> None:
    """Raises a ``TypeError`` naming ``name`` unless ``model`` is an ``nn.Module``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"`{name}` must be a torch.nn.Module, got {type(model).__name__}")


def _lookup(registry: dict, name: Any, field: str, registry_name: str) -> Any:
    try:
        return registry[name]
    except KeyError:
        known = ", ".join(repr(key) for key in sorted(registry))
        raise KeyError(
            f"`{field}`={name!r} is not in {registry_name} (known: {known}); was it removed "
            "after the config was built?"
        ) from None


def _temperature_scheduler(value: Any) -> Any:
    if value == "none":
        return None
    return presets.TEMPERATURE_SCHEDULER[value]


def checked_adaptor(name: str, adaptor: Any) -> Any:
    """Returns ``adaptor`` if it is callable, else raises a ``TypeError`` naming it."""
    if not callable(adaptor):
        raise TypeError(
            f"`{name}` must be callable as {name}(batch, model_outputs) -> dict, got {adaptor!r}"
        )
    return adaptor


def _check_postprocessor(postprocessor: Any) -> None:
    if postprocessor is not None and not callable(postprocessor):
        raise TypeError(f"`batch_postprocessor`={postprocessor!r} must be callable(batch) -> batch")
