"""Time and peak memory of ``textbrewer.losses`` against the plain formulas they implement.

Run ``python benchmarks/bench_losses.py`` for realistic sizes (attention (32, 12, 128, 128), hidden
(32, 128, 768), logits (32, 128, 30522), and a large-vocabulary KD section on (4, 1024, 32000)
logits), or add ``--smoke`` for tiny sizes that finish in seconds. ``run(smoke)`` returns the rows
as dicts, for the test suite.

Each case runs forward + backward of the library loss ("ours") and of the plain formula written out
below ("plain", masks expanded to the attention size as a straightforward implementation does), on
the same inputs: the student's tensors require grad, the teacher's do not. Backward is
``torch.autograd.grad(loss, student_tensors)``, so the gradients are what the loss produces (for a
head-summed attention loss, a broadcast view; ``.backward()`` into a leaf's ``.grad`` would copy it
to full size whatever the loss does).

Time: the median over repetitions interleaved ours / plain / ours / plain ..., so that machine load
drifts affect both alike; the memory runs come first and serve as warm-up.

Memory: the peak of memory allocated during forward + backward above what was allocated before it
(the inputs), the returned gradients included. On CUDA it is ``torch.cuda.max_memory_allocated()``
after ``reset_peak_memory_stats()``, minus ``memory_allocated()`` before. torch keeps no allocator
statistics for the CPU, so there the run happens under
``torch.profiler.profile(profile_memory=True)``, which records every allocation and free of the CPU
allocator (address, size, time); the peak is the largest running sum of the blocks allocated inside
the run and not yet freed. This counts the real allocations, temporaries inside operators
included, which tracking tensors at the Python level would miss. Memory runs are separate from
timed runs (the profiler slows things down). ``--threads 1`` gives steadier CPU timings on a busy
machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

try:
    from textbrewer import losses
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from textbrewer import losses

PADDING = -1e-3

# -------------------------------------------------------------------------------------------------
# The plain formulas
# -------------------------------------------------------------------------------------------------


def expanded_pair_mask(mask, scores):
    """m_q * m_k materialised at the size of the scores (batch, [heads,] length, length)."""
    m = mask.to(scores.dtype)
    if scores.dim() == 4:
        m = m.unsqueeze(1).expand(-1, scores.size(1), -1)
    return m.unsqueeze(-1) * m.unsqueeze(-2)


def plain_att_mse(S, T, mask=None):
    if mask is None:
        S = torch.where(S <= PADDING, torch.zeros_like(S), S)
        T = torch.where(T <= PADDING, torch.zeros_like(T), T)
        return ((S - T) ** 2).mean()
    valid = expanded_pair_mask(mask, S)
    return ((S - T) ** 2 * valid).sum() / valid.sum()


def plain_att_mse_sum(S, T, mask=None):
    return plain_att_mse(S.sum(1), T.sum(1), mask)


def plain_att_ce(S, T, mask=None):
    P = torch.softmax(T, -1)
    log_Q = torch.log_softmax(S, -1)
    if mask is None:
        P = torch.where(T <= PADDING, torch.zeros_like(P), P)
        return (-(P * log_Q).sum(-1)).mean()
    valid = expanded_pair_mask(mask, S)
    heads = S.size(1) if S.dim() == 4 else 1
    return -(P * log_Q * valid).sum() / (mask.sum() * heads)


def plain_att_ce_mean(S, T, mask=None):
    return plain_att_ce(S.mean(1), T.mean(1), mask)


def plain_hid_mse(S, T, mask=None):
    if mask is None:
        return ((S - T) ** 2).mean()
    m = mask.to(S.dtype).unsqueeze(-1).expand_as(S)
    return ((S - T) ** 2 * m).sum() / m.sum()


def plain_cos(S, T, mask=None):
    if mask is not None:
        S, T = S[mask.bool()], T[mask.bool()]
    return (1 - F.cosine_similarity(S, T, dim=-1)).mean()


def plain_pkd(S, T, mask=None):
    s, t = F.normalize(S[:, 0], dim=-1), F.normalize(T[:, 0], dim=-1)
    return ((s - t) ** 2).sum(-1).mean()


def plain_fsp(S, T, mask=None):
    def gram(x0, x1):
        if mask is None:
            return x0.transpose(1, 2) @ x1 / x0.size(1)
        m = mask.to(x0.dtype).unsqueeze(-1)
        return (x0 * m).transpose(1, 2) @ (x1 * m) / m.sum(1, keepdim=True)

    return ((gram(*S) - gram(*T)) ** 2).mean()


def plain_mmd(S, T, mask=None):
    if mask is None:
        G_S = S[0] @ S[1].transpose(1, 2) / S[0].size(-1)
        G_T = T[0] @ T[1].transpose(1, 2) / T[0].size(-1)
        return ((G_S - G_T) ** 2).mean()
    G_S = S[0] @ S[1].transpose(1, 2) / S[0].size(1)
    G_T = T[0] @ T[1].transpose(1, 2) / T[0].size(1)
    valid = expanded_pair_mask(mask, G_S)
    return ((G_S - G_T) ** 2 * valid).sum() / (mask.to(G_S.dtype).sum(-1) ** 2).sum()


def plain_kd_ce(S, T, temperature):
    return (
        -(torch.softmax(T / temperature, -1) * torch.log_softmax(S / temperature, -1))
        .sum(-1)
        .mean()
    )


def plain_kd_kl(S, T, temperature):
    log_p_T = torch.log_softmax(T / temperature, -1)
    log_p_S = torch.log_softmax(S / temperature, -1)
    return (torch.softmax(T / temperature, -1) * (log_p_T - log_p_S)).sum(-1).mean()


def plain_kd_reverse_kl(S, T, temperature):
    return plain_kd_kl(T, S, temperature)


def plain_kd_mse(S, T, temperature):
    return ((S / temperature - T / temperature) ** 2).mean()


# -------------------------------------------------------------------------------------------------
# The 0.2.x formulas: SPEC §6 transcribed into torch the direct way (F.mse_loss, masks broadcast by
# unsqueeze, boolean selection of the logits_mask rows), the baseline of the "0.2.x" columns. Losses
# 0.2.x does not have (kl, reverse_kl, jsd, bce) use the plain formula there.
# -------------------------------------------------------------------------------------------------


def v02_att_mse(S, T, mask=None):
    if mask is None:
        S = torch.where(S <= PADDING, torch.zeros_like(S), S)
        T = torch.where(T <= PADDING, torch.zeros_like(T), T)
        return F.mse_loss(S, T)
    m = mask.to(S)
    if S.dim() == 4:
        m = m.unsqueeze(1).expand(-1, S.size(1), -1)
    valid = (m.sum(-1) ** 2).sum()
    return (F.mse_loss(S, T, reduction="none") * m.unsqueeze(-1) * m.unsqueeze(-2)).sum() / valid


def v02_att_mse_sum(S, T, mask=None):
    if S.dim() == 4:
        S, T = S.sum(dim=1), T.sum(dim=1)
    return v02_att_mse(S, T, mask)


def v02_att_ce(S, T, mask=None):
    probs_T = F.softmax(T, dim=-1)
    if mask is None:
        probs_T = torch.where(T <= PADDING, torch.zeros_like(probs_T), probs_T)
        return -(probs_T * F.log_softmax(S, dim=-1)).sum(dim=-1).mean()
    m = mask.to(S)
    if S.dim() == 4:
        m = m.unsqueeze(1).expand(-1, S.size(1), -1)
    rows = (probs_T * F.log_softmax(S, dim=-1) * m.unsqueeze(-2)).sum(dim=-1)
    return -(rows * m).sum() / m.sum()


def v02_att_ce_mean(S, T, mask=None):
    if S.dim() == 4:
        S, T = S.mean(dim=1), T.mean(dim=1)
    return v02_att_ce(S, T, mask)


def v02_hid_mse(S, T, mask=None):
    if mask is None:
        return F.mse_loss(S, T)
    m = mask.to(S).unsqueeze(-1)
    return (F.mse_loss(S, T, reduction="none") * m).sum() / (m.sum() * S.size(-1))


def v02_cos(S, T, mask=None):
    if mask is not None:
        S, T = S[mask.bool()], T[mask.bool()]
    S, T = S.reshape(-1, S.size(-1)), T.reshape(-1, T.size(-1))
    return F.cosine_embedding_loss(S, T, S.new_ones(S.size(0)))


def v02_pkd(S, T, mask=None):
    s, t = F.normalize(S[:, 0], p=2, dim=-1), F.normalize(T[:, 0], p=2, dim=-1)
    return (s - t).pow(2).sum(dim=-1).mean()


def v02_fsp(S, T, mask=None):
    def gram(x0, x1):
        if mask is None:
            return torch.bmm(x0.transpose(1, 2), x1) / x0.size(1)
        m = mask.to(x0).unsqueeze(-1)
        return torch.bmm((x0 * m).transpose(1, 2), x1 * m) / m.sum(dim=1, keepdim=True)

    return F.mse_loss(gram(*S), gram(*T))


def v02_mmd(S, T, mask=None):
    if mask is None:
        G_S = torch.bmm(S[0], S[1].transpose(1, 2)) / S[0].size(-1)
        G_T = torch.bmm(T[0], T[1].transpose(1, 2)) / T[0].size(-1)
        return F.mse_loss(G_S, G_T)
    G_S = torch.bmm(S[0], S[1].transpose(1, 2)) / S[0].size(1)
    G_T = torch.bmm(T[0], T[1].transpose(1, 2)) / T[0].size(1)
    m = mask.to(G_S)
    loss = F.mse_loss(G_S, G_T, reduction="none") * m.unsqueeze(-1) * m.unsqueeze(1)
    return loss.sum() / (m.sum(dim=-1) ** 2).sum()


def v02_kd_ce(S, T, temperature):
    p_T = F.softmax(T / temperature, dim=-1)
    return -(p_T * F.log_softmax(S / temperature, dim=-1)).sum(dim=-1).mean()


def v02_kd_mse(S, T, temperature):
    return F.mse_loss(S / temperature, T / temperature)


def plain_kd_jsd(S, T, temperature, beta=0.5):
    p_T, p_S = F.softmax(T / temperature, -1), F.softmax(S / temperature, -1)
    m = beta * p_T + (1 - beta) * p_S
    kl_T = (p_T * (p_T.log() - m.log())).sum(-1)
    kl_S = (p_S * (p_S.log() - m.log())).sum(-1)
    return (beta * kl_T + (1 - beta) * kl_S).mean()


def plain_kd_bce(S, T, temperature):
    return F.binary_cross_entropy_with_logits(S / temperature, torch.sigmoid(T / temperature))


def selected(kd, mask):
    """A KD formula applied, as 0.2.x does, to the rows a logits_mask selects."""
    if mask is None:
        return kd
    return lambda S, T, temperature: kd(S[mask.bool()], T[mask.bool()], temperature)


# -------------------------------------------------------------------------------------------------
# Measuring
# -------------------------------------------------------------------------------------------------


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(step: Callable[[], object], device) -> tuple[int, object]:
    """(peak bytes allocated above the current allocation while ``step`` runs, its result)."""
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = step()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before, result
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = step()
    return profiled_peak(prof), result


def profiled_peak(prof) -> int:
    """Peak of the bytes allocated inside the profiled window and not yet freed.

    Frees of blocks allocated before the window (which the allocator may report) are ignored, so
    freeing an earlier result does not hide the memory the measured call allocates.
    """
    from torch._C._profiler import _EventType

    events = []
    pending = list(prof.profiler.kineto_results.experimental_event_tree())
    while pending:
        node = pending.pop()
        if node.tag == _EventType.Allocation:
            fields = node.extra_fields
            events.append((node.start_time_ns, fields.ptr, fields.alloc_size))
        pending.extend(node.children)
    live, current, peak = {}, 0, 0
    for _, ptr, size in sorted(events):
        if size > 0:
            live[ptr] = size
            current += size
            peak = max(peak, current)
        elif ptr in live:
            current -= live.pop(ptr)
    return peak


def timed(step, device, inner: int = 1) -> float:
    """Seconds per call of ``step``, over ``inner`` back-to-back calls."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(inner):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / inner


