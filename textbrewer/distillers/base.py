"""The one training loop and the one forward template, shared by every distiller.

A micro-batch flows: plan -> ``train_on_batch`` (route, forwards, adaptors, ``compute_loss``) ->
backward; every ``gradient_accumulation_steps`` micro-batches: clip, optimizer step, LR schedule,
weight schedules, logging, checkpoint and callback. A distiller writes ``compute_loss`` and says
which teachers and adaptors a batch goes through (``teachers``, ``teacher_adaptors``, or
``_route`` when that depends on the batch); what it adds to the session (trainable modules,
state to resume, scheduled weights) it returns from small hooks that default to nothing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from textbrewer._compiling import CompiledForwards, compile_kwargs
from textbrewer.configurations import DistillationConfig, TrainingConfig
from textbrewer.distillers._batches import (
    AdaptedOutputs,
    AdaptorChecker,
    AdaptorResult,
    Route,
    cached_logits_results,
    call_adaptor,
    get_outputs_from_batch,
    teacher_adaptor_names,
)
from textbrewer.distillers._first_batch_checks import first_batch_checks
from textbrewer.distillers._kd import LossParts
from textbrewer.distillers._protocol import batch_result
from textbrewer.training import checkpoint as ckpt
from textbrewer.training import faults
from textbrewer.training.arguments import (
    SINGLE_SOURCE,
    CallStyle,
    TrainCall,
    check_postprocessors,
    parse_train_call,
)
from textbrewer.training.call_checks import check_call
from textbrewer.training.engine import Engine, autocast_enabled, unwrap
from textbrewer.training.plans import CycledLoader, EpochPlan, LoaderPasses, Plan, StepPlan
from textbrewer.training.run_report import TrainResult
from textbrewer.training.session import Session, Stateful, prepare_optimizer

logger = logging.getLogger(__name__)


class AbstractDistiller:
    """The training session, the loop and the forward template; subclasses define the loss.

    Args:
        train_config: training settings.
        distill_config: distillation settings (``None`` for ``BasicTrainer``).
        model_S: the model being trained (the student).
        adaptor_S: ``adaptor_S(batch, model_outputs) -> dict`` for the student.

    Subclass contract:
        * ``compute_loss(results_S, results_T) -> (total_loss, parts)``: ``parts`` maps names to
          unweighted scalar tensors, logged as ``scalar/<name>``.
        * ``teachers() -> list[nn.Module]`` and ``teacher_adaptors() -> list``: the teachers a
          batch goes through, with one adaptor each (``_route(batch)`` when it depends on the
          batch, as in ``MultiTaskDistiller``).
        * ``extra_modules() -> list[nn.Module]``: trainable modules besides the student (created on
          ``self.device``): they get param groups (``extra_param_groups``), are wrapped like the
          student under DDP (call them through ``self.wrapped(module)``) and are saved with the
          training state.
        * ``extra_state() -> dict`` / ``load_extra_state(state)``: other state to resume.
        * ``schedules() -> list``: stateful objects updated after every optimizer step with
          ``update(global_step / total_steps)`` and reset by ``reset()`` when ``train()`` starts.
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
        _check_module("model_S", model_S)
        self.t_config = train_config
        self.d_config = distill_config
        self._engine = Engine(train_config)
        self.device = self._engine.device
        self.model_S = model_S.to(self.device)
        self.adaptor_S = adaptor_S
        self._check_result = AdaptorChecker()
        # Student adaptors (one per MultiTask task) whose first results were checked.
        self._first_batch_checked: set[str] = set()
        self._saved_modes: list[list[bool]] = []
        self._ddp_modules: list[nn.Module] = []
        self._wrappers: dict[int, nn.Module] = {}
        self._student_parameters: list[torch.Tensor] = []
        compile_options = compile_kwargs(train_config.torch_compile)
        self._compiled = None if compile_options is None else CompiledForwards(compile_options)

    # ----------------------------------------------------------------- hooks for subclasses
    def teachers(self) -> list[nn.Module]:
        """The teacher models (kept in eval mode and run without gradients)."""
        return []

    def teacher_adaptors(self) -> list[Any]:
        """One adaptor per teacher, in ``teachers()`` order."""
        return []

    def compute_loss(
        self, results_S: AdaptorResult, results_T: Any
    ) -> tuple[torch.Tensor, LossParts]:
        """Combines the adaptors' results into ``(total_loss, unweighted named parts)``."""
        raise NotImplementedError

    def extra_modules(self) -> list[nn.Module]:
        """Trainable modules besides the student (default: none)."""
        return []

    def extra_param_groups(self) -> list[dict[str, Any]]:
        """Optimizer param groups for ``extra_modules()``: one per module, default options."""
        return [{"params": list(module.parameters())} for module in self.extra_modules()]

    def wrap_extra_modules(self, wrapped: list[nn.Module]) -> None:
        """Receives ``extra_modules()`` as the session wrapped them (DDP), or unwrapped again."""

    def wrapped(self, module: nn.Module) -> nn.Module:
        """``module`` as the session wrapped it (DDP while training), else ``module`` itself."""
        return self._wrappers.get(id(module), module)

    def extra_state(self) -> dict[str, Any]:
        """State to resume besides the modules, optimizer and schedules (default: none)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restores what ``extra_state`` returned."""

    def schedules(self) -> list[Any]:
        """Objects whose values follow the training progress (default: none)."""
        return []

    # ----------------------------------------------------------------- the forward template
    def train_on_batch(self, batch: Any, args: dict[str, Any]) -> tuple[torch.Tensor, LossParts]:
        """Runs the forward passes on one micro-batch and returns ``compute_loss``'s result.

        Args:
            batch: the (post-processed) micro-batch, on the host; it is moved to the device here.
            args: extra keyword arguments for every model forward.

        Returns:
            ``(total_loss, parts)`` as ``compute_loss`` returns them. Nothing is stepped.
        """
        results_S, results_T = self.adapted_outputs(batch, args)
        if not autocast_enabled(self.device.type):  # full precision: no context to enter
            return self.compute_loss(results_S, results_T)
        # Losses run in float32 (the loss helpers cast up): softmax and sums over large
        # dimensions are not accurate in float16/bfloat16.
        with torch.autocast(self.device.type, enabled=False):
            return self.compute_loss(results_S, results_T)

    def adapted_outputs(self, batch: Any, args: dict[str, Any]) -> tuple[AdaptorResult, Any]:
        """The checked adaptor results ``(results_S, results_T)`` of one micro-batch.

        ``results_T`` is one dict, a list of dicts when the batch goes through several teachers,
        or ``None`` without a teacher. Order (it fixes the RNG stream dropout draws from): move
        the teacher batch, teacher forward, move the student batch, student forward,
        ``adaptor_T``, ``adaptor_S``.
        """
        route = self._route(batch)
        if self._engine.autocasts:
            with self._engine.autocast():
                (batch_T, outputs_T), (batch_S, outputs_S) = self._forwards(route, args)
        else:  # full precision: no context manager entered per micro-batch
            (batch_T, outputs_T), (batch_S, outputs_S) = self._forwards(route, args)
        results_T = None
        if outputs_T is not None:
            outputs = outputs_T if route.several else [outputs_T]
            results_T = [
                self._adapt(adaptor, batch_T, output, name)
                for adaptor, output, name in zip(route.adaptors_T, outputs, route.names_T)
            ]
        outputs = call_adaptor(route.adaptor_S, batch_S, outputs_S, route.name_S)
        results_S = self._check_result(outputs, route.name_S)
        if route.cached_logits is not None:
            results_T = cached_logits_results(route.cached_logits, results_S, self.device)
        if results_T is not None and not route.several:
            results_T = results_T[0]
        if route.name_S not in self._first_batch_checked and self.d_config is not None:
            first_batch_checks(self, results_S, results_T)
            self._first_batch_checked.add(route.name_S)
        return results_S, results_T

    def _forwards(self, route: Route, args: dict[str, Any]) -> tuple[tuple[Any, Any], ...]:
        """The teacher and student forwards of ``get_outputs_from_batch`` (compiled if asked)."""
        teachers, student = list(route.teachers), self.model_S
        if self._compiled is not None:
            teachers = [self._compiled.forward_of(teacher) for teacher in teachers]
            student = self._compiled.forward_of(student)
        model_T = (teachers if route.several else teachers[0]) if teachers else None
        return get_outputs_from_batch(
            route.batch,
            self.device,
            model_T,
            student,
            args,
            no_teacher_forward=route.cached_logits is not None,
        )

    def _route(self, batch: Any) -> Route:
        adaptors = self.teacher_adaptors()
        return Route(
            batch,
            self.teachers(),
            adaptors,
            self.adaptor_S,
            several=len(adaptors) > 1,
            names_T=teacher_adaptor_names(len(adaptors)),
        )

    def _adapt(self, adaptor: Any, batch: Any, outputs: Any, name: str) -> AdaptorResult:
        if isinstance(outputs, AdaptedOutputs):  # stored results: the adaptor already ran
            return self._check_result(dict(outputs), name)
        return self._check_result(call_adaptor(adaptor, batch, outputs, name), name)

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
    def train(self, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> TrainResult:
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
                ``resume_from`` (``True``: the latest resumable checkpoint in ``output_dir``;
                ``'auto'``: that one if there is one, else start fresh; or a ``gs{N}.pkl`` written
                with ``save_training_state=True``, its ``.state.pt``, or a directory for its
                latest one); any other keyword is passed to every model forward.

        Returns:
            A ``TrainResult``: global step, last losses, last metrics, best checkpoint.
        """
        call = parse_train_call(self._call_style, optimizer, args, kwargs)
        session = self._open_session(call)
        previous_modes = self._set_training_modes()
        try:
            with self._wrapped_for_training():
                self._run(session)
        except KeyboardInterrupt:
            faults.report_interrupt(session)  # pending scalars written, how to resume logged
            raise
        finally:
            session.close()
            self._restore_modes(previous_modes)
        return session.finish()

    def _open_session(self, call: TrainCall) -> Session:
        student, teachers, extras = unwrap(self.model_S), self.teachers(), self.extra_modules()
        check_call(call, self._call_style.data_name, student, teachers, extras)
        fresh = call.resume_from is None or call.resume_from is False
        faults.prepare_output_dir(self.t_config.output_dir, self._engine.is_main, fresh)
        plan = self._build_plan(call)
        scheduler = prepare_optimizer(call, self.extra_param_groups())
        session = Session(call, plan, scheduler, self._engine, self.t_config)
        session.stateful.update(self._stateful_parts())
        for schedule in self.schedules():
            schedule.reset()
            session.stateful[schedule.name] = schedule
        if call.resume_from is not None:
            session.resume(call.resume_from)
        session.announce(type(self).__name__, unwrap(self.model_S), self.extra_modules())
        session.open_log(self.t_config)
        return session

    def _stateful_parts(self) -> dict[str, Stateful]:
        return {
            "student": unwrap(self.model_S),
            "extra_modules": _ModuleStates(self.extra_modules()),
            "extra": _ExtraState(self),
        }

    def _run(self, session: Session) -> None:
        engine, plan, progress, log = self._engine, session.plan, session.progress, session.log
        if progress.global_step >= plan.total_steps or session.lifecycle.should_stop:
            # Resumed where it ended or stopped early: a restarted job trains no further.
            logger.info("Nothing left to train: the run is at step %d", progress.global_step)
            return
        session.optimizer.zero_grad()
        model_args, monitor = session.call.model_args, session.monitor
        # Decided once per call: without DDP no context manager is entered per micro-batch.
        no_sync = engine.no_sync_factory(self._ddp_modules)
        for micro in plan.micro_batches():
            if micro.starts_epoch:
                logger.info("Epoch %d/%d", micro.epoch + 1, plan.num_epochs)
                session.optimizer.zero_grad()
            if no_sync is None or micro.ends_step:
                total, parts = self._forward_backward(micro.batch, model_args)
            else:  # DDP: accumulate locally, all-reduce only on the step's last micro-batch
                with no_sync():
                    total, parts = self._forward_backward(micro.batch, model_args)
            log.record(progress.micro_index, progress.global_step + 1, total, parts)
            monitor.count(micro.batch)
            progress.micro_index += 1
            if not micro.ends_step:
                continue
            self._optimizer_step(session)
            saves = plan.is_checkpoint(progress.global_step)
            if saves or session.evaluation.is_due(progress.global_step):
                log.flush(engine)
                self._checkpoint(session, saves)
            if plan.is_done(progress.global_step) or session.lifecycle.should_stop:
                break
        log.flush(engine)

    def _forward_backward(self, batch: Any, args: dict[str, Any]) -> tuple[torch.Tensor, LossParts]:
        # A 0.2.x subclass's train_on_batch may return the loss alone.
        total, parts = batch_result(self.train_on_batch(batch, args), type(self).__name__)
        self._engine.backward(total)
        return total, parts

    def _optimizer_step(self, session: Session) -> None:
        engine, progress, optimizer = self._engine, session.progress, session.optimizer
        stepped = engine.step(optimizer, self._student_parameters, session.call.max_grad_norm)
        session.record_step(self._step_values)  # the LR and weights this step used
        if stepped and session.scheduler is not None:  # a skipped fp16 step keeps the LR
            session.scheduler.step()
        optimizer.zero_grad()
        progress.global_step += 1
        for schedule in self.schedules():
            schedule.update(progress.global_step / session.plan.schedule_steps)
        if session.log.progress is not None:
            session.log.progress.update(1)
        if progress.global_step % self.t_config.log_every_n_steps == 0:
            session.log.flush(engine)

    def _checkpoint(self, session: Session, saves: bool) -> None:
        step, lifecycle = session.progress.global_step, session.lifecycle
        path = ckpt.checkpoint_path(self.t_config.output_dir, step)
        if saves:
            self._save_student(path)
        lifecycle.observe(step, session.evaluate(self.model_S, step), path)
        if not saves and lifecycle.needs_checkpoint():  # the best or the final model is a file
            self._save_student(path)
            saves = True
        if not saves:
            return
        lifecycle.record_checkpoint(path)
        if self.t_config.save_training_state:
            # Taken after the callback, so random draws an evaluation makes are part of it.
            session.save(ckpt.state_path_for(path))
        lifecycle.delete_surplus()  # only now that the new files are on disk

    def _save_student(self, path: Any) -> None:
        modules = {"": unwrap(self.model_S)}
        modules.update({f"extra_modules[{i}]": m for i, m in enumerate(self.extra_modules())})
        faults.check_finite_weights(modules, path)
        if self._engine.is_main:
            ckpt.atomic_save(unwrap(self.model_S).state_dict(), path)
            logger.info("Saved checkpoint %s", path)

    def _step_values(self) -> dict[str, Any]:
        values = {"grad_norm": self._engine.last_grad_norm}
        for schedule in self.schedules():
            values.update(getattr(schedule, "logged_values", dict)())
        return values

    # ----------------------------------------------------------------- plans
    def _build_plan(self, call: TrainCall) -> Plan:
        check_postprocessors(call.batch_postprocessor)
        if call.num_steps is not None:
            return self._step_plan(
                call, CycledLoader(call.data, call.batch_postprocessor, self._keeps_rng)
            )
        if not hasattr(call.data, "__len__"):
            raise TypeError(
                f"epoch mode needs a `dataloader` with __len__ to place checkpoints; "
                f"{type(call.data).__name__} has none: train with num_steps=... instead"
            )
        return self._epoch_plan(
            call, LoaderPasses(call.data, keep_rng=self._keeps_rng), len(call.data)
        )

    @property
    def _keeps_rng(self) -> bool:
        # Pass-start RNG states matter only to a saved training state.
        return self.t_config.save_training_state

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

    @contextlib.contextmanager
    def _wrapped_for_training(self) -> Iterator[None]:
        engine = self._engine
        student, extras = self.model_S, self.extra_modules()
        self.model_S = engine.wrap_trainable(student)
        wrapped = [engine.wrap_trainable(module) for module in extras]
        self._wrappers = {id(module): wrapper for module, wrapper in zip(extras, wrapped)}
        self.wrap_extra_modules(wrapped)
        self._ddp_modules = [self.model_S, *wrapped]
        self._student_parameters = list(unwrap(student).parameters())  # clipped: listed once
        try:
            yield
        finally:
            if self._compiled is not None and self.model_S is not student:
                self._compiled.release(self.model_S)  # the DDP wrapper dies with this call
            self.model_S = student
            self._wrappers = {}
            self.wrap_extra_modules(extras)
            self._ddp_modules = []
            self._student_parameters = []


class _ModuleStates:
    """The ``extra_modules()`` as one stateful part (their state dicts, in order)."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self.modules = modules

    def state_dict(self) -> dict[str, Any]:
        return {"modules": [module.state_dict() for module in self.modules]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state["modules"]
        if len(saved) != len(self.modules):
            raise ValueError(
                f"the training state holds {len(saved)} extra module(s) (projections), this "
                f"distiller has {len(self.modules)}; resume with the same matches and modules"
            )
        for module, module_state in zip(self.modules, saved):
            module.load_state_dict(module_state)


class _ExtraState:
    """A distiller's ``extra_state``/``load_extra_state`` hooks as one stateful part."""

    def __init__(self, distiller: AbstractDistiller) -> None:
        self.distiller = distiller

    def state_dict(self) -> dict[str, Any]:
        return self.distiller.extra_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.distiller.load_extra_state(state)


def _check_module(name: str, model: Any) -> None:
    """Raises a ``TypeError`` naming ``name`` unless ``model`` is an ``nn.Module``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"`{name}` must be a torch.nn.Module, got {type(model).__name__}")


def _checked_adaptor(name: str, adaptor: Any) -> Any:
    """Returns ``adaptor`` if it is callable, else raises a ``TypeError`` naming it."""
    if not callable(adaptor):
        raise TypeError(
            f"`{name}` must be callable as {name}(batch, model_outputs) -> dict, got {adaptor!r}"
        )
    return adaptor
