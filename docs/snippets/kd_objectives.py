"""The formulas of docs/kd_objectives.rst, written out in float64, against the library's losses."""

import torch

from textbrewer import DistillationConfig, presets
from textbrewer.distillers._kd import DistillationTerms

torch.manual_seed(0)
S = (3 * torch.randn(2, 4, 6, dtype=torch.float64)).requires_grad_()  # student logits
T = 3 * torch.randn(2, 4, 6, dtype=torch.float64)  # teacher logits
mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])  # logits_mask: the kept rows
tau = 2.0


def kl(p, q):
    return (p * (p.log() - q.log())).sum()


def jsd_formula(beta):
    values = []
    for s, t in zip(S[mask.bool()], T[mask.bool()]):
        p_T, p_S = torch.softmax(t / tau, 0), torch.softmax(s / tau, 0)
        if beta == 0:
            values.append(kl(p_T, p_S))
        elif beta == 1:
            values.append(kl(p_S, p_T))
        else:
            m = beta * p_T + (1 - beta) * p_S
            values.append(beta * kl(p_T, m) + (1 - beta) * kl(p_S, m))
    return torch.stack(values).mean()


def bce_formula():
    values = []
    for s, t in zip(S[mask.bool()], T[mask.bool()]):
        y, x = torch.sigmoid(t / tau), torch.sigmoid(s / tau)
        values.append(-(y * x.log() + (1 - y) * (1 - x).log()).mean())
    return torch.stack(values).mean()


def check(name, ours, formula):
    torch.testing.assert_close(ours, formula, rtol=1e-12, atol=1e-15)
    (grad_ours,) = torch.autograd.grad(ours, S)
    (grad_formula,) = torch.autograd.grad(formula, S)
    torch.testing.assert_close(grad_ours, grad_formula, rtol=1e-10, atol=1e-15)
    print(f"{name:<12} {ours.item():.12f}  (formula {formula.item():.12f})")


for beta in (0.0, 0.3, 0.5, 1.0):
    loss = presets.KD_LOSS_MAP[["jsd", beta]]
    check(f"jsd({beta})", loss(S, T, tau, logits_mask=mask), jsd_formula(beta))
check("bce", presets.KD_LOSS_MAP["bce"](S, T, tau, logits_mask=mask), bce_formula())

# The T^2 scaling, as the distillers apply it (a constant temperature: exactly tau^2).
config = DistillationConfig(temperature=tau, kd_loss_type="kl", kd_loss_t2_scaling=True)
results_S, results_T = {"logits": [S], "logits_mask": [mask]}, {"logits": [T]}
results_T["logits_mask"] = results_S["logits_mask"]
(_, scaled, _), *_ = DistillationTerms(config).parts(results_S, results_T)
check("kl * T^2", scaled, tau**2 * jsd_formula(0.0))
