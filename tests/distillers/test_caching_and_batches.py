"""Logits caching, teacher/student sub-batches, teacher_cache and custom matches."""

import copy

import pytest
import torch

import textbrewer
from tests.conftest import make_batches, make_models, simple_adaptor, training_config


class CountingTeacher(torch.nn.Module):
    def __init__(self, teacher):
        super().__init__()
        self.teacher, self.calls = teacher, 0

    def forward(self, *args):
        self.calls += 1
        return self.teacher(*args)


def test_caching_runs_the_teacher_once_per_batch_and_uses_its_logits(tmp_path):
    teacher, student = make_models()
    counting = CountingTeacher(teacher)
    batches = make_batches(5)
    seen = []

    class Recorder(textbrewer.BasicDistiller):
        def compute_loss(self, results_S, results_T):
            seen.append(results_T["logits"][0].clone())
            return super().compute_loss(results_S, results_T)

    distiller = Recorder(
        training_config(tmp_path),
        textbrewer.DistillationConfig(is_caching_logits=True),
        counting,
        student,
        simple_adaptor,
        simple_adaptor,
    )
    distiller.train(torch.optim.SGD(student.parameters(), lr=0.1), None, batches, 3)
    assert counting.calls == 5
    fresh = {tuple(teacher(*b)[0].detach().flatten().tolist()) for b in batches}
    assert len(seen) == 15
    assert {tuple(t.flatten().tolist()) for t in seen} == fresh


def test_caching_shuffles_with_python_random_each_epoch(tmp_path):
    import random

    teacher, student = make_models()
    batches = make_batches(6)
    order = []

    def adaptor(batch, outputs):
        order.append(int(batch[0][0, 0]))
        return simple_adaptor(batch, outputs)

    distiller = textbrewer.BasicDistiller(
        training_config(tmp_path),
        textbrewer.DistillationConfig(is_caching_logits=True),
        teacher,
        student,
        simple_adaptor,
        adaptor,
    )
    random.seed(3)
    distiller.train(torch.optim.SGD(student.parameters(), lr=0.1), None, batches, 2)
    random.seed(3)
    expected, indices = [], list(range(6))
    for _ in range(2):
        random.shuffle(indices)
        expected.extend(int(batches[i][0][0, 0]) for i in indices)
    assert order == expected


def test_caching_in_step_mode_raises(tmp_path):
    teacher, student = make_models()
    distiller = textbrewer.BasicDistiller(
        training_config(tmp_path, ckpt_steps=1),
        textbrewer.DistillationConfig(is_caching_logits=True),
        teacher,
        student,
        simple_adaptor,
        simple_adaptor,
    )
    with pytest.raises(ValueError, match="epoch mode only"):
        distiller.train(
            torch.optim.SGD(student.parameters(), lr=0.1), None, make_batches(2), None, num_steps=2
        )


def test_general_distiller_ignores_caching_with_a_warning(tmp_path, caplog):
    teacher, student = make_models()
    textbrewer.GeneralDistiller(
        training_config(tmp_path),
        textbrewer.DistillationConfig(is_caching_logits=True),
        teacher,
        student,
        simple_adaptor,
        simple_adaptor,
    )
    assert "ignores is_caching_logits" in caplog.text


def test_teacher_and_student_sub_batches_and_teacher_cache(tmp_path):
    teacher, student = make_models()
    batches = make_batches(3)
    received = []

    def adaptor_T(batch, outputs):
        received.append(("T", batch, outputs))
        return {"logits": outputs[0]}

    def adaptor_S(batch, outputs):
        received.append(("S", batch))
        return {"logits": outputs[0]}

    split = [{"teacher": b, "student": b, "teacher_cache": (torch.ones(4, 3),)} for b in batches]
    distiller = textbrewer.BasicDistiller(
        training_config(tmp_path),
        textbrewer.DistillationConfig(),
        CountingTeacher(teacher),
        student,
        adaptor_T,
        adaptor_S,
    )
    distiller.train(torch.optim.SGD(student.parameters(), lr=0.1), None, split, 1)
    assert distiller.model_T.calls == 0
    teacher_outputs = [item[2] for item in received if item[0] == "T"]
    assert all(torch.equal(o[0], torch.ones(4, 3)) for o in teacher_outputs)