# A timed sample lasts at least this long: small cases repeat their call within one sample, so
# that timer resolution and scheduler wake-ups do not decide a ratio of 100 µs steps.
MIN_SAMPLE_SECONDS = 0.02


@dataclass
class Case:
    section: str
    loss: str
    mask: str
    shape: str
    ours: Callable[[], torch.Tensor]
    plain: Callable[[], torch.Tensor]
    students: list  # the tensors that require grad
    v02: Callable[[], torch.Tensor] | None = None  # None: 0.2.x has no such loss, use plain


VARIANTS = ("ours", "plain", "v02")


def fwd_bwd(case: Case, which: str) -> Callable[[], tuple[torch.Tensor, tuple]]:
    fn = getattr(case, which)

    def step():
        loss = fn()
        return loss.detach(), torch.autograd.grad(loss, case.students)

    return step


def differences(ours: dict, other: dict) -> tuple[float, float, float]:
    """(|dvalue|, max |dgrad|, max |dgrad| / max |grad|) of ours against another variant."""
    grad_diff = max(
        (a.double() - b.double()).abs().max().item() for a, b in zip(ours["grads"], other["grads"])
    )
    grad_scale = max(b.double().abs().max().item() for b in other["grads"])
    value_diff = (ours["value"].double() - other["value"].double()).abs().item()
    return value_diff, grad_diff, grad_diff / grad_scale if grad_scale else 0.0


