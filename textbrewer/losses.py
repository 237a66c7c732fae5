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
from collections.abc import Sequence
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

# Size thresholds are read as attributes of their module at call time (tests and benchmarks patch
# them there), so this module imports the module itself for them, not the numbers.
from . import _loss_chunks
from ._docstrings import with_sections
from ._loss_chunks import (
    _att_ce,
    _att_mse,
    _bce_rows,
    _ChunkedRowsSum,
    _jsd_rows,
    _kd_rows,
    _plain_pays,
    _rows_loss,
    _small_and_simple,
    _softmax_divergence,
    _SquaredErrorSum,
)
from ._loss_inputs import (
    _FULL_PRECISION,
    _HEADS_HINT,
    _PROJECTION_HINT,
    Mask,
    Temperature,
    _as,
    _attention_mask,
    _check_beta,
    _check_position_mask,
    _check_same_shape,
    _compute_dtype,
    _divided,
    _logits_row_weight,
    _pair,
    _tempered,
    _without_autocast,
)

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


# -------------------------------------------------------------------------------------------------
# KD losses
# -------------------------------------------------------------------------------------------------


_kd_sections = with_sections(
    args="""\
logits_S: student logits, (batch, classes) or (batch, length, classes).
logits_T: teacher logits, same shape.
temperature: a number, a 0-dim tensor, or one temperature per row, shape
    ``logits_S.shape[:-1]``.
logits_mask: optional (batch, length) mask of 3-D logits: the mean runs over the rows
    where it is nonzero (the same number as selecting those rows first, without a
    data-dependent shape); no effect on 2-D logits.
""",
    returns="The loss, a 0-dim tensor (float32 for low-precision inputs).",
    raises="""\
ValueError: the shapes of the logits differ, or the temperature or ``logits_mask`` has
    another shape.
""",
)