def test_dict_batches_and_model_args_reach_the_models(tmp_path):
    class KeywordModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 2)

        def forward(self, features, scale):
            return self.linear(features) * scale

    teacher, student = KeywordModel(), KeywordModel()
    batches = [{"features": torch.randn(4, 3)} for _ in range(2)]
    adaptor = lambda batch, out: {"logits": out}  # noqa: E731
    distiller = textbrewer.BasicDistiller(
        training_config(tmp_path),
        textbrewer.DistillationConfig(),
        teacher,
        student,
        adaptor,
        adaptor,
    )
    distiller.train(torch.optim.SGD(student.parameters(), lr=0.1), None, batches, 1, scale=2.0)


def test_custom_matches_add_their_loss_through_forward_hooks(tmp_path):
    teacher, student = make_models()
    reference = copy.deepcopy(student)
    batches = make_batches(3)
    l1 = lambda S, T, mask_S, mask_T: (S - T).abs().mean()  # noqa: E731
    distiller = textbrewer.GeneralDistiller(
        training_config(tmp_path),
        textbrewer.DistillationConfig(kd_loss_weight=0),
        teacher,
        student,
        simple_adaptor,
        simple_adaptor,
        custom_matches=[
            {"module_T": teacher.head, "module_S": student.head, "weight": 3, "loss": l1}
        ],
    )
    parts = []
    original = distiller.compute_loss

    def spy(results_S, results_T):
        total, named = original(results_S, results_T)
        parts.append(sorted(named))
        return total, named

    distiller.compute_loss = spy
    distiller.train(torch.optim.SGD(student.parameters(), lr=0.1), None, batches, 1)
    assert parts[0] == [
        "unweighted_custom_match_0",
        "unweighted_hard_label_loss",
        "unweighted_kd_loss",
    ]
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    for batch in batches:
        with torch.no_grad():
            out_T = teacher(*batch)[0]
        out_S = reference(*batch)[0]
        ((out_S - out_T).abs().mean() * 3).backward()
        optimizer.step()
        optimizer.zero_grad()
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(student.state_dict()[key], value, rtol=1e-10, atol=1e-10)


def test_subclass_adds_its_own_loss_term_and_it_is_logged(tmp_path, monkeypatch):
    logged = []
    from textbrewer.training import loss_log as _logging

    original_write = _logging.LossLog._write
    monkeypatch.setattr(
        _logging.LossLog,
        "_write",
        lambda self, rows: (logged.extend(rows), original_write(self, rows)),
    )

    class WithL2(textbrewer.GeneralDistiller):
        def compute_loss(self, results_S, results_T):
            total, parts = super().compute_loss(results_S, results_T)
            l2 = sum((p**2).sum() for p in self.model_S.parameters())
            parts["l2_penalty"] = l2
            return total + 1e-3 * l2, parts

    teacher, student = make_models()
    distiller = WithL2(
        training_config(tmp_path),
        textbrewer.DistillationConfig(),
        teacher,
        student,
        simple_adaptor,
        simple_adaptor,
    )
    distiller.train(torch.optim.SGD(student.parameters(), lr=0.1), None, make_batches(2), 1)
    assert all("l2_penalty" in parts for _, _, _, parts in logged)
    total, parts = logged[0][2], logged[0][3]
    assert total == pytest.approx(parts["unweighted_kd_loss"] + 1e-3 * parts["l2_penalty"])


def test_multi_teacher_teacher_cache_holds_one_output_per_teacher(tmp_path):
    teachers = [CountingTeacher(make_models(seed=s)[0]) for s in (1, 2)]
    _, student = make_models(seed=3)
    logits = []

    def adaptor_T(batch, outputs):
        logits.append(outputs[0])
        return {"logits": outputs[0]}

    batches = [
        {"teacher": b, "student": b, "teacher_cache": [(torch.ones(4, 3),), (torch.zeros(4, 3),)]}
        for b in make_batches(2)
    ]
    distiller = textbrewer.MultiTeacherDistiller(
        training_config(tmp_path),
        textbrewer.DistillationConfig(),
        teachers,
        student,
        adaptor_T,
        lambda b, o: {"logits": o[0]},
    )
    distiller.train(torch.optim.SGD(student.parameters(), lr=0.1), None, batches, 1)
    assert [t.calls for t in teachers] == [0, 0]
    assert [float(t.mean()) for t in logits] == [1.0, 0.0, 1.0, 0.0]
    bad = [{**batches[0], "teacher_cache": [(torch.ones(4, 3),)]}]
    with pytest.raises(ValueError, match="one output per teacher"):
        distiller.train(torch.optim.SGD(student.parameters(), lr=0.1), None, bad, 1)