def measure(case: Case, reps: int, device) -> dict:
    variants = [which for which in VARIANTS if getattr(case, which) is not None]
    results = {}
    for which in variants:  # the memory runs double as the warm-up of the timed ones
        peak, (value, grads) = peak_memory(fwd_bwd(case, which), device)
        results[which] = {"peak": peak, "value": value, "grads": grads}
    single = min(timed(fwd_bwd(case, which), device) for which in variants)
    inner = max(1, min(500, int(MIN_SAMPLE_SECONDS / max(single, 1e-7))))
    times = {which: [] for which in variants}
    for rep in range(reps):
        # Interleaved, the order rotating each repetition: drifts in machine load hit all alike.
        order = variants[rep % len(variants) :] + variants[: rep % len(variants)]
        for which in order:
            times[which].append(timed(fwd_bwd(case, which), device, inner))
    if "v02" not in results:
        results["v02"], times["v02"] = results["plain"], times["plain"]
    ours = results["ours"]
    value_diff, grad_diff, grad_rel = differences(ours, results["plain"])
    v02_value_diff, _, v02_grad_rel = differences(ours, results["v02"])
    return {
        "section": case.section,
        "loss": case.loss,
        "mask": case.mask,
        "shape": case.shape,
        "ours_ms": 1e3 * statistics.median(times["ours"]),
        "plain_ms": 1e3 * statistics.median(times["plain"]),
        "v02_ms": 1e3 * statistics.median(times["v02"]),
        "ours_mib": ours["peak"] / 2**20,
        "plain_mib": results["plain"]["peak"] / 2**20,
        "v02_mib": results["v02"]["peak"] / 2**20,
        "v02_is_plain": case.v02 is None,
        "value": ours["value"].item(),
        "value_diff": value_diff,
        "grad_diff": grad_diff,
        "grad_rel_diff": grad_rel,
        "v02_value_diff": v02_value_diff,
        "v02_grad_rel_diff": v02_grad_rel,
    }