def _kd_objective(loss_fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Marks a built-in KD loss: the distillers hand it ``logits_mask`` instead of selecting rows.

    (A function registered by a user gets the selected rows, as in TextBrewer 0.2.x.) The loss
    runs with autocast off (``_without_autocast``), and its docstring is completed with the
    arguments, result and errors all KD losses share: each loss's own docstring holds only what is
    its own (a summary, the formula, any further argument).
    """
    loss_fn = _kd_sections(_without_autocast(loss_fn))
    loss_fn.supports_logits_mask = True
    return loss_fn


@_kd_objective
def kd_ce_loss(
    logits_S: Tensor, logits_T: Tensor, temperature: Temperature = 1, logits_mask: Mask = None
) -> Tensor:
    """Soft cross-entropy between the teacher's and the student's tempered distributions.

    ``mean_rows( -Σ_c softmax(l_T / T)_c · log_softmax(l_S / T)_c )``, rows being every leading
    position. Large inputs are computed in chunks of rows: beyond its inputs it allocates little
    more than the student's gradient, whatever the vocabulary size; small ones (where that does
    not pay) with the plain formula.
    """
    return _softmax_divergence(logits_S, logits_T, temperature, False, logits_mask)


@_kd_objective
def kd_kl_loss(
    logits_S: Tensor, logits_T: Tensor, temperature: Temperature = 1, logits_mask: Mask = None
) -> Tensor:
    """Forward KL divergence KL(p_T || p_S) of the tempered distributions, mean over rows.

    ``mean_rows( Σ_c p_T,c · (log p_T,c - log p_S,c) )`` with ``p_X = softmax(l_X / T)``: the
    cross-entropy of ``kd_ce_loss`` minus the teacher's entropy, so it has the same gradient in the
    student and is 0 when the two logits are equal. Chunked like ``kd_ce_loss``.
    """
    return _softmax_divergence(logits_S, logits_T, temperature, True, logits_mask)


@_kd_objective
def kd_reverse_kl_loss(
    logits_S: Tensor, logits_T: Tensor, temperature: Temperature = 1, logits_mask: Mask = None
) -> Tensor:
    """Reverse KL divergence KL(p_S || p_T) of the tempered distributions, mean over rows.

    ``mean_rows( Σ_c p_S,c · (log p_S,c - log p_T,c) )`` with ``p_X = softmax(l_X / T)``
    (mode-seeking: the student is pushed to put its mass where the teacher's is). Chunked like
    ``kd_ce_loss``.
    """
    return _softmax_divergence(logits_T, logits_S, temperature, True, logits_mask)


@_kd_objective
def kd_mse_loss(
    logits_S: Tensor, logits_T: Tensor, temperature: Temperature = 1, logits_mask: Mask = None
) -> Tensor:
    """Mean squared error of the tempered logits.

    ``mean( (l_S / T - l_T / T)² )`` over every element (of the kept rows), computed as
    ``Σ (l_S - l_T)² / T² / n`` without scaled copies of the logits on large inputs (equal up to
    float rounding).
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
# Jensen-Shannon and multi-label KD
# -------------------------------------------------------------------------------------------------


@_kd_objective
def kd_jsd_loss(  # noqa: D417 (_kd_objective adds the arguments all KD losses share)
    logits_S: Tensor,
    logits_T: Tensor,
    temperature: Temperature = 1,
    logits_mask: Mask = None,
    *,
    beta: float = 0.5,
) -> Tensor:
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
        beta: the teacher's share of the mixture, in [0, 1] (keyword only; in a config,
            ``kd_loss_type=['jsd', beta]``).

    Raises:
        ValueError: ``beta`` is not in [0, 1], the shapes of the logits differ, or the
            temperature or ``logits_mask`` has another shape.
    """
    return _rows_loss(
        _jsd_rows(_check_beta(beta)), _kd_rows(logits_S, logits_T, temperature, logits_mask)
    )


def jsd_loss_builder(beta: float = 0.5) -> Callable[..., Tensor]:
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


@_kd_objective
def kd_bce_loss(
    logits_S: Tensor, logits_T: Tensor, temperature: Temperature = 1, logits_mask: Mask = None
) -> Tensor:
    """Multi-label KD: binary cross-entropy of per-class sigmoid probabilities.

    Each class is its own yes/no question: with ``y = sigmoid(l_T / T)`` and ``x = l_S / T``,
    ``mean over rows and classes of -(y log sigmoid(x) + (1 - y) log(1 - sigmoid(x)))``. Use it
    for multi-label classifiers (trained with ``BCEWithLogitsLoss``), where the softmax of the
    other KD losses would make the classes compete. Large inputs are chunked like ``kd_jsd_loss``.
    """
    if logits_mask is None and _small_and_simple(logits_S, logits_T, temperature, None):
        targets = torch.sigmoid(_divided(logits_T, temperature))
        return F.binary_cross_entropy_with_logits(_divided(logits_S, temperature), targets)
    return _rows_loss(_bce_rows, _kd_rows(logits_S, logits_T, temperature, logits_mask))


# -------------------------------------------------------------------------------------------------
# Attention losses
# -------------------------------------------------------------------------------------------------


_MASK_ARG = "mask: optional (batch, length) of 0/1 (bool, int or float)."
_LOSS = "The loss, a 0-dim tensor."

_scores_sections = with_sections(
    args=f"""\
S: student scores, (batch, heads, length, length); without a mask any shape.
T: teacher scores, same shape.
{_MASK_ARG}
""",
    returns=_LOSS,
    raises="ValueError: the shapes differ, or the mask does not fit the scores.",
)
"""The sections of the attention losses that compare the scores of every head."""

_heads_sections = with_sections(
    args=f"""\
S: student scores, (batch, heads, length, length), reduced over dim 1 (the heads), or
    (batch, length, length), used as they are.
