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


def timed(step, device) -> float:
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - start


@dataclass
class Case:
    section: str
    loss: str
    mask: str
    shape: str
    ours: Callable[[], torch.Tensor]
    plain: Callable[[], torch.Tensor]
    students: list  # the tensors that require grad


def fwd_bwd(case: Case, which: str) -> Callable[[], tuple[torch.Tensor, tuple]]:
    fn = case.ours if which == "ours" else case.plain

    def step():
        loss = fn()
        return loss.detach(), torch.autograd.grad(loss, case.students)

    return step


def measure(case: Case, reps: int, device) -> dict:
    results = {}
    for which in ("ours", "plain"):  # the memory runs double as the warm-up of the timed ones
        peak, (value, grads) = peak_memory(fwd_bwd(case, which), device)
        results[which] = {"peak": peak, "value": value, "grads": grads}
    times = {"ours": [], "plain": []}
    for _ in range(reps):
        for which in ("ours", "plain"):
            times[which].append(timed(fwd_bwd(case, which), device))
    ours, plain = results["ours"], results["plain"]
    grad_diff = max(
        (a.double() - b.double()).abs().max().item() for a, b in zip(ours["grads"], plain["grads"])
    )
    grad_scale = max(b.double().abs().max().item() for b in plain["grads"])
    return {
        "section": case.section,
        "loss": case.loss,
        "mask": case.mask,
        "shape": case.shape,
        "ours_ms": 1e3 * statistics.median(times["ours"]),
        "plain_ms": 1e3 * statistics.median(times["plain"]),
        "ours_mib": ours["peak"] / 2**20,
        "plain_mib": plain["peak"] / 2**20,
        "value": ours["value"].item(),
        "value_diff": (ours["value"].double() - plain["value"].double()).abs().item(),
        "grad_diff": grad_diff,
        "grad_rel_diff": grad_diff / grad_scale if grad_scale else 0.0,
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


def attention_cases(shape, device, generator):
    batch, _, length, _ = shape
    mask = make_mask(batch, length, generator, device)
    S = attention_scores(shape, mask, generator, device).requires_grad_()
    T = attention_scores(shape, mask, generator, device)
    pairs = [
        ("attention_mse", losses.att_mse_loss, plain_att_mse),
        ("attention_mse_sum", losses.att_mse_sum_loss, plain_att_mse_sum),
        ("attention_ce", losses.att_ce_loss, plain_att_ce),
        ("attention_ce_mean", losses.att_ce_mean_loss, plain_att_ce_mean),
    ]
    return [
        Case(
            "attention",
            name,
            "yes" if m is not None else "no",
            shape_text(shape),
            lambda ours=ours, m=m: ours(S, T, m),
            lambda plain=plain, m=m: plain(S, T, m),
            [S],
        )  # fmt: skip
        for name, ours, plain in pairs
        for m in (None, mask)
    ]


def hidden_cases(shape, device, generator):
    batch, length, _ = shape
    mask = make_mask(batch, length, generator, device)

    def hidden(grad):
        return torch.randn(shape, generator=generator).to(device).requires_grad_(grad)

    S, T = hidden(True), hidden(False)
    S_pair, T_pair = (S, hidden(True)), (T, hidden(False))
    single = [
        ("hidden_mse", losses.hid_mse_loss, plain_hid_mse),
        ("cos", losses.cos_loss, plain_cos),
        ("pkd", losses.pkd_loss, plain_pkd),
    ]
    cases = [
        Case(
            "hidden",
            name,
            "yes" if m is not None else "no",
            shape_text(shape),
            lambda ours=ours, m=m: ours(S, T, m),
            lambda plain=plain, m=m: plain(S, T, m),
            [S],
        )  # fmt: skip
        for name, ours, plain in single
        for m in ((None,) if name == "pkd" else (None, mask))
    ]
    pairs = [("fsp", losses.fsp_loss, plain_fsp), ("mmd", losses.mmd_loss, plain_mmd)]
    cases += [
        Case(
            "hidden",
            name,
            "yes" if m is not None else "no",
            "2x" + shape_text(shape),
            lambda ours=ours, m=m: ours(S_pair, T_pair, m),
            lambda plain=plain, m=m: plain(S_pair, T_pair, m),
            list(S_pair),
        )  # fmt: skip
        for name, ours, plain in pairs
        for m in (None, mask)
    ]
    return cases


KD_PAIRS = [
    ("ce", losses.kd_ce_loss, plain_kd_ce),
    ("kl", losses.kd_kl_loss, plain_kd_kl),
    ("reverse_kl", losses.kd_reverse_kl_loss, plain_kd_reverse_kl),
    ("mse", losses.kd_mse_loss, plain_kd_mse),
]


def logits_cases(section, shape, names, device, generator, temperature=4.0):
    S = (3 * torch.randn(shape, generator=generator)).to(device).requires_grad_()
    T = (3 * torch.randn(shape, generator=generator)).to(device)
    return [
        Case(
            section,
            name,
            "-",
            shape_text(shape),
            lambda ours=ours: ours(S, T, temperature),
            lambda plain=plain: plain(S, T, temperature),
            [S],
        )  # fmt: skip
        for name, ours, plain in KD_PAIRS
        if name in names
    ]


SIZES = {
    False: {
        "attention": (32, 12, 128, 128),
        "hidden": (32, 128, 768),
        "logits": (32, 128, 30522),
        "large_vocab": (4, 1024, 32000),
        "reps": {"attention": 5, "hidden": 3, "logits": 1, "large_vocab": 1},
    },
    True: {
        "attention": (2, 2, 8, 8),
        "hidden": (2, 8, 16),
        "logits": (2, 4, 50),
        "large_vocab": (2, 70, 2000),
        "reps": {"attention": 1, "hidden": 1, "logits": 1, "large_vocab": 1},
    },
}


def run(smoke: bool = False, device: str | None = None) -> list[dict]:
    """Measures every case and returns one dict per row (see the module docstring)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sizes = SIZES[smoke]
    generator = torch.Generator().manual_seed(0)
    rows = []
    groups = [
        ("attention", lambda: attention_cases(sizes["attention"], device, generator)),
        ("hidden", lambda: hidden_cases(sizes["hidden"], device, generator)),
        (
            "logits",
            lambda: logits_cases(
                "logits", sizes["logits"], {"ce", "kl", "reverse_kl", "mse"}, device, generator
            ),
        ),
        (
            "large_vocab",
            lambda: logits_cases(
                "large_vocab", sizes["large_vocab"], {"ce", "kl", "reverse_kl"}, device, generator
            ),
        ),
    ]
    for section, build in groups:
        cases = build()  # inputs live only while their group runs
        for case in cases:
            row = measure(case, sizes["reps"][section], device)
            if section == "large_vocab":
                logits_mib = case.students[0].numel() * case.students[0].element_size() / 2**20
                row["ours_x_logits"] = row["ours_mib"] / logits_mib
                row["plain_x_logits"] = row["plain_mib"] / logits_mib
            rows.append(row)
        del cases
    return rows


def ratio(a, b):
    return a / b if b else float("nan")


def format_table(rows: list[dict]) -> str:
    header = (
        f"{'section':<11} {'loss':<17} {'mask':<4} {'shape':<16} {'ours ms':>9} {'plain ms':>9} "
        f"{'time x':>6} {'ours MiB':>9} {'plain MiB':>9} {'mem x':>6} {'|dvalue|':>9} "
        f"{'|dgrad|/max':>11}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['section']:<11} {row['loss']:<17} {row['mask']:<4} {row['shape']:<16} "
            f"{row['ours_ms']:>9.1f} {row['plain_ms']:>9.1f} "
            f"{ratio(row['ours_ms'], row['plain_ms']):>6.2f} "
            f"{row['ours_mib']:>9.1f} {row['plain_mib']:>9.1f} "
            f"{ratio(row['ours_mib'], row['plain_mib']):>6.2f} "
            f"{row['value_diff']:>9.1e} {row['grad_rel_diff']:>11.1e}"
        )
    large = [row for row in rows if row["section"] == "large_vocab"]
    if large:
        lines += ["", "large-vocabulary KD: memory beyond the two inputs, in logits tensors"]
        for row in large:
            lines.append(
                f"  {row['loss']:<11} {row['shape']}: ours {row['ours_x_logits']:.2f}x, "
                f"plain {row['plain_x_logits']:.2f}x; time {row['ours_ms']:.0f} ms vs "
                f"{row['plain_ms']:.0f} ms; |dvalue| {row['value_diff']:.1e} "
                f"(value {row['value']:.4f}), max |dgrad| {row['grad_diff']:.1e}"
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
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    print(f"torch {torch.__version__} on {device}, {torch.get_num_threads()} threads")
    print(format_table(run(smoke=args.smoke, device=args.device)))


if __name__ == "__main__":
    main()