# -------------------------------------------------------------------------------------------------
# Cases
# -------------------------------------------------------------------------------------------------


def make_mask(batch, length, generator, device):
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=generator)
    return (torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)).long().to(device)


def attention_scores(shape, mask, generator, device):
    scores = torch.randn(shape, generator=generator).to(device)
    key_padding = (1 - mask.to(scores.dtype)) * -10000.0
    return scores + key_padding[:, None, None, :]


def shape_text(shape):
    return "x".join(str(n) for n in shape)


def attention_cases(section, shape, device, generator):
    batch, _, length, _ = shape
    mask = make_mask(batch, length, generator, device)
    S = attention_scores(shape, mask, generator, device).requires_grad_()
    T = attention_scores(shape, mask, generator, device)
    pairs = [
        ("attention_mse", losses.att_mse_loss, plain_att_mse, v02_att_mse),
        ("attention_mse_sum", losses.att_mse_sum_loss, plain_att_mse_sum, v02_att_mse_sum),
        ("attention_ce", losses.att_ce_loss, plain_att_ce, v02_att_ce),
        ("attention_ce_mean", losses.att_ce_mean_loss, plain_att_ce_mean, v02_att_ce_mean),
    ]
    return [
        Case(
            section,
            name,
            "yes" if m is not None else "no",
            shape_text(shape),
            lambda ours=ours, m=m: ours(S, T, m),
            lambda plain=plain, m=m: plain(S, T, m),
            [S],
            lambda v02=v02, m=m: v02(S, T, m),
        )  # fmt: skip
        for name, ours, plain, v02 in pairs
        for m in (None, mask)
    ]


