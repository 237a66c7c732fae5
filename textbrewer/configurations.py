"""``TrainingConfig`` and ``DistillationConfig``: validated, JSON round-trippable settings.

Configs hold names and numbers only (never resolved callables) and are never written to during
training: the runtime values a schedule changes live in the distiller.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Any, ClassVar, TypeVar, Union

import torch

from textbrewer import presets
from textbrewer._compat import checked_ckpt_steps, none_as_no_scheduler
from textbrewer._compiling import check_compile_option
from textbrewer._validation import Problems, check_keys
from textbrewer.matches import IntermediateMatch

ConfigT = TypeVar("ConfigT", bound="_Config")
PathLike = Union[str, "os.PathLike[str]"]

_OPT_LEVELS = ("O0", "O1", "O2", "O3")
_PRECISIONS = ("no", "fp16", "bf16")
AUTO_DEVICE = "auto"
_COUNTS = (
    ("gradient_accumulation_steps", 1),
    ("ckpt_frequency", 1),
    ("ckpt_epoch_frequency", 1),
    ("local_rank", -1),
    ("log_every_n_steps", 1),
)
"""The ``device`` value that means CUDA when available, else the CPU."""


class _Config:
    """Serialisation and printing shared by both configurations (dataclasses)."""

    _json_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_dict(cls: type[ConfigT], dict_object: dict[str, Any]) -> ConfigT:
        """Builds a config from a dict of field values; unknown keys raise, naming the key."""
        if not isinstance(dict_object, dict):
            raise TypeError(
                f"{cls.__name__}.from_dict expects a dict, got {type(dict_object).__name__}"
            )
        check_keys(cls.__name__, dict_object, [field.name for field in dataclasses.fields(cls)])
        return cls(**dict_object)

    @classmethod
    def from_json_file(cls: type[ConfigT], json_file: PathLike) -> ConfigT:
        """Reads a JSON object from ``json_file`` and builds the config with ``from_dict``."""
        with open(json_file, encoding="utf-8") as reader:
            return cls.from_dict(json.load(reader))

    def to_dict(self) -> dict[str, Any]:
        """Returns the fields as plain, JSON-serialisable values (``from_dict`` inverts it)."""
        return {field.name: _plain(getattr(self, field.name)) for field in dataclasses.fields(self)}

    def to_json_file(self, json_file: PathLike) -> None:
        """Writes ``to_dict()`` to ``json_file`` as indented JSON."""
        with open(json_file, "w", encoding="utf-8") as writer:
            json.dump(self.to_dict(), writer, indent=2)
            writer.write("\n")

    def __str__(self) -> str:
        return "\n".join(
            f"{field.name} : {getattr(self, field.name)}" for field in dataclasses.fields(self)
        )


def _plain(value: Any) -> Any:
    if isinstance(value, IntermediateMatch):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (torch.device, os.PathLike)):
        return str(value)
    return value


@dataclasses.dataclass
class TrainingConfig(_Config):
    """Settings of the training session: checkpoints, logging, device, precision, distribution.

    Args:
        gradient_accumulation_steps: micro-batches whose gradients are summed (each loss divided
            by this number) before one optimizer step.
        ckpt_frequency: checkpoints per epoch (epoch mode), evenly spaced.
        ckpt_epoch_frequency: checkpoint only every this many epochs (and always in the last).
        ckpt_steps: in step mode (``train(..., num_steps=N)``), checkpoint every this many
            optimizer steps and at ``num_steps``; required then, ignored in epoch mode. A float
            (argparse ``type=float``) counts by its whole part, as in TextBrewer 0.2.x.
        log_dir: directory for tensorboard scalars; ``None`` disables tensorboard.
        output_dir: where ``gs{step}.pkl`` checkpoints go; created (with parents) when the config
            is built, on rank 0 only.
        device: ``'cuda'``, ``'cpu'``, ``'cuda:1'``, a ``torch.device``, or ``'auto'`` (CUDA when
            ``torch.cuda.is_available()``, else the CPU; decided when the distiller is built). When
            CUDA is asked for explicitly but absent, building a distiller raises (there is no
            silent fallback to CPU: that is what ``'auto'`` is for).
        fp16: mixed precision with float16 autocast and a ``GradScaler`` (``torch.amp``; apex is
            never needed). Same as ``mixed_precision='fp16'``.
        fp16_opt_level: accepted for TextBrewer 0.2.x scripts. With ``fp16=True``: ``'O1'``,
            ``'O2'`` and ``'O3'`` all mean float16 autocast with loss scaling (the weights stay in
            float32, which is what ``O1`` did and the numerically safe form of ``O2``/``O3``);
            ``'O0'`` means full float32, as it did under apex.
        data_parallel: wrap the student (and projections) in ``nn.DataParallel``; prefer DDP.
        local_rank: ``>= 0`` turns on DistributedDataParallel for this process (launch with
            ``torchrun``, which also sets ``RANK``/``WORLD_SIZE``); ``-1`` leaves it off unless
            the process was launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) or
            a process group with more than one process is already initialised.
        mixed_precision: ``None`` (decided by ``fp16``), ``'no'``, ``'fp16'`` or ``'bf16'``
            (bfloat16 autocast, no loss scaling; works on CPU too).
        save_training_state: also write, beside each ``gs{step}.pkl``, a ``gs{step}.state.pt``
            holding everything needed to resume: ``train(..., resume_from=path)``.
        log_every_n_steps: optimizer steps between reading loss values back from the device for
            tensorboard, the progress bar and the non-finite loss check. Every micro-batch's value
            is still logged, with its own index; larger values mean fewer host-device syncs.
        progress_bar: show a tqdm progress bar (rank 0 only).
        eval_steps: also call ``callback(model=..., step=...)`` every this many optimizer steps,
            besides at checkpoints (where it is called as always); ``None``: only at checkpoints.
            An evaluation step is not a checkpoint unless it improves the best metric or stops
            the run early (then ``gs{step}.pkl`` is written, so the best or final model is a file).
        save_total_limit: keep only the last this many ``gs{step}.pkl`` checkpoints (with their
            ``.state.pt``) that this run wrote; older ones are deleted after the new one is
            written. The best checkpoint (``metric_for_best_model``) is kept besides them.
            ``None`` keeps all, as TextBrewer 0.2.x did.
        metric_for_best_model: a key of the metrics dict the callback returns; the checkpoint
            with the best value is tracked, kept, and reported (``TrainResult.best_checkpoint``).
        greater_is_better: whether a larger ``metric_for_best_model`` is better; ``None`` means
            ``True`` unless the metric's name ends in ``'loss'``.
        early_stopping_patience: stop after this many evaluations in a row that do not improve
            ``metric_for_best_model`` (by more than ``early_stopping_threshold``); the step it
            stops at is written as a checkpoint. ``None``: never stop early.
        early_stopping_threshold: how much better than the best a value must be to count as an
            improvement (``>= 0``).
        log_train_scalars: also write ``train/learning_rate`` (``train/learning_rate_{i}`` per
            further param group), ``train/kd_loss_weight``, ``train/hard_label_weight``,
            ``train/temperature`` (with a temperature scheduler), ``train/grad_norm`` and
            ``train/samples_per_second`` to tensorboard, at the optimizer step. ``None`` (the
            default) means: whenever ``log_dir`` is set; ``False`` writes only 0.2.x's
            ``scalar/*`` tags.
        torch_compile: run the student's and the teachers' forwards through ``torch.compile``
            (compiled on the first step, kept for later ones; checkpoints stay the plain
            student's ``state_dict``). ``True`` uses ``torch.compile``'s defaults (inductor); a
            dict gives its keyword arguments (``fullgraph``, ``dynamic``, ``backend``, ``mode``,
            ``options``, ``disable``), e.g. ``{'mode': 'max-autotune'}``. ``False``: eager.

    Example:
        >>> config = TrainingConfig(device="cpu", output_dir=tmp_dir, ckpt_frequency=2)
        >>> config.ckpt_frequency
        2
    """

    gradient_accumulation_steps: int = 1
    ckpt_frequency: int = 1
    ckpt_epoch_frequency: int = 1
    ckpt_steps: int | None = None
    log_dir: str | None = None
    output_dir: str = "./saved_models"
    device: str | torch.device = "cuda"
    fp16: bool = False
    fp16_opt_level: str = "O1"
    data_parallel: bool = False
    local_rank: int = -1
    mixed_precision: str | None = None
    save_training_state: bool = False
    log_every_n_steps: int = 50
    progress_bar: bool = True
    eval_steps: int | None = None
    save_total_limit: int | None = None
    metric_for_best_model: str | None = None
    greater_is_better: bool | None = None
    early_stopping_patience: int | None = None
    early_stopping_threshold: float = 0.0
    log_train_scalars: bool | None = None
    torch_compile: bool | dict[str, Any] = False

    def __post_init__(self) -> None:
        problems = Problems("TrainingConfig")
        # Counts and flags are coerced to int/bool where TextBrewer 0.2.x accepted other forms
        # (2.0 from argparse type=float, numpy scalars, 0/1): see docs/migration.rst.
        for field, minimum in _COUNTS:
            setattr(self, field, problems.whole(field, getattr(self, field), minimum))
        self.ckpt_steps = checked_ckpt_steps(self.ckpt_steps, problems)
        for field in ("log_dir", "output_dir"):
            value = getattr(self, field)
            if not (value is None and field == "log_dir") and not isinstance(
                value, (str, os.PathLike)
            ):
                problems.add(f"`{field}`={value!r} must be a path (str or os.PathLike)")
        self._check_device(problems)
        for field in ("fp16", "data_parallel", "save_training_state", "progress_bar"):
            setattr(self, field, problems.flag(field, getattr(self, field)))
        problems.choice("fp16_opt_level", self.fp16_opt_level, _OPT_LEVELS)
        self._check_precision(problems)
        self._check_lifecycle(problems)
        self._check_compile(problems)
        problems.raise_if_any()
        # Stored as strings so that from_dict(to_dict(config)) == config.
        self.device = str(self.device)
        self.output_dir = os.fspath(self.output_dir)
        if self.log_dir is not None:
            self.log_dir = os.fspath(self.log_dir)
        if isinstance(self.torch_compile, dict):  # a copy: the caller's dict may change later
            self.torch_compile = dict(self.torch_compile)
        if self._is_main_process():
            os.makedirs(self.output_dir, exist_ok=True)

    def _check_device(self, problems: Problems) -> None:
        if isinstance(self.device, torch.device) or self.device == AUTO_DEVICE:
            return
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            problems.add(
                f"`device`={self.device!r} is not a device "
                "(e.g. 'auto', 'cuda', 'cuda:0', 'cpu' or a torch.device)"
            )

    def _check_compile(self, problems: Problems) -> None:
        check_compile_option(problems, self.torch_compile)
        if self.torch_compile not in (False, None) and self.data_parallel is True:
            problems.add(
                f"`torch_compile`={self.torch_compile!r} does not combine with "
                "`data_parallel`=True (nn.DataParallel cannot be compiled): use "
                "DistributedDataParallel (launch with torchrun), or leave torch_compile=False"
            )

    def _check_precision(self, problems: Problems) -> None:
        if self.mixed_precision is None:
            return
        if not problems.choice("mixed_precision", self.mixed_precision, (None, *_PRECISIONS)):
            return
        if self.fp16 is True and self.mixed_precision != "fp16":
            problems.add(
                f"`fp16`=True contradicts `mixed_precision`={self.mixed_precision!r} "
                "(set one of them: fp16=True is mixed_precision='fp16')"
            )

    def _check_lifecycle(self, problems: Problems) -> None:
        for field in ("eval_steps", "save_total_limit", "early_stopping_patience"):
            if getattr(self, field) is not None:
                setattr(self, field, problems.whole(field, getattr(self, field), 1))
        if self.metric_for_best_model is not None and not isinstance(
            self.metric_for_best_model, str
        ):
            problems.add(
                f"`metric_for_best_model`={self.metric_for_best_model!r} must be the name (str) "
                "of a metric the callback returns, or None"
            )
        if self.greater_is_better is not None:
            self.greater_is_better = problems.flag("greater_is_better", self.greater_is_better)
        threshold = self.early_stopping_threshold
        if problems.number("early_stopping_threshold", threshold) and threshold < 0:
            problems.add(
                f"`early_stopping_threshold`={self.early_stopping_threshold!r} must be >= 0"
            )
        if self.log_train_scalars is not None:
            self.log_train_scalars = problems.flag("log_train_scalars", self.log_train_scalars)
        if self.early_stopping_patience is not None and self.metric_for_best_model is None:
            problems.add(
                f"`early_stopping_patience`={self.early_stopping_patience!r} needs "
                "`metric_for_best_model`: the name of the metric whose improvement it watches"
            )
        if self.greater_is_better is not None and self.metric_for_best_model is None:
            warnings.warn(
                "TrainingConfig: `greater_is_better` has no effect without `metric_for_best_model`",
                stacklevel=3,
            )

    def _is_main_process(self) -> bool:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank() == 0
        # Under torchrun, before any process group exists, RANK says who is rank 0.
        return self.local_rank <= 0 and os.environ.get("RANK", "0") == "0"

    @property
    def precision(self) -> str:
        """The resolved precision, one of ``'fp32'``, ``'fp16'`` and ``'bf16'``."""
        if self.mixed_precision in ("fp16", "bf16"):
            return self.mixed_precision
        if self.fp16 and self.fp16_opt_level != "O0":
            return "fp16"
        return "fp32"

    @property
    def writes_train_scalars(self) -> bool:
        """Whether the ``train/*`` tensorboard scalars are written (see ``log_train_scalars``)."""
        if self.log_train_scalars is None:
            return self.log_dir is not None
        return self.log_train_scalars


@dataclasses.dataclass
class DistillationConfig(_Config):
    """Settings of the distillation: the KD loss, its temperature, weights and feature matches.

    Args:
        temperature: divides both logits before the KD loss.
        temperature_scheduler: ``'none'``, a key of ``TEMPERATURE_SCHEDULER`` (``'constant'``), or
            ``[name, *args]`` / ``[name, {kwargs}]`` for builders: ``['flsw', beta, gamma]``,
            ``['cwsm', beta]``.
        hard_label_weight: weight of the sum of the student adaptor's ``losses``.
        hard_label_weight_scheduler: ``'none'`` or a key of ``WEIGHT_SCHEDULER``.
        kd_loss_type: a key of ``KD_LOSS_MAP`` (``'ce'``, ``'mse'``, ``'kl'``, ``'reverse_kl'``,
            ``'jsd'``, ``'bce'``), or ``[name, *args]`` for a loss with options:
            ``['jsd', beta]``.
        kd_loss_weight: weight of the KD loss.
        kd_loss_weight_scheduler: ``'none'`` or a key of ``WEIGHT_SCHEDULER``.
        probability_shift: swap the teacher's top logit with the true label's before KD (needs
            the student adaptor's ``labels``).
        intermediate_matches: list of dicts with keys ``layer_T``, ``layer_S``, ``feature``,
            ``loss``, ``weight`` and optionally ``proj`` and ``teacher`` (the index of the
            teacher a multi-teacher match reads from; see ``IntermediateMatch``). Stored as
            ``IntermediateMatch`` objects.
        kd_loss_t2_scaling: multiply the KD loss by the squared temperature (Hinton et al.), so
            that its gradients keep their size as the temperature changes; with per-row
            temperatures (a scheduler), by the mean of their squares over the kept rows. Off by
            default, as in TextBrewer 0.2.x.
        is_caching_logits: run the teacher once over the data before training and reuse its
            logits every epoch (BasicDistiller and MultiTeacherDistiller, epoch mode).

    Example:
        >>> config = DistillationConfig(temperature=8, intermediate_matches=[
        ...     {"layer_T": 4, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse",
        ...      "weight": 1, "proj": ["linear", 384, 768]}])
        >>> config.intermediate_matches[0].proj
        ['linear', 384, 768, {}]
    """

    temperature: float = 4
    temperature_scheduler: Any = "none"
    hard_label_weight: float = 0
    hard_label_weight_scheduler: str = "none"
    kd_loss_type: str = "ce"
    kd_loss_weight: float = 1
    kd_loss_weight_scheduler: str = "none"
    probability_shift: bool = False
    intermediate_matches: list[IntermediateMatch] | None = None
    is_caching_logits: bool = False
    kd_loss_t2_scaling: bool = False

    def __post_init__(self) -> None:
        problems = Problems("DistillationConfig")
        self.temperature = problems.real("temperature", self.temperature, positive=True)
        self.hard_label_weight = problems.real("hard_label_weight", self.hard_label_weight)
        self.kd_loss_weight = problems.real("kd_loss_weight", self.kd_loss_weight)
        for field in ("hard_label_weight_scheduler", "kd_loss_weight_scheduler"):
            value = none_as_no_scheduler(self, field)
            if value != "none":
                problems.choice(field, value, presets.WEIGHT_SCHEDULER, "WEIGHT_SCHEDULER")
        self._check_kd_loss_type(problems)
        self.kd_loss_t2_scaling = problems.flag("kd_loss_t2_scaling", self.kd_loss_t2_scaling)
        self.probability_shift = problems.flag("probability_shift", self.probability_shift)
        self.is_caching_logits = problems.flag("is_caching_logits", self.is_caching_logits)
        self._check_temperature_scheduler(problems)
        self.intermediate_matches = self._build_matches(problems)
        problems.raise_if_any()

    def _check_kd_loss_type(self, problems: Problems) -> None:
        value = self.kd_loss_type
        if isinstance(value, tuple):
            value = self.kd_loss_type = list(value)
        if not isinstance(value, list):
            problems.choice("kd_loss_type", value, presets.KD_LOSS_MAP, "KD_LOSS_MAP")
            return
        if not value or not isinstance(value[0], str):
            problems.add(f"`kd_loss_type`={value!r} must be a name, or a list [name, *arguments]")
            return
        if problems.choice("kd_loss_type", value[0], presets.KD_LOSS_MAP, "KD_LOSS_MAP"):
            try:  # building it once checks the arguments now rather than on the first step
                presets.KD_LOSS_MAP[value]
            except (TypeError, ValueError) as error:
                problems.add(f"`kd_loss_type`={value!r}: {error}")

    def _check_temperature_scheduler(self, problems: Problems) -> None:
        value = none_as_no_scheduler(self, "temperature_scheduler")
        if isinstance(value, tuple):
            value = self.temperature_scheduler = list(value)
        if value == "none":
            return
        name = value[0] if isinstance(value, list) and value else value
        field = "temperature_scheduler"
        if not isinstance(name, str):
            problems.add(
                f"`{field}`={value!r} must be 'none', a name, or a list [name, *arguments]"
            )
            return
        if not problems.choice(field, name, presets.TEMPERATURE_SCHEDULER, "TEMPERATURE_SCHEDULER"):
            return
        registered = dict.__getitem__(presets.TEMPERATURE_SCHEDULER, name)
        if isinstance(value, str):
            if getattr(registered, "needs_arguments", False):
                problems.add(
                    f"`{field}`={value!r} needs arguments: write it as a list, e.g. "
                    "['flsw', beta, gamma] or ['cwsm', beta]"
                )
            return
        try:  # building it once checks the arguments now rather than on the first step
            presets.TEMPERATURE_SCHEDULER[value]
        except TypeError as error:
            problems.add(f"`{field}`={value!r}: the arguments do not fit {name!r} ({error})")

    def _build_matches(self, problems: Problems) -> list[IntermediateMatch] | None:
        if self.intermediate_matches is None:
            return None
        if not isinstance(self.intermediate_matches, (list, tuple)):
            problems.add(
                f"`intermediate_matches`={self.intermediate_matches!r} must be a list of dicts"
            )
            return None
        matches = []
        for index, match in enumerate(self.intermediate_matches):
            if isinstance(match, IntermediateMatch):
                match = match.to_dict()
            matches.append(IntermediateMatch.from_config(match, index, problems))
        return matches
