"""Chunked, memory-saving autograd functions of the losses and the size thresholds that pick them.

They replace the plain formulas (also here) on large inputs. Kept apart from
``textbrewer.losses`` so that the public module holds only the losses themselves. Thresholds are
module attributes read at call time: tests and benchmarks patch them here.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ._loss_inputs import (
    _FULL_PRECISION,
    _PADDING_SCORE,
    Temperature,
    _as,
    _attention_mask,
    _check_same_shape,
    _compute_dtype,
    _divided,
    _logits_row_weight,
    _row_temperature,
    _rows,
    _slice_rows,
    _tempered,
)

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


def _plain_pays(S: torch.Tensor, T: torch.Tensor, limit: int) -> bool:
    """Whether the plain autograd formula is the better choice for these inputs.

    Up to ``limit`` elements the per-operator cost dominates, and the memory-saving functions'
    extra operators (recomputation in backward) cost more than the memory they save. Beyond it,
    full-precision inputs still take the plain path when their caller says it saves only inputs.
    """
    return S.numel() <= limit


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


# -------------------------------------------------------------------------------------------------
# KD inputs as rows, and the plain or chunked softmax divergence of them
# -------------------------------------------------------------------------------------------------


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


def _bce_rows(student, teacher, temperature):
    """Per-row mean over classes of the binary cross-entropy of tempered sigmoids."""
    scores = _tempered(student, temperature, student.dtype)
    targets = torch.sigmoid(_tempered(teacher, temperature, teacher.dtype))
    # -(y log σ(x) + (1 - y) log(1 - σ(x))) = softplus(x) - y·x, stable for any x.
    return (F.softplus(scores) - targets * scores).mean(-1)


# -------------------------------------------------------------------------------------------------
# Attention losses: the plain formula or the memory-lean functions
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