def hidden_cases(section, shape, device, generator):
    batch, length, _ = shape
    mask = make_mask(batch, length, generator, device)

    def hidden(grad):
        return torch.randn(shape, generator=generator).to(device).requires_grad_(grad)

    S, T = hidden(True), hidden(False)
    S_pair, T_pair = (S, hidden(True)), (T, hidden(False))
    single = [
        ("hidden_mse", losses.hid_mse_loss, plain_hid_mse, v02_hid_mse),
        ("cos", losses.cos_loss, plain_cos, v02_cos),
        ("pkd", losses.pkd_loss, plain_pkd, v02_pkd),
    ]
    cases = [
        Case(
            section,
            name,
            "yes" if m is not None else "no",
            shape_text(shape),
            lambda ours=ours, m=m: ours(S, T, m),
            lambda plain=plain, m=m: plain(S, T, m),
            [S],
            lambda v02=v02, m=m: v02(S, T, m),
        )  # fmt: skip
        for name, ours, plain, v02 in single
        for m in ((None,) if name == "pkd" else (None, mask))
    ]
    pairs = [
        ("fsp", losses.fsp_loss, plain_fsp, v02_fsp),
        ("mmd", losses.mmd_loss, plain_mmd, v02_mmd),
    ]
    cases += [
        Case(
            section,
            name,
            "yes" if m is not None else "no",
            "2x" + shape_text(shape),
            lambda ours=ours, m=m: ours(S_pair, T_pair, m),
            lambda plain=plain, m=m: plain(S_pair, T_pair, m),
            list(S_pair),
            lambda v02=v02, m=m: v02(S_pair, T_pair, m),
        )  # fmt: skip
        for name, ours, plain, v02 in pairs
        for m in (None, mask)
    ]
    return cases


# name: (library loss, plain formula, 0.2.x formula or None where 0.2.x has no such loss)
KD_PAIRS = {
    "ce": (losses.kd_ce_loss, plain_kd_ce, v02_kd_ce),
    "kl": (losses.kd_kl_loss, plain_kd_kl, None),
    "reverse_kl": (losses.kd_reverse_kl_loss, plain_kd_reverse_kl, None),
    "mse": (losses.kd_mse_loss, plain_kd_mse, v02_kd_mse),
    "jsd": (losses.kd_jsd_loss, plain_kd_jsd, None),
    "bce": (losses.kd_bce_loss, plain_kd_bce, None),
}