T: teacher scores, the same shape but for the head count, which may differ.
{_MASK_ARG}
""",
    returns=_LOSS,
)
"""Shared sections of the attention losses that reduce over heads first (each has its Raises)."""


@_scores_sections
@_without_autocast
def att_mse_loss(S: Tensor, T: Tensor, mask: Mask = None) -> Tensor:
    """Mean squared error of attention scores.

    Without a mask, entries ``<= -1e-3`` (padding scores) are set to 0 in both inputs, then
    ``mean((S - T)²)``. With a mask ``m`` (no zeroing):
    ``Σ_{b,h,q,k} (S - T)² · m_q · m_k / Σ_{b,h} (Σ_l m_l)²``.
    """
    return _att_mse(*_compared_scores(S, T, "attention_mse"), mask)


@_heads_sections
@_without_autocast
def att_mse_sum_loss(S: Tensor, T: Tensor, mask: Mask = None) -> Tensor:
    """``att_mse_loss`` of the scores summed over heads.

    As ``att_mse_loss`` on the summed scores: without a mask, zero entries ``<= -1e-3`` and take
    ``mean((S - T)²)``; with a mask, ``Σ (S - T)² · m_q · m_k / Σ_b (Σ_l m_l)²``.

    Raises:
        ValueError: the shapes differ once the heads are summed, or the mask does not fit.
    """
    S, T = _compared_scores(S, T, "attention_mse_sum (after summing the heads)", heads="sum")
    return _att_mse(S, T, mask)


@_scores_sections
@_without_autocast
def att_ce_loss(S: Tensor, T: Tensor, mask: Mask = None) -> Tensor:
    """Cross-entropy between the teacher's and the student's attention distributions.

    ``P = softmax(T, -1)``. Without a mask, ``P`` is set to 0 where ``T <= -1e-3`` (padding keys),
    then ``mean( -Σ_k P · log_softmax(S, -1) )`` over every row. With a mask ``m`` (``P`` not
    zeroed): ``Σ_{b,h,q} m_q · (-Σ_k P · log_softmax(S) · m_k) / Σ_{b,h,q} m_q``. The softmaxes
    run over every key, masked ones included.
    """
    return _att_ce(*_compared_scores(S, T, "attention_ce"), mask)


@_heads_sections
@_without_autocast
def att_ce_mean_loss(S: Tensor, T: Tensor, mask: Mask = None) -> Tensor:
    """``att_ce_loss`` of the scores averaged over heads.

    As ``att_ce_loss`` on the averaged (batch, length, length) scores.

    Raises:
        ValueError: the shapes differ once the heads are averaged, or the mask does not fit.
    """
    S, T = _compared_scores(S, T, "attention_ce_mean (after averaging the heads)", heads="mean")
    return _att_ce(S, T, mask)


def _compared_scores(
    S: Tensor, T: Tensor, name: str, heads: str | None = None
) -> tuple[Tensor, Tensor]:
    """The scores, checked for equal shapes; with ``heads`` ("sum", "mean") 4-D ones reduced first.

    Without ``heads`` a mismatch names ``name`` and hints at the heads. With it, 4-D scores are
    summed or averaged over dim 1 (the heads) before the shapes are compared: teacher and student
    may have different head counts (as in TextBrewer 0.2.x). An average is a sum then a division of
    the small result, rather than mean(1): the input's gradient is then a broadcast view, not a
    full-size tensor.
    """
    if heads is None:
        _check_same_shape(S, T, name, _HEADS_HINT)
        return S, T
    dtype = _compute_dtype(S, T)
    average = heads == "mean"

    def reduced(scores: Tensor) -> Tensor:
        if scores.dim() != 4:
            return scores
        total = scores.sum(1, dtype=dtype)
        return total / scores.size(1) if average else total

    S, T = reduced(S), reduced(T)
    _check_same_shape(S, T, name)
    return S, T


# -------------------------------------------------------------------------------------------------
# Hidden-state losses
# -------------------------------------------------------------------------------------------------


_hidden_sections = with_sections(
    args=f"""\
