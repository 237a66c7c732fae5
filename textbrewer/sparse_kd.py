"""KD against a sparse teacher: only its top-k logits per row, stored as values and indices.

A teacher cache made with ``topk=k`` (see ``textbrewer.teacher_cache``) keeps, for every row of
the teacher's logits, the ``k`` largest logits (``values``) and their classes (``indices``),
instead of the whole vocabulary. The teacher's adapted result then carries the values under
``logits`` and the classes under ``logits_topk_indices`` (``TOPK_INDICES_KEY``); the distillers
see that key and compute the KD loss here, over the stored classes only.

This is an **approximation**: the teacher's distribution is renormalised over its ``k`` stored
classes (``p̂ = softmax(values / T)``), and the mass it put on the other classes is dropped. The
docs' teacher-cache page lists the error against the full loss, measured on real model logits,
for ``k`` = 1, 8 and 64. The forms, per row, with ``s`` the student's full logits and ``i`` the
stored classes:

* ``ce``: ``-Σ_j p̂_j · log_softmax(s / T)[i_j]`` (the student's log-probabilities are over its
  whole vocabulary, so its mass outside the stored classes is still penalised);
* ``kl``: ``Σ_j p̂_j · (log p̂_j - log_softmax(s / T)[i_j])``;
* ``reverse_kl``: ``Σ_j q̂_j (log q̂_j - log p̂_j)`` with ``q̂ = softmax(s[i] / T)``, the student
  renormalised over the stored classes too;
* ``mse``: ``mean((s[i] - values)² / T²)`` over the stored entries only.

Rows are averaged (``mean_rows``), as the full losses do.
"""

from __future__ import annotations

from typing import Callable, Union

import torch
import torch.nn.functional as F

from textbrewer import losses
from textbrewer._docstrings import with_sections

TOPK_INDICES_KEY = "logits_topk_indices"
"""The adaptor-result key holding, per ``logits`` tensor, the classes of its stored top-k values."""

Temperature = Union[float, torch.Tensor]


def _scaled(logits: torch.Tensor, temperature: Temperature) -> torch.Tensor:
    if isinstance(temperature, torch.Tensor) and temperature.dim() > 0:
        return logits / temperature.to(logits).unsqueeze(-1)
    return logits / temperature


def _student_log_probs_at(
    logits_S: torch.Tensor, indices: torch.Tensor, temperature: Temperature
) -> torch.Tensor:
    scaled = _scaled(logits_S, temperature)
    log_norm = torch.logsumexp(scaled, dim=-1, keepdim=True)
    return scaled.gather(-1, indices) - log_norm


_topk_form = with_sections(
    args="""\
logits_S: student logits, (rows..., classes).
values_T: the teacher's top-k logits, (rows..., k).
indices_T: their classes, (rows..., k), integers < classes.
temperature: a number, or one temperature per row (shape ``rows...``).
""",
    returns="The loss, a 0-dim tensor.",
)
"""Completes the docstring of a top-k form with the arguments and result all of them share."""


@_topk_form
def topk_ce_loss(
    logits_S: torch.Tensor, values_T: torch.Tensor, indices_T: torch.Tensor, temperature=1
) -> torch.Tensor:
    """Soft cross-entropy against the teacher renormalised over its stored top-k classes.

    ``mean_rows( -Σ_j softmax(values_T / T)_j · log_softmax(logits_S / T)[indices_T_j] )``.
    """
    target = F.softmax(_scaled(values_T, temperature), dim=-1)
    log_q = _student_log_probs_at(logits_S, indices_T, temperature)
    return -(target * log_q).sum(-1).mean()


@_topk_form
def topk_kl_loss(
    logits_S: torch.Tensor, values_T: torch.Tensor, indices_T: torch.Tensor, temperature=1
) -> torch.Tensor:
    """KL(p̂_T || p_S) over the stored classes, ``p̂_T`` renormalised over them (see the module)."""
    log_p = F.log_softmax(_scaled(values_T, temperature), dim=-1)
    log_q = _student_log_probs_at(logits_S, indices_T, temperature)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


@_topk_form
def topk_reverse_kl_loss(
    logits_S: torch.Tensor, values_T: torch.Tensor, indices_T: torch.Tensor, temperature=1
) -> torch.Tensor:
    """KL(q̂_S || p̂_T), both distributions renormalised over the stored classes."""
    log_p = F.log_softmax(_scaled(values_T, temperature), dim=-1)
    log_q = F.log_softmax(_scaled(logits_S.gather(-1, indices_T), temperature), dim=-1)
    return (log_q.exp() * (log_q - log_p)).sum(-1).mean()


@_topk_form
def topk_mse_loss(
    logits_S: torch.Tensor, values_T: torch.Tensor, indices_T: torch.Tensor, temperature=1
) -> torch.Tensor:
    """``mean((logits_S[indices_T] / T - values_T / T)²)`` over the stored entries."""
    difference = _scaled(logits_S.gather(-1, indices_T) - values_T, temperature)
    return difference.square().mean()


TOPK_FORMS: dict[Callable[..., torch.Tensor], Callable[..., torch.Tensor]] = {
    losses.kd_ce_loss: topk_ce_loss,
    losses.kd_kl_loss: topk_kl_loss,
    losses.kd_reverse_kl_loss: topk_reverse_kl_loss,
    losses.kd_mse_loss: topk_mse_loss,
}
"""The built-in KD losses (``KD_LOSS_MAP`` functions) and their top-k forms."""


def topk_kd_loss(
    loss: Callable[..., torch.Tensor],
    logits_S: torch.Tensor,
    values_T: torch.Tensor,
    indices_T: torch.Tensor,
    temperature: Temperature,
) -> torch.Tensor:
    """The top-k form of the KD loss ``loss`` (a ``KD_LOSS_MAP`` function).

    Args:
        loss: the configured KD loss; it must be a built-in (``ce``, ``kl``, ``reverse_kl``,
            ``mse``).
        logits_S: student logits (rows..., classes), already selected by ``logits_mask``.
        values_T: teacher top-k values (rows..., k), selected by the teacher's mask.
        indices_T: their classes (rows..., k).
        temperature: a number, or one per row.

    Raises:
        ValueError: ``loss`` has no top-k form, or the rows of the two sides differ.
    """
    form = TOPK_FORMS.get(loss)
    if form is None:
        known = sorted(name for name, fn in _kd_registry().items() if fn in TOPK_FORMS)
        raise ValueError(
            f"the teacher's logits are stored as top-k values (a teacher cache made with topk=...)"
            f", but the KD loss {getattr(loss, '__name__', loss)!r} has no top-k form (it needs "
            f"the full logits); use kd_loss_type in {known}, or precompute with topk=None"
        )
    if values_T.shape != indices_T.shape:
        raise ValueError(
            f"top-k teacher values {tuple(values_T.shape)} and indices {tuple(indices_T.shape)} "
            "must have the same shape"
        )
    if logits_S.shape[:-1] != values_T.shape[:-1]:
        raise ValueError(
            f"KD with a top-k teacher: the student's logits {tuple(logits_S.shape)} and the "
            f"teacher's top-k values {tuple(values_T.shape)} have different rows; the positions "
            "do not align (different batches or sequence lengths)"
        )
    return form(logits_S, values_T.to(logits_S.dtype), indices_T.long(), temperature)


def _kd_registry() -> dict:
    from textbrewer import presets  # presets imports losses; imported here to stay acyclic

    return presets.KD_LOSS_MAP