def logits_cases(section, shape, names, device, generator, masks=(False,), dtype=None):
    """KD cases; with a mask (3-D logits), the baselines select the rows as 0.2.x does."""
    temperature = 4.0
    S = (3 * torch.randn(shape, generator=generator)).to(device, dtype).requires_grad_()
    T = (3 * torch.randn(shape, generator=generator)).to(device, dtype)
    mask = make_mask(shape[0], shape[1], generator, device) if len(shape) == 3 else None
    upcast = (lambda x: x.float()) if dtype in (torch.float16, torch.bfloat16) else (lambda x: x)
    cases = []
    for name in names:
        ours, plain, v02 = KD_PAIRS[name]
        for masked in masks:
            m = mask if masked else None
            plain_m, v02_m = selected(plain, m), None if v02 is None else selected(v02, m)
            cases.append(
                Case(
                    section,
                    name,
                    "yes" if masked else "no",
                    shape_text(shape),
                    lambda ours=ours, m=m: ours(S, T, temperature, logits_mask=m),
                    lambda f=plain_m: f(upcast(S), upcast(T), temperature),
                    [S],
                    None
                    if v02_m is None
                    else (lambda f=v02_m: f(upcast(S), upcast(T), temperature)),
                )  # fmt: skip
            )
    return cases


ALL_KD = ("ce", "kl", "reverse_kl", "mse", "jsd", "bce")

SIZES = {
    False: {
        "attention": (32, 12, 128, 128),
        "attention_small": (4, 2, 16, 16),
        "hidden": (32, 128, 768),
        "hidden_small": (4, 16, 32),
        "logits": (32, 128, 30522),
        "logits_small": (8, 32, 9),
        "classes_small": (32, 3),
        "large_vocab": (4, 1024, 32000),
        "reps": {
            "attention": 5,
            "attention_small": 21,
            "hidden": 5,
            "hidden_small": 21,
            "logits": 1,
            "logits_small": 21,
            "classes_small": 21,
            "large_vocab": 1,
            "large_vocab_bf16": 1,
        },
    },
    True: {
        "attention": (2, 2, 8, 8),
        "attention_small": (2, 2, 4, 4),
        "hidden": (2, 8, 16),
        "hidden_small": (2, 4, 8),
        "logits": (2, 4, 50),
        "logits_small": (2, 4, 5),
        "classes_small": (4, 3),
        "large_vocab": (2, 70, 2000),
        "reps": {
            "attention": 1,
            "attention_small": 1,
            "hidden": 1,
            "hidden_small": 1,
            "logits": 1,
            "logits_small": 1,
            "classes_small": 1,
            "large_vocab": 1,
            "large_vocab_bf16": 1,
        },
    },
}


def groups(sizes, device, generator):
    """(section, builder of its cases); inputs live only while their group runs."""
    both = (False, True)
    return [
        ("attention", lambda: attention_cases("attention", sizes["attention"], device, generator)),
        ("attention_small", lambda: attention_cases(
            "attention_small", sizes["attention_small"], device, generator)),
        ("hidden", lambda: hidden_cases("hidden", sizes["hidden"], device, generator)),
        ("hidden_small", lambda: hidden_cases(
            "hidden_small", sizes["hidden_small"], device, generator)),
        ("logits", lambda: logits_cases(
            "logits", sizes["logits"], ("ce", "mse"), device, generator, both)
            + logits_cases("logits", sizes["logits"], ("kl", "reverse_kl"), device, generator)),
        ("logits_small", lambda: logits_cases(
            "logits_small", sizes["logits_small"], ALL_KD, device, generator, both)),
        ("classes_small", lambda: logits_cases(
            "classes_small", sizes["classes_small"], ALL_KD, device, generator)),
        ("large_vocab", lambda: logits_cases(
            "large_vocab", sizes["large_vocab"], ("ce", "kl", "reverse_kl", "jsd", "bce"),
            device, generator)),
        ("large_vocab_bf16", lambda: logits_cases(
            "large_vocab_bf16", sizes["large_vocab"], ("ce", "kl", "jsd", "bce"), device,
            generator, (True,), torch.bfloat16)),
    ]  # fmt: skip


