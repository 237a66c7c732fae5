"""The KD loss on logits, shared by every distiller: selection, shift, temperature, loss."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import torch

from textbrewer import presets, sparse_kd
from textbrewer._loss_inputs import _logits_mask_misfit
from textbrewer.configurations import DistillationConfig
from textbrewer.distillers._batches import AdaptorResult

LossParts = dict[str, torch.Tensor]
"""Unweighted loss parts by name, as ``compute_loss`` returns them for logging."""

_TemperatureScheduler = Optional[Callable[[torch.Tensor, torch.Tensor, float], Any]]
_Part = tuple[str, torch.Tensor, Any]


def select_rows(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Keeps the rows of (batch, length, classes) logits where ``mask`` (batch, length) is set.

    Returns (selected, classes); 2-D logits and a ``None`` mask pass through unchanged. (The
    selection has a data-dependent size, so on a GPU it waits for the mask's values.)
    """
    if mask is None or logits.dim() != 3:
        return logits
    return logits[mask.bool()]


def probability_shift(logits_T: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A copy of ``logits_T`` with the top class's logit swapped with the true label's.

    Args:
        logits_T: (rows, classes) or (batch, length, classes) teacher logits.
        labels: labels of shape ``logits_T.shape[:-1]``; a label < 0 leaves its row unchanged.
    """
    if labels.shape != logits_T.shape[:-1]:
        raise ValueError(
            f"probability_shift: labels of shape {tuple(labels.shape)} do not fit logits of "
            f"shape {tuple(logits_T.shape)} (expected {tuple(logits_T.shape[:-1])})"
        )
    labels = labels.long().unsqueeze(-1)
    keep = labels < 0
    safe_labels = labels.clamp(min=0)
    top = logits_T.argmax(dim=-1, keepdim=True)
    top_value = logits_T.gather(-1, top)
    label_value = logits_T.gather(-1, safe_labels)
    shifted = logits_T.clone()
    shifted.scatter_(-1, safe_labels, torch.where(keep, label_value, top_value))
    shifted.scatter_(-1, top, torch.where(keep, top_value, label_value))
    return shifted


def _mask_for(masks: list[torch.Tensor] | None, index: int) -> torch.Tensor | None:
    if not masks:
        return None
    return masks[0] if len(masks) == 1 else masks[index]


def check_lengths(results_S: AdaptorResult, results_T: AdaptorResult) -> None:
    """Teacher and student must return as many logits (and masks, labels) as each other."""
    count = len(results_S["logits"])
    if len(results_T["logits"]) != count:
        raise ValueError(
            f"adaptor_T returned {len(results_T['logits'])} logits tensor(s) but adaptor_S "
            f"returned {count}; each student logits tensor is distilled from one teacher's"
        )
    for who, result in (("adaptor_S", results_S), ("adaptor_T", results_T)):
        masks = result.get("logits_mask")
        if masks is not None and len(masks) not in (1, count):
            raise ValueError(
                f"{who} returned {len(masks)} logits_mask tensor(s) for {count} logits tensor(s); "
                "give one mask for all, or one per logits tensor"
            )
    labels = results_S.get("labels")
    if labels is not None and len(labels) != count:
        raise ValueError(
            f"adaptor_S returned {len(labels)} labels tensor(s) for {count} logits tensor(s)"
        )


def check_logits_sides(
    results_S: AdaptorResult, results_T: list[AdaptorResult], names_T: list[str]
) -> None:
    """Raises a ``ValueError`` when some adaptors return ``logits`` and others do not.

    KD needs the logits of both sides; an adaptor that forgets them on one side would otherwise
    silently train without KD. TextBrewer 0.2.x raised here too. Leaving ``logits`` out of every
    adaptor (e.g. a stage that trains on intermediate features only) skips KD.
    """
    sides = {"adaptor_S": "logits" in results_S}
    sides.update((name, "logits" in result) for name, result in zip(names_T, results_T))
    if len(set(sides.values())) < 2:
        return
    with_logits = [name for name, has in sides.items() if has]
    without = [name for name, has in sides.items() if not has]
    raise ValueError(
        f"{', '.join(with_logits)} returned 'logits' but {', '.join(without)} did not, so the "
        "KD loss cannot be computed: return 'logits' from every adaptor for KD, or from none "
        "to train without it"
    )


@dataclasses.dataclass(eq=False)
class KDLoss:
    """Computes ``sum_i KD(logits_S[i], logits_T[i], T_i)`` the way the SPEC orders it.

    Per pair: ``logits_mask`` selection, then the probability shift, then the temperature
    scheduler on that pair, then the KD loss (times the mean squared temperature with
    ``t2_scaling``).

    Built-in losses and schedulers (``supports_logits_mask``) get the whole logits and the mask,
    and average over the kept rows: the same numbers as selecting them, with no shape that
    depends on the mask's values, so a GPU step does not wait for it. That needs one mask for
    both sides: the same tensor from both adaptors (or, on the CPU, equal ones). Otherwise (a
    user-registered loss or scheduler, or different masks) the rows are selected, as 0.2.x does.

    Args:
        loss: a ``KD_LOSS_MAP`` function ``(logits_S, logits_T, temperature)``.
        temperature: the base temperature.
        temperature_scheduler: ``(logits_S, logits_T, base_T) -> T`` or ``None``.
        probability_shift: whether to shift the teacher's probabilities towards the labels.
        t2_scaling: multiply each pair's loss by the mean over its kept rows of ``T²``.
    """

    loss: Callable[..., torch.Tensor]
    temperature: float
    temperature_scheduler: _TemperatureScheduler
    probability_shift: bool
    t2_scaling: bool = False
    # The scheduler's last answer, for logging.
    last_temperature: Any = dataclasses.field(default=None, init=False)
    masks_in_place: bool = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.masks_in_place = _supports_mask(self.loss) and (
            self.temperature_scheduler is None or _supports_mask(self.temperature_scheduler)
        )

    def __call__(
        self,
        logits_S: list[torch.Tensor],
        logits_T: list[torch.Tensor],
        masks_S: list[torch.Tensor] | None,
        masks_T: list[torch.Tensor] | None,
        labels: list[torch.Tensor] | None,
        topk_indices: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Returns the summed KD loss over the logits pairs.

        ``topk_indices`` (a teacher cache made with ``topk``): per pair, the classes of the
        teacher's stored top-k values, which ``logits_T`` then holds; the loss is the top-k
        approximation of ``textbrewer.sparse_kd``.
        """
        if self.probability_shift and labels is None:
            raise ValueError(
                "DistillationConfig `probability_shift`=True needs the true labels: adaptor_S "
                "must return 'labels'"
            )
        total = None
        for index, (student, teacher) in enumerate(zip(logits_S, logits_T)):
            mask_S, mask_T = _mask_for(masks_S, index), _mask_for(masks_T, index)
            check_logits_mask(mask_S, student, "adaptor_S", index)
            check_logits_mask(mask_T, teacher, "adaptor_T", index)
            if topk_indices is not None:
                loss = self._topk_loss(student, teacher, topk_indices[index], mask_S, mask_T)
                total = loss if total is None else total + loss
                continue
            check_same_classes(index, student, teacher, self.loss)
            student, teacher, mask = self._rows(student, teacher, mask_S, mask_T, index)
            if self.probability_shift:
                teacher = probability_shift(teacher, _labels_of_rows(labels[index], mask_S, mask))
            temperature = self._temperature(student, teacher, mask)
            if mask is None:
                loss = self.loss(student, teacher, temperature)
            else:
                loss = self.loss(student, teacher, temperature, logits_mask=mask)
            if self.t2_scaling:
                loss = loss * mean_square(temperature, mask, student)
            total = loss if total is None else total + loss
        return total

    def _rows(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        mask_S: torch.Tensor | None,
        mask_T: torch.Tensor | None,
        index: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(student, teacher, mask for the loss)``: in place when possible, else selected."""
        used_S = mask_S is not None and student.dim() == 3
        used_T = mask_T is not None and teacher.dim() == 3
        if self.masks_in_place and used_S and used_T and _same_mask(mask_S, mask_T):
            return student, teacher, mask_S
        if not self.masks_in_place:
            # A user's function gets float32, as it always did (built-ins upcast per chunk).
            student, teacher = to_float32(student), to_float32(teacher)
        student, teacher = select_rows(student, mask_S), select_rows(teacher, mask_T)
        if (used_S or used_T) and student.shape != teacher.shape:
            raise ValueError(
                f"logits_mask: logits pair {index} keeps {_rows_text(student, used_S)} of the "
                f"student's logits but {_rows_text(teacher, used_T)} of the teacher's; the "
                "student's logits_mask (adaptor_S) and the teacher's (adaptor_T) must keep the "
                "same number of rows, or have the same shape, as the logits they select"
            )
        return student, teacher, None

    def _topk_loss(self, student, values, indices, mask_S, mask_T) -> torch.Tensor:
        """The top-k approximation of ``textbrewer.sparse_kd`` for one pair (rows selected)."""
        # The schedulers and the shift read the teacher's whole distribution, which is not stored.
        for field, value in (
            ("temperature_scheduler", self.temperature_scheduler),
            ("probability_shift", self.probability_shift or None),
        ):
            if value is not None:
                raise ValueError(
                    f"DistillationConfig `{field}` needs the teacher's full logits, but the "
                    "teacher cache stores its top-k logits only; precompute with topk=None"
                )
        student = select_rows(to_float32(student), mask_S)
        values, indices = select_rows(to_float32(values), mask_T), select_rows(indices, mask_T)
        loss = sparse_kd.topk_kd_loss(self.loss, student, values, indices, self.temperature)
        return loss * self.temperature**2 if self.t2_scaling else loss

    def _temperature(self, student: torch.Tensor, teacher: torch.Tensor, mask: Any) -> Any:
        if self.temperature_scheduler is None:
            return self.temperature
        student, teacher = student.detach(), teacher.detach()
        if mask is None:
            temperature = self.temperature_scheduler(student, teacher, self.temperature)
        else:
            temperature = self.temperature_scheduler(
                student, teacher, self.temperature, logits_mask=mask
            )
        if callable(temperature):
            raise TypeError(
                "the temperature scheduler returned a function: it is a builder that needs its "
                "arguments, e.g. temperature_scheduler=['flsw', beta, gamma]"
            )
        self.last_temperature = (
            temperature if mask is None else masked_mean(temperature, mask, student)
        )
        return temperature


def check_same_classes(
    index: int, student: Any, teacher: Any, loss: Any, who_T: str = "adaptor_T"
) -> None:
    """Built-in KD losses compare class by class: both logits need the same number of classes.

    Raises:
        ValueError: naming both shapes and both sizes (different vocabularies, e.g. different
            tokenizers).
    """
    if getattr(loss, "__module__", None) != "textbrewer.losses":
        return  # a user's loss may map vocabularies itself
    if not isinstance(student, torch.Tensor) or not isinstance(teacher, torch.Tensor):
        return
    if student.dim() and teacher.dim() and student.shape[-1] != teacher.shape[-1]:
        raise ValueError(
            f"logits[{index}]: adaptor_S returned shape {tuple(student.shape)}, {who_T} "
            f"{tuple(teacher.shape)}: the student's logits have {student.shape[-1]} classes "
            f"(vocabulary size) and the teacher's {teacher.shape[-1]}; logits-level KD compares "
            "the two distributions class by class, so both need the same classes. A teacher and "
            "a student with different vocabularies (tokenizers) can be matched at the sequence "
            "level (pooled hidden states, [CLS]) instead: drop 'logits' from one adaptor"
        )


def _supports_mask(function: Any) -> bool:
    return getattr(function, "supports_logits_mask", False) is True


def _same_mask(mask_S: torch.Tensor, mask_T: torch.Tensor) -> bool:
    """Whether two masks are known equal without reading a device's memory back."""
    if mask_S is mask_T:
        return True
    if mask_S.shape != mask_T.shape or mask_S.device != mask_T.device:
        return False
    if (mask_S.data_ptr(), mask_S.stride(), mask_S.dtype) == (
        mask_T.data_ptr(),
        mask_T.stride(),
        mask_T.dtype,
    ):
        return True  # views of the same memory
    # On the CPU comparing the values costs no device sync.
    return mask_S.device.type == "cpu" and torch.equal(mask_S != 0, mask_T != 0)


def _rows_text(logits: torch.Tensor, masked: bool) -> str:
    rows = logits.shape[:-1].numel() if logits.dim() > 1 else 1
    how = "selected by its logits_mask" if masked else "without a logits_mask"
    return f"{rows} row(s) ({how}, shape {tuple(logits.shape)})"


def check_logits_mask(
    mask: torch.Tensor | None, logits: torch.Tensor, who: str, index: int
) -> None:
    """A ``logits_mask`` must be (batch, length) for 3-D logits (it is unused for 2-D ones)."""
    if mask is None or logits.dim() != 3:
        return
    misfit = _logits_mask_misfit(mask, logits)
    if misfit:
        raise ValueError(
            f"{who} returned a logits_mask of {misfit} for logits tensor {index} of shape "
            f"{tuple(logits.shape)}: it must be a (batch, length) mask of shape "
            f"{tuple(logits.shape[:-1])}, nonzero at the rows to distil"
        )


def _labels_of_rows(
    labels: torch.Tensor, mask_S: torch.Tensor | None, mask: torch.Tensor | None
) -> torch.Tensor:
    if mask is None:
        return select_rows_of_labels(labels, mask_S)
    if labels.shape != mask.shape:
        return labels  # probability_shift names the shapes
    # Rows outside the mask keep the teacher's logits (a label < 0 means "unchanged").
    return torch.where(mask != 0, labels.long(), -1)


def masked_mean(values: Any, mask: torch.Tensor, logits: torch.Tensor) -> Any:
    """The mean of per-row ``values`` over the rows ``mask`` keeps (numbers pass through)."""
    if not isinstance(values, torch.Tensor) or values.shape != logits.shape[:-1]:
        return values.mean() if isinstance(values, torch.Tensor) else values
    kept = (mask != 0).to(device=values.device, dtype=values.dtype)
    return (values * kept).sum() / kept.sum()


def mean_square(temperature: Any, mask: torch.Tensor | None, logits: torch.Tensor) -> Any:
    """``T²``, or the mean of ``T_n²`` over the kept rows for a per-row temperature."""
    if not isinstance(temperature, torch.Tensor):
        return temperature**2
    square = temperature.detach().square()
    if mask is not None:
        return masked_mean(square, mask, logits)
    return square.mean()


def sum_of_means(losses: list[torch.Tensor]) -> torch.Tensor:
    """``sum(loss.mean() for loss in losses)``: the hard-label term."""
    total = None
    for loss in losses:
        loss = to_float32(loss)
        # The mean of a scalar is the scalar, exactly (and so is its gradient): no operator.
        mean = loss if loss.dim() == 0 else loss.mean()
        total = mean if total is None else total + mean
    return total


def select_rows_of_labels(labels: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Selects the labels of the rows ``select_rows`` keeps: (batch, length) -> (selected,)."""
    if mask is None or labels.dim() != 2:
        return labels
    return labels[mask.bool()]


def to_float32(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in float32 if it is float16/bfloat16, else unchanged (float64 stays exact)."""
    # Under autocast, logits arrive in float16/bfloat16; softmax over a large vocabulary needs
    # float32 to be accurate, and the loss is computed there.
    if tensor.dtype in (torch.float16, torch.bfloat16):
        return tensor.float()
    return tensor


def combine_parts(
    parts: list[tuple[str, Any, Any]],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sums ``weight * loss`` over ``(name, loss, weight)`` in order; returns it with the parts.

    Every present part is added, even with weight 0, so a non-finite part is never hidden.
    """
    if not parts:
        raise ValueError(
            "nothing to train on: the adaptors returned no 'logits' (in both teacher and "
            "student results), no 'losses', and no intermediate match applies"
        )
    total = None
    for _, loss, weight in parts:
        # loss * 1 is loss exactly (and so is its gradient): skip the operator and its backward.
        term = loss if _is_one(weight) else loss * weight
        total = term if total is None else total + term
    return total, {name: loss for name, loss, _ in parts}


def _is_one(weight: Any) -> bool:
    return type(weight) in (int, float) and weight == 1


class DistillationTerms:
    """The KD and hard-label terms of a distiller, with their (scheduled) weights.

    Composed by the distillers (not by ``BasicTrainer``); it is also the stateful part that saves
    the scheduled weights for resuming. The config is read, never written.

    Args:
        config: the distillation settings; its registry names are resolved here, once.
    """

    name = "distillation_terms"

    def __init__(self, config: DistillationConfig) -> None:
        self.config = config
        self.kd_loss = presets.resolve(presets.KD_LOSS_MAP, config.kd_loss_type, "kd_loss_type")
        scheduler = config.temperature_scheduler
        self.kd = KDLoss(
            self.kd_loss,
            config.temperature,
            None
            if scheduler == "none"
            else presets.resolve(presets.TEMPERATURE_SCHEDULER, scheduler, "temperature_scheduler"),
            config.probability_shift,
            getattr(config, "kd_loss_t2_scaling", False),
        )
        self.schedules = {
            field: presets.resolve(presets.WEIGHT_SCHEDULER, name, f"{field}_scheduler")
            for field in ("kd_loss_weight", "hard_label_weight")
            if (name := getattr(config, f"{field}_scheduler")) != "none"
        }
        self.reset()

    def reset(self) -> None:
        """Starts from the configured weights (every ``train()`` call does)."""
        self.kd_loss_weight = self.config.kd_loss_weight
        self.hard_label_weight = self.config.hard_label_weight

    def update(self, fraction_done: float) -> None:
        """Applies the weight schedulers after an optimizer step (``global_step / total``)."""
        for field, schedule in self.schedules.items():
            setattr(self, field, schedule(fraction_done))

    def logged_values(self) -> dict[str, Any]:
        """The weights, and the mean scheduled temperature of the last KD pair (a tensor)."""
        values: dict[str, Any] = self.state_dict()
        temperature = self.kd.last_temperature
        if isinstance(temperature, torch.Tensor):
            values["temperature"] = temperature.detach().float().mean()
        elif temperature is not None:
            values["temperature"] = float(temperature)
        return values

    def state_dict(self) -> dict[str, Any]:
        """The current weights."""
        return {"kd_loss_weight": self.kd_loss_weight, "hard_label_weight": self.hard_label_weight}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores the current weights."""
        self.kd_loss_weight = state["kd_loss_weight"]
        self.hard_label_weight = state["hard_label_weight"]

    def parts(
        self, results_S: AdaptorResult, results_T: AdaptorResult, check_sides: bool = True
    ) -> list[_Part]:
        """``(name, unweighted loss, weight)`` for the KD and hard-label terms that apply.

        With ``check_sides``, logits from only one of the two adaptors raise (see
        ``check_logits_sides``); ``combined_kd_parts`` checks its teachers itself.
        """
        if check_sides:
            check_logits_sides(results_S, [results_T], ["adaptor_T"])
        parts = []
        if "logits" in results_S and "logits" in results_T:
            check_lengths(results_S, results_T)
            kd = self.kd(
                results_S["logits"],
                results_T["logits"],
                results_S.get("logits_mask"),
                results_T.get("logits_mask"),
                results_S.get("labels"),
                results_T.get(sparse_kd.TOPK_INDICES_KEY),
            )
            parts.append(("unweighted_kd_loss", kd, self.kd_loss_weight))
        if "losses" in results_S:
            losses = sum_of_means(results_S["losses"])
            parts.append(("unweighted_hard_label_loss", losses, self.hard_label_weight))
        return parts


class _TermsWeight:
    """A distiller's weight attribute: reads and writes the same-named one of ``self.terms``."""

    def __init__(self, doc: str) -> None:
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, distiller: Any, owner: type | None = None) -> Any:
        return self if distiller is None else getattr(distiller.terms, self.name)

    def __set__(self, distiller: Any, value: float) -> None:
        setattr(distiller.terms, self.name, value)


class UsesDistillationTerms:
    """Gives a distiller ``self.terms`` and the 0.2.x attributes users read from it.

    ``kd_loss_weight`` and ``hard_label_weight`` are the current (possibly scheduled) weights,
    ``kd_loss`` the ``KD_LOSS_MAP`` function, called ``kd_loss(logits_S, logits_T, temperature)``.
    """

    terms: DistillationTerms

    @property
    def kd_loss(self) -> Callable[..., torch.Tensor]:
        """The KD loss function of ``kd_loss_type``."""
        return self.terms.kd_loss

    kd_loss_weight = _TermsWeight("The KD term's current weight.")
    hard_label_weight = _TermsWeight("The hard-label term's current weight.")

    def schedules(self) -> list[DistillationTerms]:
        """The distillation terms, whose weights follow the weight schedulers."""
        return [self.terms]
