"""Distillation losses: pure tensor functions, reached by name through the preset registries.

Two families share this module:

- KD losses compare the student's and the teacher's logits under a temperature,
  ``loss(logits_S, logits_T, temperature=1)``.
- Intermediate (match) losses compare hidden states or attention scores of one pair of layers,
  optionally restricted to the positions an input mask keeps, ``loss(S, T, mask=None)``.

Every loss returns a 0-dim tensor and is differentiable in the student input. float16 and bfloat16
inputs are computed in float32 (the loss is float32, gradients come back in the inputs' dtype),
float64 stays float64, and an enclosing ``torch.autocast`` has no effect on the math.

Memory: the softmax divergences (``kd_ce_loss``, ``kd_kl_loss``, ``kd_reverse_kl_loss``, the
attention cross-entropies) and the squared errors run through two private autograd functions that
save only their inputs, recompute what backward needs (chunk by chunk for the softmax ones) and
write each gradient into a single preallocated tensor. Masks are applied through broadcasting
views: no mask is ever expanded to the size of the attention tensor. (A KD temperature tensor that
itself requires grad gets its gradient: that case runs the plain, unchunked formula.)

Example:
    >>> import torch
    >>> from textbrewer.losses import kd_kl_loss
    >>> kd_kl_loss(torch.zeros(2, 3), torch.zeros(2, 3), temperature=4)
    tensor(0.)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Callable, NamedTuple, Union

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = [
    "att_ce_loss",
    "att_ce_mean_loss",
    "att_mse_loss",
    "att_mse_sum_loss",
    "cos_loss",
    "fsp_loss",
    "hid_mse_loss",
    "jsd_loss_builder",
    "kd_bce_loss",
    "kd_ce_loss",
    "kd_jsd_loss",
    "kd_kl_loss",
    "kd_mse_loss",
    "kd_reverse_kl_loss",
    "mmd_loss",
    "pkd_loss",
]

# A KD temperature: a number, a 0-dim tensor, or a tensor with one temperature per row of logits.
Temperature = Union[float, torch.Tensor]

# Without a mask, the attention losses treat entries at or below this value as padding (as 0.2.x
# does: BERT-style models add -10000 to the scores of masked keys).
_PADDING_SCORE = -1e-3

# Elements per chunk in the softmax divergences: 1/32 of the input, within these bounds. A chunk's
# handful of temporaries then stays a small fraction of the input (and under 16 MiB each in
# float32), instead of several copies of the whole logits tensor; the lower bound keeps the python
# loop short on small inputs.
_CHUNK_ELEMENTS = 1 << 22
_MIN_CHUNK_ELEMENTS = 1 << 16

# At or below this many elements per input, the KD losses use the plain autograd formula: on
# small tensors the per-operator cost dominates and the chunked functions' extra operators
# (recomputation in backward) cost more than the memory they save (benchmarks/bench_losses.py).
_PLAIN_MAX_ELEMENTS = 1 << 16
# The same for the squared errors, whose memory-lean function pays only on larger inputs.
_PLAIN_MAX_SQUARES = 1 << 20
# Attention softmaxes run over short rows (the keys), where the chunked recomputation costs more
# time than the plain formula at any size that fits in memory comfortably (1.2-1.9x at
# (32, 12, 128, 128), benchmarks/README.md); unmasked squared errors likewise (1.5x). Full-
# precision inputs use the plain formula up to this size (256 MiB in float32), beyond which
# memory, not time, is the bound; low-precision inputs always upcast chunk by chunk.
_PLAIN_MAX_ATTENTION = 1 << 26


# -------------------------------------------------------------------------------------------------
# Small helpers
# -------------------------------------------------------------------------------------------------


def _without_autocast(loss_fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Runs ``loss_fn`` with autocast off on its inputs' device: the math stays full precision."""

    @functools.wraps(loss_fn)
    def wrapper(S, T, *args, **kwargs):
        # Entering the context costs as much as a small operator: skip it when autocast is off.
        if not _any_autocast():
            return loss_fn(S, T, *args, **kwargs)
        device = (S if isinstance(S, torch.Tensor) else S[0]).device.type
        with torch.autocast(device_type=device, enabled=False):
            return loss_fn(S, T, *args, **kwargs)

    return wrapper


def _any_autocast() -> bool:
    """Whether autocast is on for any device (one cheap call, no device lookup)."""
    check = getattr(torch._C, "_is_any_autocast_enabled", None)
    if check is not None:
        return check()
    return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()  # older torch


_FULL_PRECISION = (torch.float32, torch.float64)


def _plain_pays(S: torch.Tensor, T: torch.Tensor, limit: int) -> bool:
    """Whether the plain autograd formula is the better choice for these inputs.

    Up to ``limit`` elements the per-operator cost dominates, and the memory-saving functions'
    extra operators (recomputation in backward) cost more than the memory they save. Beyond it,
    full-precision inputs still take the plain path when their caller says it saves only inputs.
    """
    return S.numel() <= limit


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (low-precision inputs compute in float32)."""
    for tensor in tensors:
        if tensor.dtype is torch.float64:
            return torch.float64
    return torch.float32


def _as(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor.to(dtype)`` without the dispatcher's cost when it already has that dtype."""
    return tensor if tensor.dtype is dtype else tensor.to(dtype)


_PROJECTION_HINT = " (add a projection to the match)"
# Attention maps compare position by position: no projection applies to them.
_HEADS_HINT = (
    "; for different head counts use 'attention_mse_sum' or 'attention_ce_mean', which reduce "
    "the heads first"
)


def _check_same_shape(S: torch.Tensor, T: torch.Tensor, what: str, hint: str = "") -> None:
    """Equal shapes, or a ValueError naming both; ``hint`` says how to fix it where one can."""
    if S.shape != T.shape:
        raise ValueError(
            f"{what}: the student's shape {tuple(S.shape)} differs from the teacher's "
            f"{tuple(T.shape)}; this loss needs equal shapes{hint}"
        )


def _check_position_mask(mask: torch.Tensor, positions: torch.Size, what: str) -> None:
    if mask.shape != positions:
        raise ValueError(
            f"{what}: mask of shape {tuple(mask.shape)} does not match the input positions "
            f"{tuple(positions)} (expected a (batch, length) mask)"
        )