def run(smoke: bool = False, device: str | None = None, only: str | None = None) -> list[dict]:
    """Measures every case and returns one dict per row (see the module docstring).

    Args:
        smoke: tiny sizes, one repetition.
        device: ``'cpu'`` or ``'cuda'`` (default: CUDA when available).
        only: run only the sections whose name contains this text.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sizes = SIZES[smoke]
    generator = torch.Generator().manual_seed(0)
    rows = []
    for section, build in groups(sizes, device, generator):
        if only and only not in section:
            continue
        cases = build()
        for case in cases:
            row = measure(case, sizes["reps"][section], device)
            if section.startswith("large_vocab"):
                # Memory beyond the inputs, in logits tensors counted in float32.
                logits_mib = case.students[0].numel() * 4 / 2**20
                row["ours_x_logits"] = row["ours_mib"] / logits_mib
                row["plain_x_logits"] = row["plain_mib"] / logits_mib
            rows.append(row)
        del cases
    return rows


def ratio(a, b):
    return a / b if b else float("nan")


def format_table(rows: list[dict]) -> str:
    header = (
        f"{'section':<16} {'loss':<17} {'mask':<4} {'shape':<14} {'ours ms':>8} "
        f"{'0.2.x ms':>8} {'time x':>6} {'ours MiB':>9} {'0.2.x MiB':>9} {'mem x':>6} "
        f"{'plain ms':>8} {'plain MiB':>9} {'|dvalue|':>8} {'|dgrad|/max':>11}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        baseline = "*" if row["v02_is_plain"] else " "
        lines.append(
            f"{row['section']:<16} {row['loss']:<17} {row['mask']:<4} {row['shape']:<14} "
            f"{row['ours_ms']:>8.2f} {row['v02_ms']:>7.2f}{baseline} "
            f"{ratio(row['ours_ms'], row['v02_ms']):>6.2f} "
            f"{row['ours_mib']:>9.2f} {row['v02_mib']:>9.2f} "
            f"{ratio(row['ours_mib'], row['v02_mib']):>6.2f} "
            f"{row['plain_ms']:>8.2f} {row['plain_mib']:>9.2f} "
            f"{row['value_diff']:>8.1e} {row['grad_rel_diff']:>11.1e}"
        )
    lines.append("* 0.2.x has no such loss: the baseline is the plain formula")
    large = [row for row in rows if row["section"].startswith("large_vocab")]
    if large:
        lines += ["", "large-vocabulary KD: memory beyond the inputs, in float32 logits tensors"]
        for row in large:
            lines.append(
                f"  {row['section']:<16} {row['loss']:<11} {row['shape']}: ours "
                f"{row['ours_x_logits']:.2f}x, plain {row['plain_x_logits']:.2f}x; time "
                f"{row['ours_ms']:.0f} ms vs {row['plain_ms']:.0f} ms; |dvalue| "
                f"{row['value_diff']:.1e} (value {row['value']:.4f}), max |dgrad| "
                f"{row['grad_diff']:.1e}"
            )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repetition")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's); 1 gives steadier CPU timings on a busy "
        "machine, where a second thread mostly waits to be scheduled",
    )
    parser.add_argument("--only", default=None, help="run only sections containing this text")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    print(f"torch {torch.__version__} on {device}, {torch.get_num_threads()} threads")
    print(format_table(run(smoke=args.smoke, device=args.device, only=args.only)))


if __name__ == "__main__":
    main()
