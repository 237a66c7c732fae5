"""Hand-written float64 reference loops for the 0.2.x-style scripts (SPEC §4-§6 written out).

Nothing here uses textbrewer: each formula is the SPEC's, written with plain torch ops, so a
library result that matches them is the 0.2.x computation.
"""

import runpy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

SCRIPTS = Path(__file__).parent / "scripts"


def load_script(name):
    """The script's functions and classes (its __main__ block does not run)."""
    return runpy.run_path(str(SCRIPTS / f"{name}.py"), run_name=f"compat_{name}")


def run_script(name, *argv):
    """Runs the script as `python scripts/<name>.py argv...` would, in this process.

    Returns the script's globals (a script may keep what its main() returned in `RESULT`).
    """
    saved = sys.argv
    sys.argv = [str(SCRIPTS / f"{name}.py"), *map(str, argv)]
    try:
        return runpy.run_path(str(SCRIPTS / f"{name}.py"), run_name="__main__")
    finally:
        sys.argv = saved
        torch.set_default_dtype(torch.float32)


def kd_ce(logits_S, logits_T, temperature):
    """SPEC §6 `ce`: mean over rows of -sum_c softmax(l_T/T) * log_softmax(l_S/T)."""
    p_T = F.softmax(logits_T / temperature, dim=-1)
    return -(p_T * F.log_softmax(logits_S / temperature, dim=-1)).sum(-1).mean()


def hidden_mse(student, teacher, mask):
    """SPEC §6 `hidden_mse` with a mask: sum (S-T)^2 m / (sum m * D)."""
    squared = (student - teacher) ** 2 * mask.unsqueeze(-1)
    return squared.sum() / (mask.sum() * student.shape[-1])


def linear_projection(dim_in, dim_out):
    """SPEC §7 `linear`: nn.Linear (its default init runs), then N(0, 0.02) weights, 0 bias."""
    layer = torch.nn.Linear(dim_in, dim_out)
    with torch.no_grad():
        layer.weight.normal_(0, 0.02)
        layer.bias.zero_()
    return layer


def state_of(*modules):
    """A detached copy of the modules' state dicts, in order."""
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]


def assert_same_state(actual, expected, rtol=1e-10, atol=1e-12):
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=rtol, atol=atol, msg=key)
