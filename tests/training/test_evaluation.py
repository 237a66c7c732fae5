"""Evaluation: the callback's metrics, the cadence, and how metrics are reported."""

import logging

import numpy as np
import pytest
import torch

from tests.conftest import training_config
from tests.tensorboard_events import read_scalars
from textbrewer.training.evaluation import Evaluation, check_evaluation, report_metrics


def test_callback_metrics_become_floats_and_the_model_goes_back_to_train_mode():
    model = torch.nn.Linear(2, 2)
    seen = []

    def callback(model, step):
        seen.append((model.training, step))
        model.eval()
        return {"acc": np.float32(0.5), "loss": torch.tensor(1.25), "count": 3}

    evaluation = Evaluation(callback, eval_steps=None)
    assert evaluation(model, 7) == {"acc": 0.5, "loss": 1.25, "count": 3.0}
    assert seen == [(True, 7)]
    assert model.training
    assert evaluation.last_metrics == {"acc": 0.5, "loss": 1.25, "count": 3.0}


def test_a_0_2_callback_returning_none_gives_no_metrics():
    evaluation = Evaluation(lambda model, step: None, eval_steps=None)
    assert evaluation(torch.nn.Linear(1, 1), 1) == {}
    assert Evaluation(None, eval_steps=None)(torch.nn.Linear(1, 1), 1) == {}


def test_what_is_not_a_number_is_ignored_with_one_warning(caplog):
    evaluation = Evaluation(None, eval_steps=None)
    with caplog.at_level(logging.WARNING, logger="textbrewer"):
        assert evaluation.metrics_from((0.5, 0.6)) == {}
        assert evaluation.metrics_from((0.5, 0.6)) == {}
        assert evaluation.metrics_from({"acc": 0.5, "name": "dev", "flag": True}) == {"acc": 0.5}
        assert evaluation.metrics_from({"name": "dev"}) == {}
    messages = [r.getMessage() for r in caplog.records]
    assert sum("returned tuple, not a dict" in m for m in messages) == 1
    assert sum("'name'='dev' is not a number" in m for m in messages) == 1
    assert sum("'flag'=True is not a number" in m for m in messages) == 1


def test_cadence_is_every_eval_steps_and_off_by_default():
    assert [s for s in range(1, 11) if Evaluation(None, 3).is_due(s)] == [3, 6, 9]
    assert not any(Evaluation(None, None).is_due(s) for s in range(1, 11))


@pytest.mark.parametrize(("field", "value"), [("eval_steps", 5), ("metric_for_best_model", "acc")])
def test_evaluation_settings_need_a_callback(tmp_path, field, value):
    config = training_config(tmp_path, **{field: value})
    with pytest.raises(ValueError, match=f"`{field}`={value!r} needs a `callback`"):
        check_evaluation(config, None)
    check_evaluation(config, lambda model, step: None)
    check_evaluation(training_config(tmp_path), None)


def test_report_writes_eval_scalars_at_the_step_and_one_log_line(tmp_path, caplog):
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path / "tb"))
    with caplog.at_level(logging.INFO, logger="textbrewer"):
        report_metrics({"acc": 0.75, "f1": 0.5}, 12, writer)
        report_metrics({}, 13, writer)
    writer.close()
    assert read_scalars(tmp_path / "tb") == {"eval/acc": [(12, 0.75)], "eval/f1": [(12, 0.5)]}
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["Evaluation at step 12: acc=0.75, f1=0.5"]