S: student hidden states, (batch, length, hidden); without a mask any (..., hidden) shape.
T: teacher hidden states, same shape.
{_MASK_ARG}
""",
    returns=_LOSS,
    raises="ValueError: the shapes differ, or the mask does not fit the hidden states.",
)
"""The sections of the position-by-position hidden-state losses."""


@_hidden_sections
@_without_autocast
def hid_mse_loss(S: Tensor, T: Tensor, mask: Mask = None) -> Tensor:
    """Mean squared error of hidden states.

    No mask: ``mean((S - T)²)``. With a mask ``m``: ``Σ (S - T)² · m / (Σ m · D)``.
    """
    _check_same_shape(S, T, "hidden_mse", _PROJECTION_HINT)
    if mask is None:
        if S.dtype == T.dtype and S.dtype in _FULL_PRECISION:
            # mse_loss saves only its inputs and is one fused kernel: nothing to save on.
            return F.mse_loss(S, T)
        return _SquaredErrorSum.apply(S, T, None, None, None) / S.numel()
    _check_position_mask(mask, S.shape[:-1], "hidden_mse")
    if _plain_pays(S, T, _loss_chunks._PLAIN_MAX_SQUARES):
        dtype = _compute_dtype(S, T)
        m = mask.to(device=S.device, dtype=dtype)
        squares = F.mse_loss(_as(S, dtype), _as(T, dtype), reduction="none")
        return (squares * m.unsqueeze(-1)).sum() / (m.sum() * S.size(-1))
    m = mask.to(device=S.device, dtype=_compute_dtype(S, T))
    total = _SquaredErrorSum.apply(S, T, m.unsqueeze(-1), None, None)
    return total / (m.sum() * S.size(-1))


@_hidden_sections
@_without_autocast
def cos_loss(S: Tensor, T: Tensor, mask: Mask = None) -> Tensor:
    """Mean cosine distance between student and teacher vectors, position by position.

    ``mean_n (1 - cos(S_n, T_n))`` over the positions ``n`` the mask keeps (every position
    without a mask). A float mask acts as weights: ``Σ m (1 - cos) / Σ m``.
    """
    _check_same_shape(S, T, "cos", _PROJECTION_HINT)
    dtype = _compute_dtype(S, T)
    if mask is not None:
        _check_position_mask(mask, S.shape[:-1], "cos")
    if S.dtype not in _FULL_PRECISION and S.numel() > _loss_chunks._PLAIN_MAX_ELEMENTS:
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


def _cosine_distances(S: Tensor, T: Tensor, temperature: float = 1) -> Tensor:
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
def pkd_loss(S: Tensor, T: Tensor, mask: Mask = None) -> Tensor:
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


def _fsp_matrix(first: Tensor, second: Tensor, mask: Mask, dtype: torch.dtype) -> Tensor:
    """``first^T second / L`` per example, (batch, D0, D1); with a mask, masked rows and Σm."""
    first, second = _as(first, dtype), _as(second, dtype)
    if mask is None:
        return torch.bmm(first.transpose(1, 2), second) / first.size(1)
    _check_position_mask(mask, first.shape[:2], "fsp")
    m = mask.to(device=first.device, dtype=dtype).unsqueeze(-1)
    return torch.bmm((first * m).transpose(1, 2), second) / m.sum(1, keepdim=True)


@_without_autocast
def fsp_loss(S: Sequence[Tensor], T: Sequence[Tensor], mask: Mask = None) -> Tensor:
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
def mmd_loss(S: Sequence[Tensor], T: Sequence[Tensor], mask: Mask = None) -> Tensor:
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
    if _plain_pays(gram_S, gram_T, _loss_chunks._PLAIN_MAX_SQUARES):
        pairs = m_q * m_k
        squares = F.mse_loss(gram_S, gram_T, reduction="none")
        return (squares * pairs).sum() / (pairs.sum() * length**2)
    total = _SquaredErrorSum.apply(gram_S, gram_T, m_q, m_k, None)
    return total / (m.sum(-1).square().sum() * length**2)
