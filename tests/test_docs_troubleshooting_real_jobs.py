"""docs/troubleshooting.rst, "Real jobs": the quoted messages are the ones the library raises."""

from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

import textbrewer
from tests.conftest import make_batches, make_models, simple_adaptor, training_config

PAGE = " ".join(
    (Path(__file__).resolve().parent.parent / "docs" / "troubleshooting.rst")
    .read_text(encoding="utf-8")
    .split()
)


def train(tmp_path, *arguments, adaptor_T=simple_adaptor, **keywords):
    teacher, student = make_models()
    distiller = textbrewer.BasicDistiller(
        training_config(tmp_path),
        textbrewer.DistillationConfig(),
        teacher,
        student,
        adaptor_T,
        simple_adaptor,
    )
    optimizer = keywords.pop("optimizer", None) or torch.optim.SGD(student.parameters(), lr=0.1)
    if callable(optimizer) and not isinstance(optimizer, torch.optim.Optimizer):
        optimizer = optimizer(teacher)
    distiller.train(optimizer, *arguments, **keywords)


def dataset():
    ids, masks, labels = zip(*make_batches(2))
    return TensorDataset(torch.cat(ids), torch.cat(masks), torch.cat(labels))


SCENARIOS = {
    "dataset": (
        "`dataloader` is a TensorDataset, which yields single examples, not batches",
        lambda tmp_path: train(tmp_path, None, dataset(), 1),
    ),
    "scheduler class": (
        "`scheduler`=StepLR is a class, not an LR scheduler built over the optimizer",
        lambda tmp_path: train(tmp_path, torch.optim.lr_scheduler.StepLR, make_batches(1), 1),
    ),
    "optimizer": (
        "`optimizer` (SGD) holds the teacher's parameters and none of the student's trainable "
        "parameters, so training would change nothing",
        lambda tmp_path: train(
            tmp_path,
            None,
            make_batches(1),
            1,
            optimizer=lambda teacher: torch.optim.SGD(teacher.parameters(), lr=0.1),
        ),
    ),
    "postprocessor": (
        "`batch_postprocessor` returned None",
        lambda tmp_path: train(tmp_path, None, make_batches(1), 1, batch_postprocessor=print),
    ),
    "logits": (
        "logits[0]: adaptor_S returned shape (4, 3), adaptor_T (4, 2)",
        lambda tmp_path: train(
            tmp_path, None, make_batches(1), 1, adaptor_T=lambda b, o: {"logits": o[0][:, :2]}
        ),
    ),
    "losses none": (
        "adaptor_T: `losses` is None (a Hugging Face model returns `loss` only when the batch "
        "holds `labels`)",
        lambda tmp_path: train(
            tmp_path, None, make_batches(1), 1, adaptor_T=lambda b, o: {"losses": None}
        ),
    ),
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_the_real_jobs_section_quotes_the_raised_message(name, tmp_path):
    message, trigger = SCENARIOS[name]
    with pytest.raises((TypeError, ValueError)) as raised:
        trigger(tmp_path)
    assert message in str(raised.value)
    assert " ".join(message.split()) in PAGE
