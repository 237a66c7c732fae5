"""docs/troubleshooting.rst: each of the ten errors it documents is raised with the quoted message.

When a message changes, this test fails; update the page together with the message.
"""

import re
from pathlib import Path

import pytest
import torch

from tests.conftest import make_batches, make_models, simple_adaptor, training_config
from textbrewer import BasicDistiller, DistillationConfig, GeneralDistiller, TrainingConfig

PAGE = Path(__file__).resolve().parent.parent / "docs" / "troubleshooting.rst"


def match(layer_T=3, layer_S=2, **extra):
    return {"layer_T": layer_T, "layer_S": layer_S, "feature": "hidden", "loss": "hidden_mse"} | {
        "weight": 1,
        **extra,
    }


def train(tmp_path, matches=None, adaptor_S=simple_adaptor, scheduler=False, **call):
    teacher, student = make_models(dtype=torch.float32, teacher_dim=8, student_dim=4)
    distiller = GeneralDistiller(
        training_config(tmp_path),
        DistillationConfig(intermediate_matches=matches),
        teacher,
        student,
        simple_adaptor,
        adaptor_S,
    )
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    distiller.train(
        optimizer,
        lr_scheduler if scheduler else None,
        make_batches(2),
        call.pop("epochs", 1),
        **call,
    )


def nan_hard_label(batch, outputs):
    result = simple_adaptor(batch, outputs)
    result["losses"] = result["losses"] * float("nan")
    return result


SCENARIOS = {
    "cuda": (
        RuntimeError,
        "TrainingConfig `device`='cuda' asks for CUDA, which is not available on this machine; "
        "pass device='cpu' to train on the CPU, or device='auto' to use CUDA only where it is "
        "available",
        lambda tmp_path: BasicDistiller(
            TrainingConfig(output_dir=str(tmp_path / "out")),
            DistillationConfig(),
            *make_models(),
            simple_adaptor,
            simple_adaptor,
        ),
    ),
    "registry": (
        ValueError,  # a ConfigError, both ValueError and TypeError
        "DistillationConfig: `intermediate_matches[0].loss`='hiden_mse' is not in "
        "MATCH_LOSS_MAP (known: 'attention_ce', 'attention_ce_mean', 'attention_mse', ",
        lambda tmp_path: DistillationConfig(intermediate_matches=[match(loss="hiden_mse")]),
    ),
    "missing key": (
        ValueError,
        "DistillationConfig: `intermediate_matches[0]` is missing key(s) ['weight']",
        lambda tmp_path: DistillationConfig(
            intermediate_matches=[{k: v for k, v in match().items() if k != "weight"}]
        ),
    ),
    "shape": (
        ValueError,
        "intermediate_matches[0] (hidden, loss 'hidden_mse', layer_S=2, layer_T=3): student "
        "shape (4, 6, 4) != teacher shape (4, 6, 8); add 'proj': ['linear', 4, 8] to project the "
        "student's feature",
        lambda tmp_path: train(tmp_path, [match()]),
    ),
    "index": (
        IndexError,
        "intermediate_matches[0]: layer_T=12 is out of range of adaptor_T's 'hidden' list of "
        "length 4",
        lambda tmp_path: train(tmp_path, [match(layer_T=12, proj=["linear", 4, 8])]),
    ),
    "feature": (
        KeyError,
        "intermediate_matches[0] (attention_attention_mse_1_1) needs adaptor_S to return "
        "'attention'; it returned keys ['hidden', 'logits']",
        lambda tmp_path: train(
            tmp_path,
            [match(1, 1, feature="attention", loss="attention_mse")],
            adaptor_S=lambda batch, outputs: {"logits": outputs[0], "hidden": outputs[1]},
        ),
    ),
    "not a dict": (
        TypeError,
        "adaptor_S must return a dict with keys among ['logits', 'logits_mask', 'losses', "
        "'inputs_mask', 'labels', 'hidden', 'attention'], got tuple",
        lambda tmp_path: train(tmp_path, adaptor_S=lambda batch, outputs: outputs),
    ),
    "ckpt_steps": (
        ValueError,
        "training by `num_steps`=10 needs TrainingConfig(ckpt_steps=...) to know when to save "
        "checkpoints; it is None",
        lambda tmp_path: train(tmp_path, epochs=None, num_steps=10),
    ),
    "scheduler": (
        ValueError,
        "a pre-built `scheduler` cannot schedule the projection layers' param groups, which "
        "train() adds to the optimizer; pass `scheduler_class` and `scheduler_args` instead",
        lambda tmp_path: train(tmp_path, [match(proj=["linear", 4, 8])], scheduler=True),
    ),
    "non-finite": (
        FloatingPointError,
        "the total loss is nan at optimizer step 1 (micro-batch 0); loss parts: "
        "unweighted_kd_loss=",
        lambda tmp_path: train(tmp_path, adaptor_S=nan_hard_label),
    ),
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_each_documented_error_is_raised_with_the_message_the_page_quotes(name, tmp_path):
    error, message, trigger = SCENARIOS[name]
    if name == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(error) as raised:
        trigger(tmp_path)
    text = str(raised.value).strip("\"'")
    assert message in text
    # The page quotes it, wrapped over lines: compare with whitespace collapsed.
    page = " ".join(PAGE.read_text(encoding="utf-8").split())
    assert " ".join(message.split()) in page


def test_the_page_has_ten_numbered_errors():
    titles = re.findall(r"^(\d+)\. ", PAGE.read_text(encoding="utf-8"), flags=re.MULTILINE)
    assert titles == [str(number) for number in range(1, 11)]