def _attention_mask(
    mask: torch.Tensor, scores: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Views of a (batch, length) mask that broadcast against (batch, *heads, length, length).

    Returns:
        ``(m, m_q, m_k, heads)``: the mask as ``dtype`` (batch, length), its query view
        (batch, 1.., length, 1), its key view (batch, 1.., 1, length), and the number of heads (the
        product of the middle dimensions, 1 for 3-D scores).
    """
    fits = (
        mask.dim() == 2
        and scores.dim() >= 3
        and scores.size(0) == mask.size(0)
        and scores.shape[-2:] == (mask.size(-1), mask.size(-1))
    )
    if not fits:
        raise ValueError(
            f"attention mask of shape {tuple(mask.shape)} does not fit scores of shape "
            f"{tuple(scores.shape)}: expected a (batch, length) mask and (batch, [heads,] length, "
            "length) scores"
        )
    batch, length = mask.shape
    ones = [1] * (scores.dim() - 3)
    m = mask.to(device=scores.device, dtype=dtype)
    m_q = m.reshape(batch, *ones, length, 1)
    m_k = m.reshape(batch, *ones, 1, length)
    return m, m_q, m_k, math.prod(scores.shape[1:-2])


def _row_temperature(
    temperature: Temperature, logits: torch.Tensor, dtype: torch.dtype
) -> Temperature:
    """The temperature as a number, or a tensor that broadcasts over the classes of ``logits``."""
    if not isinstance(temperature, torch.Tensor):
        return temperature
    if temperature.dim() != 0 and temperature.shape != logits.shape[:-1]:
        raise ValueError(
            f"temperature of shape {tuple(temperature.shape)} does not fit logits of shape "
            f"{tuple(logits.shape)}: give a number, a 0-dim tensor, or one temperature per row, "
            f"shape {tuple(logits.shape[:-1])}"
        )
    temperature = temperature.to(device=logits.device, dtype=dtype)
    return temperature if temperature.dim() == 0 else temperature.unsqueeze(-1)


def _pair(tensors: Sequence[torch.Tensor], what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(tensors, torch.Tensor) or len(tensors) != 2:
        raise ValueError(f"{what} must be a pair (a list or tuple) of two tensors")
    return tensors[0], tensors[1]


def _slice_rows(tensor: Temperature | None, start: int, stop: int) -> Temperature | None:
    """Rows ``start:stop`` of a per-row tensor; numbers and broadcast (size-1) tensors unchanged."""
    if not isinstance(tensor, torch.Tensor) or tensor.dim() == 0 or tensor.size(0) == 1:
        return tensor
    return tensor[start:stop]


def _chunk_bounds(tensor: torch.Tensor) -> list[tuple[int, int]]:
    """``(start, stop)`` slices of dim 0, each about 1/32 of ``tensor`` (see above)."""
    per_row = max(1, math.prod(tensor.shape[1:]))
    budget = min(_CHUNK_ELEMENTS, max(_MIN_CHUNK_ELEMENTS, tensor.numel() // 32))
    step = max(1, budget // per_row)
    rows = tensor.size(0)
    return [(start, min(start + step, rows)) for start in range(0, rows, step)]


# -------------------------------------------------------------------------------------------------
# Softmax divergence: the chunked autograd function behind ce / kl / reverse kl / attention ce
# -------------------------------------------------------------------------------------------------


class _DivergenceSpec(NamedTuple):
    """What one chunk of ``_SoftmaxDivergenceSum`` computes (per-row tensors already sliced)."""

    temperature: Temperature
    column_weight: torch.Tensor | None
    floor: float | None
    with_entropy: bool
    dtype: torch.dtype

    def rows(self, start: int, stop: int) -> _DivergenceSpec:
        return self._replace(
            temperature=_slice_rows(self.temperature, start, stop),
            column_weight=_slice_rows(self.column_weight, start, stop),
        )

    def scaled(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.to(self.dtype)
        if isinstance(self.temperature, torch.Tensor) or self.temperature != 1:
            return logits / self.temperature
        return logits

    def weighted(self, values: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``values * w``, w = column_weight times [targets > floor]; ``values`` itself if w = 1."""
        if self.floor is not None:
            values = torch.where(targets <= self.floor, 0.0, values)
        if self.column_weight is not None:
            values = values * self.column_weight
        return values

    def target_distribution(
        self, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(p, log p)`` of ``softmax(targets / T)``; log p only when the entropy term needs it."""
        scaled = self.scaled(targets)
        log_p = torch.log_softmax(scaled, -1) if self.with_entropy else None
        return torch.softmax(scaled, -1), log_p

    @staticmethod
    def log_ratio(log_q: torch.Tensor, log_p: torch.Tensor | None) -> tuple[torch.Tensor, float]:
        """``(base, sign)``, ``e = sign * base``: -log q, or log p - log q (written into log p)."""
        if log_p is None:
            return log_q, -1.0
        return log_p.sub_(log_q), 1.0


class _SoftmaxDivergenceSum(torch.autograd.Function):
    """Σ_rows r · Σ_k w_k p_k e_k, e = log p·[with_entropy] - log q, computed in chunks of rows.

    ``p = softmax(targets / T)`` and ``q = softmax(scores / T)`` along the last dimension, ``r`` is
    ``row_weight`` (broadcast against ``scores.shape[:-1]``) and ``w`` is ``column_weight``
    (broadcast against ``scores``), times ``[targets > floor]`` when ``floor`` is set. Chunks run
    along dim 0, so per-row tensors have the inputs' number of dimensions and a dim 0 of 1 or of
    the inputs' size. Weights are only combined with ``with_entropy=False`` (the cross-entropy); the
    KL form is used unweighted, where the target gradient below is exact.

    Only the inputs are saved; backward recomputes each chunk and writes it into one gradient
    tensor per input that requires grad: ``∂/∂scores = r (q Σ_k w_k p_k - w p) / T`` and
    ``∂/∂targets = r p (w e - Σ_k w_k p_k e_k) / T``.
    """

    @staticmethod
    def forward(ctx, scores, targets, temperature, column_weight, row_weight, floor, with_entropy):
        is_tensor = isinstance(temperature, torch.Tensor)
        ctx.save_for_backward(
            scores, targets, temperature if is_tensor else None, column_weight, row_weight
        )
        ctx.temperature = None if is_tensor else temperature
        ctx.floor, ctx.with_entropy = floor, with_entropy
        spec = _DivergenceSpec(
            temperature, column_weight, floor, with_entropy, _compute_dtype(scores, targets)
        )
        with torch.autocast(device_type=scores.device.type, enabled=False):
            row_values = scores.new_empty(scores.shape[:-1], dtype=spec.dtype)
            for start, stop in _chunk_bounds(scores):
                row_values[start:stop] = _divergence_chunk_rows(
                    scores[start:stop], targets[start:stop], spec.rows(start, stop)
                )
            if row_weight is not None:
                row_values.mul_(row_weight)
            return row_values.sum()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        scores, targets, temperature, column_weight, row_weight = ctx.saved_tensors
        if ctx.temperature is not None:
            temperature = ctx.temperature
        spec = _DivergenceSpec(
            temperature, column_weight, ctx.floor, ctx.with_entropy, grad_output.dtype
        )
        grad_scores = torch.empty_like(scores) if ctx.needs_input_grad[0] else None
        grad_targets = torch.empty_like(targets) if ctx.needs_input_grad[1] else None
        with torch.autocast(device_type=scores.device.type, enabled=False):
            for start, stop in _chunk_bounds(scores):
                scale = grad_output
                if row_weight is not None:
                    scale = scale * _slice_rows(row_weight, start, stop).unsqueeze(-1)
                _divergence_chunk_grads(
                    scores[start:stop], targets[start:stop], spec.rows(start, stop), scale,
                    _slice_rows(grad_scores, start, stop), _slice_rows(grad_targets, start, stop),
                )  # fmt: skip
        return grad_scores, grad_targets, None, None, None, None, None


def _divergence_chunk_rows(
    scores: torch.Tensor, targets: torch.Tensor, spec: _DivergenceSpec
) -> torch.Tensor:
    """One chunk's row values ``Σ_k w_k p_k e_k``, written as the plain formula writes them."""
    log_q = torch.log_softmax(spec.scaled(scores), -1)
    p, log_p = spec.target_distribution(targets)
    base, sign = spec.log_ratio(log_q, log_p)
    rows = (spec.weighted(p, targets) * base).sum(-1)
    return rows if sign > 0 else rows.neg_()


def _divergence_chunk_grads(
    scores: torch.Tensor,
    targets: torch.Tensor,
    spec: _DivergenceSpec,
    scale: torch.Tensor,
    grad_scores: torch.Tensor | None,
    grad_targets: torch.Tensor | None,
) -> None:
    """Writes one chunk's gradients (see ``_SoftmaxDivergenceSum``); ``scale`` = r · g.

    The gradients reaching ``log q`` (``-g w p``) and ``p`` (``g w e``) go through the fused kernels
    autograd itself uses for log_softmax and softmax, so that they equal the plain formula's to the
    last bit or so: the target gradient ``p (g w e - Σ p g w e)`` cancels, and a different rounding
    of that sum would show. Temporaries are dropped as soon as possible (chunk-sized, but several).
    """
    log_q = torch.log_softmax(spec.scaled(scores), -1)
    scaled_targets = spec.scaled(targets)
    p = torch.softmax(scaled_targets, -1)
    need_log_p = grad_targets is not None and spec.with_entropy
    log_p = torch.log_softmax(scaled_targets, -1) if need_log_p else None
    del scaled_targets
    if grad_scores is not None:
        weighted_p = spec.weighted(p, targets)
        # In place unless that would overwrite p while the target gradient still needs it.
        keep_p = weighted_p is p and grad_targets is not None
        grad_log_q = weighted_p * -scale if keep_p else weighted_p.mul_(-scale)
        del weighted_p
        values = torch._log_softmax_backward_data(grad_log_q, log_q, -1, log_q.dtype)
        del grad_log_q
        _write_scaled(values, spec.temperature, grad_scores)
        del values
    if grad_targets is not None:
        base, sign = spec.log_ratio(log_q, log_p)
        grad_p = spec.weighted(base, targets).mul_(sign * scale)
        del base, log_q, log_p
        _write_scaled(
            torch._softmax_backward_data(grad_p, p, -1, p.dtype), spec.temperature, grad_targets
        )


def _write_scaled(values: torch.Tensor, temperature: Temperature, out: torch.Tensor) -> None:
    """``out = values / temperature`` (``values`` is a temporary and may be overwritten)."""
    if out.dtype == values.dtype:
        torch.div(values, temperature, out=out)
    else:
        out.copy_(values.div_(temperature))


def _logits_row_weight(
    logits_mask: torch.Tensor | None, logits: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor | None:
    """0/1 weights (rows,) of the rows of 3-D logits a ``logits_mask`` keeps; ``None`` for none.

    A mask has no effect on 2-D logits (as the distillers' row selection). Rows are kept where the
    mask is nonzero, as ``logits[mask.bool()]`` keeps them; weighting instead of selecting keeps the
    shapes independent of the mask's values, so a GPU never waits for them.
    """
    if logits_mask is None or logits.dim() != 3:
        return None
    if not isinstance(logits_mask, torch.Tensor) or logits_mask.shape != logits.shape[:-1]:
        got = (
            f"of shape {tuple(logits_mask.shape)}"
            if isinstance(logits_mask, torch.Tensor)
            else f"of type {type(logits_mask).__name__}"
        )
        raise ValueError(
            f"logits_mask {got} does not fit logits of shape {tuple(logits.shape)}: expected a "
            f"(batch, length) mask of shape {tuple(logits.shape[:-1])}, nonzero at the rows to keep"
        )
    return (logits_mask != 0).reshape(-1).to(device=logits.device, dtype=dtype)


class _KDRows(NamedTuple):
    """KD inputs as rows: (rows, classes) logits, temperature, row weights and the row count."""

    student: torch.Tensor
    teacher: torch.Tensor
    temperature: Temperature  # a number, a 0-dim tensor, or (rows, 1)
    weight: torch.Tensor | None  # (rows,) 0/1 from logits_mask, or None
    count: int | torch.Tensor  # rows, or the number of kept rows (a tensor: no sync)

    def mean(self, row_values: torch.Tensor) -> torch.Tensor:
        """The mean of per-row values over the kept rows."""
        if self.weight is None:
            return row_values.mean()
        return (row_values * self.weight).sum() / self.count

    def small(self) -> bool:
        """Whether the plain autograd formula pays here (see ``_PLAIN_MAX_ELEMENTS``)."""
        temperature = self.temperature
        if isinstance(temperature, torch.Tensor) and temperature.requires_grad:
            return True  # the temperature gets its gradient from autograd
        return self.student.numel() <= _PLAIN_MAX_ELEMENTS


def _kd_rows(
    logits_S: torch.Tensor,
    logits_T: torch.Tensor,
    temperature: Temperature,
    logits_mask: torch.Tensor | None,
) -> _KDRows:
    _check_same_shape(logits_S, logits_T, "KD logits")
    dtype = _compute_dtype(logits_S, logits_T)
    temperature = _row_temperature(temperature, logits_S, dtype)
    weight = _logits_row_weight(logits_mask, logits_S, dtype)
    classes = logits_S.size(-1)
    if isinstance(temperature, torch.Tensor) and temperature.dim() > 0:
        temperature = temperature.reshape(-1, 1)
    rows = logits_S.reshape(-1, classes).size(0)
    return _KDRows(
        logits_S.reshape(-1, classes),
        logits_T.reshape(-1, classes),
        temperature,
        weight,
        rows if weight is None else weight.sum(),
    )


def _tempered(logits: torch.Tensor, temperature: Temperature, dtype: torch.dtype) -> torch.Tensor:
    logits = _as(logits, dtype)
    if isinstance(temperature, torch.Tensor) or temperature != 1:
        return logits / temperature
    return logits


def _softmax_divergence(
    scores: torch.Tensor,
    targets: torch.Tensor,
    temperature: Temperature,
    with_entropy: bool,
    logits_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over rows of Σ_c p (log p·[with_entropy] - log q); p from targets, q from scores."""
    if _small_and_simple(scores, targets, temperature, logits_mask):
        return _small_divergence(scores, targets, temperature, with_entropy, logits_mask)
    rows = _kd_rows(scores, targets, temperature, logits_mask)
    if rows.small():
        return rows.mean(_plain_divergence_rows(rows, with_entropy))
    total = _SoftmaxDivergenceSum.apply(
        rows.student, rows.teacher, rows.temperature, None, rows.weight, None, with_entropy
    )
    return total / rows.count


def _small_and_simple(
    logits_S: torch.Tensor,
    logits_T: torch.Tensor,
    temperature: Temperature,
    logits_mask: torch.Tensor | None,
) -> bool:
    """The common small case: one number as temperature, equal full-precision inputs."""
    return (
        not isinstance(temperature, torch.Tensor)
        and logits_S.numel() <= _PLAIN_MAX_ELEMENTS
        and logits_S.shape == logits_T.shape
        and logits_S.dtype == logits_T.dtype
        and logits_S.dtype in _FULL_PRECISION
    )


def _small_divergence(
    scores: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    with_entropy: bool,
    logits_mask: torch.Tensor | None,
) -> torch.Tensor:
    """The divergence in as few operators as autograd allows (each costs more than its math here).

    A sum divided by the row count instead of a per-row sum then a mean, and ``kl_div`` for the
    entropy term: equal to the written-out formula up to float rounding.
    """
    weight = _logits_row_weight(logits_mask, scores, scores.dtype)
    # Nested calls rather than named temporaries: each intermediate is freed as soon as it is used.
    if not with_entropy:
        p = torch.softmax(_divided(targets, temperature), -1)
        terms = p * torch.log_softmax(_divided(scores, temperature), -1)
        sign = -1
    else:
        log_p = torch.log_softmax(_divided(targets, temperature), -1)
        log_q = torch.log_softmax(_divided(scores, temperature), -1)
        if weight is None:
            return F.kl_div(log_q, log_p, reduction="sum", log_target=True) / _rows(scores)
        terms = F.kl_div(log_q, log_p, reduction="none", log_target=True)
        sign = 1
    if weight is None:
        return terms.sum() / (sign * _rows(scores))
    return (terms.sum(-1) * weight.view(scores.shape[:-1])).sum() / (sign * weight.sum())


def _rows(logits: torch.Tensor) -> int:
    return logits.numel() // max(1, logits.size(-1))


def _divided(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits if temperature == 1 else logits / temperature


def _plain_divergence_rows(rows: _KDRows, with_entropy: bool) -> torch.Tensor:
    """Per-row divergences with plain autograd, through torch's fused losses.

    ``cross_entropy`` with probability targets is ``-Σ p log_softmax(scores)`` in one operator and
    ``kl_div`` with a log target is ``Σ p (log p - log q)``: fewer operators than the formula
    written out, so that small inputs (where each operator's fixed cost dominates) are not slower.
    """
    dtype = _compute_dtype(rows.student, rows.teacher)
    scores = _tempered(rows.student, rows.temperature, dtype)
    targets = _tempered(rows.teacher, rows.temperature, dtype)
    if not with_entropy:
        return F.cross_entropy(scores, torch.softmax(targets, -1), reduction="none")
    log_q, log_p = torch.log_softmax(scores, -1), torch.log_softmax(targets, -1)
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)


# -------------------------------------------------------------------------------------------------
# Squared error: the autograd function behind the mse-type losses
# -------------------------------------------------------------------------------------------------


def _difference(student: torch.Tensor, teacher: torch.Tensor, floor: float | None) -> torch.Tensor:
    """A new tensor ``S' - T'`` in the compute dtype; S', T' have entries <= floor set to 0."""
    dtype = _compute_dtype(student, teacher)
    if floor is None:
        return student.to(dtype, copy=True).sub_(teacher)
    difference = torch.where(student <= floor, 0.0, _as(student, dtype))
    return difference.sub_(torch.where(teacher <= floor, 0.0, teacher))


def _zero_padding_(values: torch.Tensor, source: torch.Tensor, floor: float | None):
    return values if floor is None else values.masked_fill_(source <= floor, 0)


def _squares_bounds(S: torch.Tensor) -> list[tuple[int, int]]:
    """``(start, stop)`` pieces of dim 0 for ``_SquaredErrorSum``.

    Full-precision inputs in one piece (fastest); low-precision ones in chunks of rows, so the
    float32 temporaries stay a fraction of the input instead of a float32 copy of it.
    """
    if S.dtype in _FULL_PRECISION or S.dim() == 0 or S.numel() == 0:
        return [(0, S.size(0) if S.dim() else 1)]
    return _chunk_bounds(S)


class _SquaredErrorSum(torch.autograd.Function):
    """Σ (S' - T')² · row_weight · column_weight, saving only its inputs.

    ``S'``, ``T'`` are the inputs with entries ``<= floor`` set to 0 when ``floor`` is set; the
    weights broadcast against the inputs (which have equal shapes; a weight's dim 0 is 1 or the
    inputs'). Forward holds one temporary the size of the input (of a chunk, for low-precision
    inputs); backward recomputes the difference and turns it, in place, into the gradient
    ``2 g (S' - T') · weights · [S > floor]`` (negated and masked by T for the teacher).
    """

    @staticmethod
    def forward(ctx, S, T, row_weight, column_weight, floor):
        ctx.save_for_backward(S, T, row_weight, column_weight)
        ctx.floor = floor
        total = None
        with torch.autocast(device_type=S.device.type, enabled=False):
            for start, stop in _squares_bounds(S):
                squares = _difference(S[start:stop], T[start:stop], floor).square_()
                for weight in (row_weight, column_weight):
                    if weight is not None:
                        squares.mul_(_slice_rows(weight, start, stop))
                part = squares.sum()
                total = part if total is None else total + part
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        S, T, row_weight, column_weight = ctx.saved_tensors
        need_S, need_T = ctx.needs_input_grad[:2]
        bounds = _squares_bounds(S)
        whole = len(bounds) == 1
        grad_S = None if whole or not need_S else torch.empty_like(S)
        grad_T = None if whole or not need_T else torch.empty_like(T)
        with torch.autocast(device_type=S.device.type, enabled=False):
            for start, stop in bounds:
                piece_S, piece_T = S[start:stop], T[start:stop]
                grad = _difference(piece_S, piece_T, ctx.floor).mul_(2 * grad_output)
                for weight in (row_weight, column_weight):
                    if weight is not None:
                        grad.mul_(_slice_rows(weight, start, stop))
                if need_T:
                    value_T = _zero_padding_(grad.neg(), piece_T, ctx.floor)
                    if whole:
                        grad_T = value_T.to(T.dtype)
                    else:
                        grad_T[start:stop].copy_(value_T)
                if need_S:
                    value_S = _zero_padding_(grad, piece_S, ctx.floor)
                    if whole:
                        grad_S = value_S.to(S.dtype)
                    else:
                        grad_S[start:stop].copy_(value_S)
        return grad_S, grad_T, None, None, None


# -------------------------------------------------------------------------------------------------
# KD losses
# -------------------------------------------------------------------------------------------------


def _kd_objective(loss_fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Marks a built-in KD loss: the distillers hand it ``logits_mask`` instead of selecting rows.

    (A function registered by a user gets the selected rows, as in TextBrewer 0.2.x.)
    """
    loss_fn.supports_logits_mask = True
    return loss_fn


@_kd_objective
@_without_autocast
def kd_ce_loss(
    logits_S: torch.Tensor,
    logits_T: torch.Tensor,
    temperature: Temperature = 1,
    logits_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft cross-entropy between the teacher's and the student's tempered distributions.

    ``mean_rows( -Σ_c softmax(l_T / T)_c · log_softmax(l_S / T)_c )``, rows being every leading
    position. Large inputs are computed in chunks of rows: beyond its inputs it allocates little
    more than the student's gradient, whatever the vocabulary size; small ones (where that does
    not pay) with the plain formula.

    Args:
        logits_S: student logits, (batch, classes) or (batch, length, classes).
        logits_T: teacher logits, same shape.
        temperature: a number, a 0-dim tensor, or one temperature per row, shape
            ``logits_S.shape[:-1]``.
        logits_mask: optional (batch, length) mask of 3-D logits: the mean runs over the rows
            where it is nonzero (the same number as selecting those rows first, without a
            data-dependent shape); no effect on 2-D logits.

    Returns:
        The loss, a 0-dim tensor (float32 for low-precision inputs).

    Raises:
        ValueError: the shapes of the logits differ, or the temperature or ``logits_mask`` has
            another shape.
    """
    return _softmax_divergence(logits_S, logits_T, temperature, False, logits_mask)


@_kd_objective
@_without_autocast
def kd_kl_loss(
    logits_S: torch.Tensor,
    logits_T: torch.Tensor,
    temperature: Temperature = 1,
    logits_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Forward KL divergence KL(p_T || p_S) of the tempered distributions, mean over rows.

    ``mean_rows( Σ_c p_T,c · (log p_T,c - log p_S,c) )`` with ``p_X = softmax(l_X / T)``: the
    cross-entropy of ``kd_ce_loss`` minus the teacher's entropy, so it has the same gradient in the
    student and is 0 when the two logits are equal. Chunked like ``kd_ce_loss``.

    Args:
        logits_S: student logits, (batch, classes) or (batch, length, classes).
        logits_T: teacher logits, same shape.
        temperature: a number, a 0-dim tensor, or one temperature per row, shape
            ``logits_S.shape[:-1]``.
        logits_mask: optional (batch, length) mask of 3-D logits: the mean runs over the rows
            where it is nonzero (the same number as selecting those rows first, without a
            data-dependent shape); no effect on 2-D logits.

    Returns:
        The loss, a 0-dim tensor (float32 for low-precision inputs).

    Raises:
        ValueError: the shapes of the logits differ, or the temperature or ``logits_mask`` has
            another shape.
    """
    return _softmax_divergence(logits_S, logits_T, temperature, True, logits_mask)


@_kd_objective
@_without_autocast
def kd_reverse_kl_loss(
    logits_S: torch.Tensor,
    logits_T: torch.Tensor,
    temperature: Temperature = 1,
    logits_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reverse KL divergence KL(p_S || p_T) of the tempered distributions, mean over rows.

    ``mean_rows( Σ_c p_S,c · (log p_S,c - log p_T,c) )`` with ``p_X = softmax(l_X / T)``
    (mode-seeking: the student is pushed to put its mass where the teacher's is). Chunked like
    ``kd_ce_loss``.

    Args:
        logits_S: student logits, (batch, classes) or (batch, length, classes).
        logits_T: teacher logits, same shape.
        temperature: a number, a 0-dim tensor, or one temperature per row, shape
            ``logits_S.shape[:-1]``.
        logits_mask: optional (batch, length) mask of 3-D logits: the mean runs over the rows
            where it is nonzero (the same number as selecting those rows first, without a
            data-dependent shape); no effect on 2-D logits.

    Returns:
        The loss, a 0-dim tensor (float32 for low-precision inputs).

    Raises:
        ValueError: the shapes of the logits differ, or the temperature or ``logits_mask`` has
            another shape.
    """
    return _softmax_divergence(logits_T, logits_S, temperature, True, logits_mask)


@_kd_objective
@_without_autocast
def kd_mse_loss(
    logits_S: torch.Tensor,
    logits_T: torch.Tensor,
    temperature: Temperature = 1,
    logits_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error of the tempered logits.

    ``mean( (l_S / T - l_T / T)² )`` over every element (of the kept rows), computed as
    ``Σ (l_S - l_T)² / T² / n`` without scaled copies of the logits on large inputs (equal up to
    float rounding).

    Args:
        logits_S: student logits, (batch, classes) or (batch, length, classes).
        logits_T: teacher logits, same shape.
        temperature: a number, a 0-dim tensor, or one temperature per row, shape
            ``logits_S.shape[:-1]``.
        logits_mask: optional (batch, length) mask of 3-D logits: the mean runs over the rows
            where it is nonzero (the same number as selecting those rows first, without a
            data-dependent shape); no effect on 2-D logits.

    Returns:
        The loss, a 0-dim tensor (float32 for low-precision inputs).

    Raises:
        ValueError: the shapes of the logits differ, or the temperature or ``logits_mask`` has
            another shape.
    """
    if _small_and_simple(logits_S, logits_T, temperature, logits_mask):
        weight = _logits_row_weight(logits_mask, logits_S, logits_S.dtype)
        if weight is None:
            loss = F.mse_loss(logits_S, logits_T)
        else:
            squares = F.mse_loss(logits_S, logits_T, reduction="none").sum(-1)
            rows = weight.view(logits_S.shape[:-1])
            loss = (squares * rows).sum() / (weight.sum() * logits_S.size(-1))
        return loss if temperature == 1 else loss / temperature**2
    rows = _kd_rows(logits_S, logits_T, temperature, logits_mask)
    classes = rows.student.size(-1)
    temperature, weight = rows.temperature, rows.weight
    if rows.small():
        dtype = _compute_dtype(logits_S, logits_T)
        if weight is None and not isinstance(temperature, torch.Tensor):
            return F.mse_loss(_as(rows.student, dtype), _as(rows.teacher, dtype)) / temperature**2
        scaled_S = _tempered(rows.student, temperature, dtype)
        scaled_T = _tempered(rows.teacher, temperature, dtype)
        return rows.mean(F.mse_loss(scaled_S, scaled_T, reduction="none").mean(-1))
    # Σ (l_S - l_T)² / T² · w with the memory-lean squared error: no scaled copies of the logits.
    if isinstance(temperature, torch.Tensor) and temperature.dim() > 0:
        row_scale = temperature.square().reciprocal()  # (rows, 1)
        if weight is not None:
            row_scale = row_scale * weight.unsqueeze(-1)
        total = _SquaredErrorSum.apply(rows.student, rows.teacher, row_scale, None, None)
        return total / (rows.count * classes)
    row_scale = None if weight is None else weight.unsqueeze(-1)
    total = _SquaredErrorSum.apply(rows.student, rows.teacher, row_scale, None, None)
    return total / (rows.count * classes * temperature**2)


# -------------------------------------------------------------------------------------------------
# Jensen-Shannon and multi-label KD: per-row formulas, chunked by re-running each chunk in backward
# -------------------------------------------------------------------------------------------------


class _ChunkedRowsSum(torch.autograd.Function):
    """``Σ_n r_n f(S_n, T_n, τ_n)`` for a per-row formula ``f``, computed in chunks of rows.

    Forward evaluates ``f`` chunk by chunk without a graph; backward re-runs each chunk under
    autograd and writes its gradient into one preallocated tensor per input that needs one. So
    only the inputs are saved, and temporaries live for one chunk: the memory of the checkpointed
    loss is the gradients plus a chunk's worth, whatever ``f`` allocates. Low-precision inputs are
    upcast chunk by chunk. The gradients are autograd's of the same formula (equal to the plain
    formula's up to float rounding).
    """

    @staticmethod
    def forward(ctx, rows_fn, S, T, temperature, row_weight):
        is_tensor = isinstance(temperature, torch.Tensor)
        ctx.save_for_backward(S, T, temperature if is_tensor else None, row_weight)
        ctx.rows_fn, ctx.temperature = rows_fn, None if is_tensor else temperature
        dtype = _compute_dtype(S, T)
        total = S.new_zeros((), dtype=dtype)
        with torch.autocast(device_type=S.device.type, enabled=False):
            for start, stop in _chunk_bounds(S):
                values = rows_fn(
                    _as(S[start:stop], dtype),
                    _as(T[start:stop], dtype),
                    _slice_rows(temperature, start, stop),
                )
                if row_weight is not None:
                    values = values * row_weight[start:stop]
                total += values.sum()
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        S, T, temperature, row_weight = ctx.saved_tensors
        if ctx.temperature is not None:
            temperature = ctx.temperature
        needs = ctx.needs_input_grad[1:3]
        grads = [torch.empty_like(x) if need else None for x, need in zip((S, T), needs)]
        dtype = _compute_dtype(S, T)
        with torch.enable_grad(), torch.autocast(device_type=S.device.type, enabled=False):
            for start, stop in _chunk_bounds(S):
                pieces = [
                    x[start:stop].detach().to(dtype).requires_grad_(need)
                    for x, need in zip((S, T), needs)
                ]
                values = ctx.rows_fn(*pieces, _slice_rows(temperature, start, stop))
                if row_weight is not None:
                    values = values * row_weight[start:stop]
                wanted = [piece for piece, need in zip(pieces, needs) if need]
                chunk_grads = iter(torch.autograd.grad(values.sum(), wanted, grad_output))
                for grad, need in zip(grads, needs):
                    if need:
                        grad[start:stop].copy_(next(chunk_grads))
        return None, grads[0], grads[1], None, None


def _rows_loss(rows_fn: Callable[..., torch.Tensor], rows: _KDRows) -> torch.Tensor:
    """The mean over kept rows of ``rows_fn``: plainly when small, else chunked."""
    if rows.small():
        dtype = _compute_dtype(rows.student, rows.teacher)
        return rows.mean(
            rows_fn(_as(rows.student, dtype), _as(rows.teacher, dtype), rows.temperature)
        )
    total = _ChunkedRowsSum.apply(
        rows_fn, rows.student, rows.teacher, rows.temperature, rows.weight
    )
    return total / rows.count


def _check_beta(beta: float) -> float:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta <= 1:
        raise ValueError(
            f"jsd: `beta`={beta!r} must be a number in [0, 1] (the teacher's share of the "
            "mixture; 0.5 is the symmetric Jensen-Shannon divergence)"
        )
    return float(beta)


def _jsd_rows(beta: float) -> Callable[..., torch.Tensor]:
    """Per-row generalised Jensen-Shannon divergence of the tempered distributions."""

    def rows_fn(student, teacher, temperature):
        log_q = torch.log_softmax(_tempered(student, temperature, student.dtype), -1)
        log_p = torch.log_softmax(_tempered(teacher, temperature, teacher.dtype), -1)
        if beta == 0:  # the limit JSD_beta / beta: KL(p_T || p_S)
            return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)
        if beta == 1:  # the limit JSD_beta / (1 - beta): KL(p_S || p_T)
            return F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(-1)
        log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log1p(-beta))
        teacher_part = F.kl_div(log_m, log_p, reduction="none", log_target=True).sum(-1)
        student_part = F.kl_div(log_m, log_q, reduction="none", log_target=True).sum(-1)
        return beta * teacher_part + (1 - beta) * student_part

    return rows_fn


@_kd_objective
@_without_autocast
def kd_jsd_loss(
    logits_S: torch.Tensor,
    logits_T: torch.Tensor,
    temperature: Temperature = 1,
    logits_mask: torch.Tensor | None = None,
    *,
    beta: float = 0.5,
) -> torch.Tensor:
    """Generalised Jensen-Shannon divergence of the tempered distributions, mean over rows.

    With ``p = softmax(l_T / T)``, ``q = softmax(l_S / T)`` and the mixture
    ``m = beta · p + (1 - beta) · q``, each row contributes
    ``beta · KL(p || m) + (1 - beta) · KL(q || m)``; ``beta = 0.5`` is the symmetric
    Jensen-Shannon divergence (bounded by ``log 2``). At the ends of ``beta`` the divergence
    itself vanishes; there the loss is defined as its first-order limits: ``beta = 0`` gives
    ``KL(p || q)`` (= ``kd_kl_loss``, the limit of ``JSD_beta / beta``) and ``beta = 1`` gives
    ``KL(q || p)`` (= ``kd_reverse_kl_loss``, the limit of ``JSD_beta / (1 - beta)``). Large
    inputs are chunked (only the inputs are saved; backward recomputes a chunk at a time).

    Args:
        logits_S: student logits, (batch, classes) or (batch, length, classes).
        logits_T: teacher logits, same shape.
        temperature: a number, a 0-dim tensor, or one temperature per row, shape
            ``logits_S.shape[:-1]``.
        logits_mask: optional (batch, length) mask of 3-D logits: the mean runs over the rows
            where it is nonzero; no effect on 2-D logits.
        beta: the teacher's share of the mixture, in [0, 1] (keyword only; in a config,
            ``kd_loss_type=['jsd', beta]``).

    Returns:
        The loss, a 0-dim tensor (float32 for low-precision inputs).

    Raises:
        ValueError: ``beta`` is not in [0, 1], the shapes of the logits differ, or the
            temperature or ``logits_mask`` has another shape.
    """
    return _rows_loss(
        _jsd_rows(_check_beta(beta)), _kd_rows(logits_S, logits_T, temperature, logits_mask)
    )


def jsd_loss_builder(beta: float = 0.5) -> Callable[..., torch.Tensor]:
    """``kd_jsd_loss`` with its mixing coefficient fixed: the builder of ``['jsd', beta]``.

    Args:
        beta: the teacher's share of the mixture, in [0, 1].

    Returns:
        ``loss(logits_S, logits_T, temperature=1, logits_mask=None)``.

    Raises:
        ValueError: ``beta`` is not in [0, 1].

    Example:
        >>> loss = jsd_loss_builder(0.5)
        >>> float(loss(torch.tensor([[0.0, 9.0]]), torch.tensor([[9.0, 0.0]]), 0.01))
        0.693...
    """
    bound = functools.partial(kd_jsd_loss, beta=_check_beta(beta))
    bound.supports_logits_mask = True
    return bound


kd_jsd_loss.builder = jsd_loss_builder


def _bce_rows(student, teacher, temperature):
    """Per-row mean over classes of the binary cross-entropy of tempered sigmoids."""
    scores = _tempered(student, temperature, student.dtype)
    targets = torch.sigmoid(_tempered(teacher, temperature, teacher.dtype))
    # -(y log σ(x) + (1 - y) log(1 - σ(x))) = softplus(x) - y·x, stable for any x.
    return (F.softplus(scores) - targets * scores).mean(-1)


@_kd_objective
@_without_autocast
def kd_bce_loss(
    logits_S: torch.Tensor,
    logits_T: torch.Tensor,
    temperature: Temperature = 1,
    logits_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multi-label KD: binary cross-entropy of per-class sigmoid probabilities.

    Each class is its own yes/no question: with ``y = sigmoid(l_T / T)`` and ``x = l_S / T``,
    ``mean over rows and classes of -(y log sigmoid(x) + (1 - y) log(1 - sigmoid(x)))``. Use it
    for multi-label classifiers (trained with ``BCEWithLogitsLoss``), where the softmax of the
    other KD losses would make the classes compete. Large inputs are chunked like ``kd_jsd_loss``.

    Args:
        logits_S: student logits, (batch, classes) or (batch, length, classes).
        logits_T: teacher logits, same shape.
        temperature: a number, a 0-dim tensor, or one temperature per row, shape
            ``logits_S.shape[:-1]``.
        logits_mask: optional (batch, length) mask of 3-D logits: the mean runs over the rows
            where it is nonzero (the same number as selecting those rows first, without a
            data-dependent shape); no effect on 2-D logits.

    Returns:
        The loss, a 0-dim tensor (float32 for low-precision inputs).

    Raises:
        ValueError: the shapes of the logits differ, or the temperature or ``logits_mask`` has
            another shape.
    """
    if logits_mask is None and _small_and_simple(logits_S, logits_T, temperature, None):
        targets = torch.sigmoid(_divided(logits_T, temperature))
        return F.binary_cross_entropy_with_logits(_divided(logits_S, temperature), targets)
    return _rows_loss(_bce_rows, _kd_rows(logits_S, logits_T, temperature, logits_mask))


# -------------------------------------------------------------------------------------------------
# Attention losses
# -------------------------------------------------------------------------------------------------


def _attention_limit(S: torch.Tensor, T: torch.Tensor) -> int:
    """Up to how many elements an attention loss uses the plain formula (see above)."""
    full = S.dtype in _FULL_PRECISION and T.dtype in _FULL_PRECISION
    return _PLAIN_MAX_ATTENTION if full else _PLAIN_MAX_ELEMENTS


def _plain_att_mse(S: torch.Tensor, T: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``att_mse_loss`` with plain autograd (small inputs; fewer operators than written out)."""
    dtype = _compute_dtype(S, T)
    S, T = _as(S, dtype), _as(T, dtype)
    if mask is None:
        return F.mse_loss(
            torch.where(S <= _PADDING_SCORE, 0.0, S), torch.where(T <= _PADDING_SCORE, 0.0, T)
        )
    m, m_q, m_k, heads = _attention_mask(mask, S, dtype)
    squares = F.mse_loss(S, T, reduction="none") * m_q * m_k
    return squares.sum() / (m.sum(-1).square().sum() * heads)


def _plain_att_ce(S: torch.Tensor, T: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``att_ce_loss`` with plain autograd (small inputs; fewer operators than written out)."""
    dtype = _compute_dtype(S, T)
    S, T = _as(S, dtype), _as(T, dtype)
    if mask is None:
        P = torch.where(T <= _PADDING_SCORE, 0.0, torch.softmax(T, -1))
        return (P * torch.log_softmax(S, -1)).sum() / -(S.numel() // max(1, S.size(-1)))
    m, m_q, m_k, heads = _attention_mask(mask, S, dtype)
    P = torch.softmax(T, -1) * (m_q * m_k)
    return (P * torch.log_softmax(S, -1)).sum() / -(m.sum() * heads)


@_without_autocast
def att_mse_loss(
    S: torch.Tensor, T: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error of attention scores.

    Without a mask, entries ``<= -1e-3`` (padding scores) are set to 0 in both inputs, then
    ``mean((S - T)²)``. With a mask ``m`` (no zeroing):
    ``Σ_{b,h,q,k} (S - T)² · m_q · m_k / Σ_{b,h} (Σ_l m_l)²``.

    Args:
        S: student scores, (batch, heads, length, length); without a mask any shape.
        T: teacher scores, same shape.
        mask: optional (batch, length) of 0/1 (bool, int or float).

    Returns:
        The loss, a 0-dim tensor.

    Raises:
        ValueError: the shapes differ, or the mask does not fit the scores.
    """
    _check_same_shape(S, T, "attention_mse", _HEADS_HINT)
    return _att_mse(S, T, mask)


def _att_mse(S: torch.Tensor, T: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    # Masked, the memory-lean function is also the faster one above _PLAIN_MAX_SQUARES (it never
    # builds the masked products); unmasked it pays only where memory is the bound.
    limit = _PLAIN_MAX_SQUARES if mask is not None else _attention_limit(S, T)
    if _plain_pays(S, T, limit):
        return _plain_att_mse(S, T, mask)
    if mask is None:
        return _SquaredErrorSum.apply(S, T, None, None, _PADDING_SCORE) / S.numel()
    m, m_q, m_k, heads = _attention_mask(mask, S, _compute_dtype(S, T))
    total = _SquaredErrorSum.apply(S, T, m_q, m_k, None)
    return total / (m.sum(-1).square().sum() * heads)


@_without_autocast
def att_mse_sum_loss(
    S: torch.Tensor, T: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``att_mse_loss`` of the scores summed over heads.

    4-D inputs are summed over dim 1 (heads); 3-D inputs are used as they are. Then as
    ``att_mse_loss``: without a mask, zero entries ``<= -1e-3`` and take ``mean((S - T)²)``; with a
    mask, ``Σ (S - T)² · m_q · m_k / Σ_b (Σ_l m_l)²``.

    Args:
        S: student scores, (batch, heads, length, length) or (batch, length, length).
        T: teacher scores, the same shape but for the head count, which may differ.
        mask: optional (batch, length) of 0/1 (bool, int or float).

    Returns:
        The loss, a 0-dim tensor.

    Raises:
        ValueError: the shapes differ once the heads are summed, or the mask does not fit.
    """
    # Heads are summed before the shapes are compared: teacher and student may have different
    # head counts (as in TextBrewer 0.2.x).
    dtype = _compute_dtype(S, T)
    S = S.sum(1, dtype=dtype) if S.dim() == 4 else S
    T = T.sum(1, dtype=dtype) if T.dim() == 4 else T
    _check_same_shape(S, T, "attention_mse_sum (after summing the heads)")
    return _att_mse(S, T, mask)


@_without_autocast
def att_ce_loss(S: torch.Tensor, T: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy between the teacher's and the student's attention distributions.

    ``P = softmax(T, -1)``. Without a mask, ``P`` is set to 0 where ``T <= -1e-3`` (padding keys),
    then ``mean( -Σ_k P · log_softmax(S, -1) )`` over every row. With a mask ``m`` (``P`` not
    zeroed): ``Σ_{b,h,q} m_q · (-Σ_k P · log_softmax(S) · m_k) / Σ_{b,h,q} m_q``. The softmaxes
    run over every key, masked ones included.

    Args:
        S: student scores, (batch, heads, length, length); without a mask any shape.
        T: teacher scores, same shape.
        mask: optional (batch, length) of 0/1 (bool, int or float).

    Returns:
        The loss, a 0-dim tensor.

    Raises:
        ValueError: the shapes differ, or the mask does not fit the scores.
    """
    _check_same_shape(S, T, "attention_ce", _HEADS_HINT)
    return _att_ce(S, T, mask)


def _att_ce(S: torch.Tensor, T: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if _plain_pays(S, T, _attention_limit(S, T)):
        return _plain_att_ce(S, T, mask)
    if mask is None:
        keys = S.size(-1)
        scores, targets = S.reshape(-1, keys), T.reshape(-1, keys)
        total = _SoftmaxDivergenceSum.apply(scores, targets, 1, None, None, _PADDING_SCORE, False)
        return total / scores.size(0)
    m, m_q, m_k, heads = _attention_mask(mask, S, _compute_dtype(S, T))
    total = _SoftmaxDivergenceSum.apply(S, T, 1, m_k, m_q.squeeze(-1), None, False)
    return total / (m.sum() * heads)


@_without_autocast
def att_ce_mean_loss(
    S: torch.Tensor, T: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``att_ce_loss`` of the scores averaged over heads.

    4-D inputs are averaged over dim 1 (heads); 3-D inputs are used as they are. Then as
    ``att_ce_loss`` with (batch, length, length) scores.

    Args:
        S: student scores, (batch, heads, length, length) or (batch, length, length).
        T: teacher scores, the same shape but for the head count, which may differ.
        mask: optional (batch, length) of 0/1 (bool, int or float).

    Returns:
        The loss, a 0-dim tensor.

    Raises:
        ValueError: the shapes differ once the heads are averaged, or the mask does not fit.
    """
    # Heads are averaged before the shapes are compared: teacher and student may have different
    # head counts (as in TextBrewer 0.2.x). A sum then a division of the small result, rather
    # than mean(1): the input's gradient is then a broadcast view, not a full-size tensor.
    dtype = _compute_dtype(S, T)
    S = S.sum(1, dtype=dtype) / S.size(1) if S.dim() == 4 else S
    T = T.sum(1, dtype=dtype) / T.size(1) if T.dim() == 4 else T
    _check_same_shape(S, T, "attention_ce_mean (after averaging the heads)")
    return _att_ce(S, T, mask)


# -------------------------------------------------------------------------------------------------
# Hidden-state losses
# -------------------------------------------------------------------------------------------------


@_without_autocast
def hid_mse_loss(
    S: torch.Tensor, T: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error of hidden states.

    No mask: ``mean((S - T)²)``. With a mask ``m``: ``Σ (S - T)² · m / (Σ m · D)``.

    Args:
        S: student hidden states, (batch, length, hidden); without a mask any shape.
        T: teacher hidden states, same shape.
        mask: optional (batch, length) of 0/1 (bool, int or float).

    Returns:
        The loss, a 0-dim tensor.

    Raises:
        ValueError: the shapes differ, or the mask does not fit the hidden states.
    """
    _check_same_shape(S, T, "hidden_mse", _PROJECTION_HINT)
    if mask is None:
        if S.dtype == T.dtype and S.dtype in _FULL_PRECISION:
            # mse_loss saves only its inputs and is one fused kernel: nothing to save on.
            return F.mse_loss(S, T)
        return _SquaredErrorSum.apply(S, T, None, None, None) / S.numel()
    _check_position_mask(mask, S.shape[:-1], "hidden_mse")
    if _plain_pays(S, T, _PLAIN_MAX_SQUARES):
        dtype = _compute_dtype(S, T)
        m = mask.to(device=S.device, dtype=dtype)
        squares = F.mse_loss(_as(S, dtype), _as(T, dtype), reduction="none")
        return (squares * m.unsqueeze(-1)).sum() / (m.sum() * S.size(-1))
    m = mask.to(device=S.device, dtype=_compute_dtype(S, T))
    total = _SquaredErrorSum.apply(S, T, m.unsqueeze(-1), None, None)
    return total / (m.sum() * S.size(-1))


@_without_autocast
def cos_loss(S: torch.Tensor, T: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cosine distance between student and teacher vectors, position by position.

    ``mean_n (1 - cos(S_n, T_n))`` over the positions ``n`` the mask keeps (every position
    without a mask). A float mask acts as weights: ``Σ m (1 - cos) / Σ m``.

    Args:
        S: student hidden states, (batch, length, hidden) (or any (..., hidden) without a mask).
        T: teacher hidden states, same shape.
        mask: optional (batch, length) of 0/1 (bool, int or float).

    Returns:
        The loss, a 0-dim tensor.

    Raises:
        ValueError: the shapes differ, or the mask does not fit the hidden states.
    """
    _check_same_shape(S, T, "cos", _PROJECTION_HINT)
    dtype = _compute_dtype(S, T)
    if mask is not None:
        _check_position_mask(mask, S.shape[:-1], "cos")
    if S.dtype not in _FULL_PRECISION and S.numel() > _PLAIN_MAX_ELEMENTS:
        # Low precision: upcast a chunk of rows at a time, not a float32 copy of both inputs.
        hidden = S.size(-1)
        weight = None if mask is None else mask.reshape(-1).to(device=S.device, dtype=dtype)
        total = _ChunkedRowsSum.apply(
            _cosine_distances, S.reshape(-1, hidden), T.reshape(-1, hidden), 1, weight
        )
        return total / (S.numel() // hidden if weight is None else weight.sum())
    distances = _cosine_distances(_as(S, dtype), _as(T, dtype))
    if mask is None:
        return distances.mean()
    m = mask.to(device=S.device, dtype=dtype)
    return (distances * m).sum() / m.sum()


def _cosine_distances(S: torch.Tensor, T: torch.Tensor, temperature: float = 1) -> torch.Tensor:
    """``1 - cos(S_n, T_n)`` per row, ``cos = x.y / max(|x| |y|, 1e-8)``.

    Written out rather than F.cosine_similarity, which is ~2.5x slower forward+backward on CPU.
    vector_norm rather than Tensor.norm, and the dot products first (autograd then runs the
    norms' backward first): the peak is the gradient plus one full-size temporary, the 0.2.x
    formula's (cosine_embedding_loss). ``temperature`` is unused (the chunked caller's signature).
    """
    dots = (S * T).sum(dim=-1)
    norms = torch.linalg.vector_norm(S, dim=-1) * torch.linalg.vector_norm(T, dim=-1)
    return 1 - dots / norms.clamp_min(1e-8)


@_without_autocast
def pkd_loss(S: torch.Tensor, T: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Patient-KD loss: squared distance of the L2-normalised first-position vectors.

    3-D inputs are reduced to position 0 (the [CLS] vector), 2-D inputs are used as they are; each
    row is L2-normalised, then ``mean_rows( Σ_d (s_d - t_d)² )``.

    Args:
        S: student hidden states, (batch, length, hidden) or (batch, hidden).
        T: teacher hidden states, same shape.
        mask: accepted for a uniform signature and unused.

    Returns:
        The loss, a 0-dim tensor.

    Raises:
        ValueError: the shapes differ.
    """
    _check_same_shape(S, T, "pkd", _PROJECTION_HINT)
    if S.dim() == 3:
        S, T = S[:, 0], T[:, 0]
    dtype = _compute_dtype(S, T)
    s, t = F.normalize(_as(S, dtype), dim=-1), F.normalize(_as(T, dtype), dim=-1)
    return (s - t).square().sum(-1).mean()


def _fsp_matrix(
    first: torch.Tensor, second: torch.Tensor, mask: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor:
    """``first^T second / L`` per example, (batch, D0, D1); with a mask, masked rows and Σm."""
    first, second = _as(first, dtype), _as(second, dtype)
    if mask is None:
        return torch.bmm(first.transpose(1, 2), second) / first.size(1)
    _check_position_mask(mask, first.shape[:2], "fsp")
    m = mask.to(device=first.device, dtype=dtype).unsqueeze(-1)
    return torch.bmm((first * m).transpose(1, 2), second) / m.sum(1, keepdim=True)


@_without_autocast
def fsp_loss(
    S: Sequence[torch.Tensor], T: Sequence[torch.Tensor], mask: torch.Tensor | None = None
) -> torch.Tensor:
    """FSP (flow of solution procedure, "gram") loss between two pairs of layers.

    ``G = S0ᵀ S1 / L`` per example, (batch, hidden, hidden); with a mask ``m`` the rows are
    multiplied by ``m`` and the product divided by ``Σ_l m_l`` instead of ``L``. Loss
    ``mean((G_S - G_T)²)``.

    Args:
        S: the student's pair ``(S0, S1)``, each (batch, length, hidden).
        T: the teacher's pair ``(T0, T1)``, same shapes.
        mask: optional (batch, length) of 0/1 (bool, int or float).

    Returns:
        The loss, a 0-dim tensor.

    Raises:
        ValueError: S or T is not a pair, shapes differ, or the mask does not fit.
    """
    (S0, S1), (T0, T1) = _pair(S, "fsp: S"), _pair(T, "fsp: T")
    _check_same_shape(S0, T0, "fsp (first layer)", _PROJECTION_HINT)
    _check_same_shape(S1, T1, "fsp (second layer)", _PROJECTION_HINT)
    dtype = _compute_dtype(S0, S1, T0, T1)
    if mask is None:
        # One division of the loss by L² instead of one per matrix (equal up to rounding).
        gram_S = torch.bmm(_as(S0, dtype).transpose(1, 2), _as(S1, dtype))
        gram_T = torch.bmm(_as(T0, dtype).transpose(1, 2), _as(T1, dtype))
        return F.mse_loss(gram_S, gram_T) / S0.size(1) ** 2
    return F.mse_loss(_fsp_matrix(S0, S1, mask, dtype), _fsp_matrix(T0, T1, mask, dtype))


@_without_autocast
def mmd_loss(
    S: Sequence[torch.Tensor], T: Sequence[torch.Tensor], mask: torch.Tensor | None = None
) -> torch.Tensor:
    """NST ("mmd") loss: squared error of position-by-position similarity matrices.

    No mask: ``G_X = X0 X1ᵀ / D_X`` (batch, length, length), each side divided by its own hidden
    size, loss ``mean((G_S - G_T)²)``. With a mask (TextBrewer 0.2.1's behaviour, kept exactly):
    ``G_X = X0 X1ᵀ / L`` on both sides and loss ``Σ (G_S - G_T)² m_q m_k / Σ_b (Σ_l m_l)²``; so
    an all-ones mask is not the same as no mask unless ``D == L``.

    Args:
        S: the student's pair ``(S0, S1)``, each (batch, length, hidden_S).
        T: the teacher's pair ``(T0, T1)``, each (batch, length, hidden_T).
        mask: optional (batch, length) of 0/1 (bool, int or float).

    Returns:
        The loss, a 0-dim tensor.

    Raises:
        ValueError: S or T is not a pair, the similarity matrices' shapes differ, or the mask does
            not fit.
    """
    (S0, S1), (T0, T1) = _pair(S, "mmd: S"), _pair(T, "mmd: T")
    dtype = _compute_dtype(S0, S1, T0, T1)
    S0, S1, T0, T1 = (_as(x, dtype) for x in (S0, S1, T0, T1))
    # The scale of each side is applied once to the loss where both sides share it (equal up to
    # rounding, one operator fewer per side).
    gram_S, gram_T = torch.bmm(S0, S1.transpose(1, 2)), torch.bmm(T0, T1.transpose(1, 2))
    _check_same_shape(gram_S, gram_T, "mmd (similarity matrices)")
    if mask is None:
        hidden_S, hidden_T = S0.size(-1), T0.size(-1)
        if hidden_S == hidden_T:
            return F.mse_loss(gram_S, gram_T) / hidden_S**2
        return F.mse_loss(gram_S / hidden_S, gram_T / hidden_T)
    length = S0.size(1)
    m, m_q, m_k, _ = _attention_mask(mask, gram_S, dtype)
    if _plain_pays(gram_S, gram_T, _PLAIN_MAX_SQUARES):
        pairs = m_q * m_k
        squares = F.mse_loss(gram_S, gram_T, reduction="none")
        return (squares * pairs).sum() / (pairs.sum() * length**2)
    total = _SquaredErrorSum.apply(gram_S, gram_T, m_q, m_k, None)
    return total / (m.sum(-1).square().sum() * length**2)
