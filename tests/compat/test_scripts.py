"""TextBrewer 0.2.x-style scripts (tests/compat/scripts) run unchanged, checked against SPEC.

Each test runs a script as its command line would, then compares the checkpoints it wrote (the
list of files and the weights in them) with a hand-written float64 loop of what SPEC says 0.2.x
computes (tests/compat/compat_reference.py).
"""

import pytest
import torch
import torch.nn.functional as F
from compat_reference import (
    assert_same_state,
    hidden_mse,
    kd_ce,
    linear_projection,
    load_script,
    run_script,
)

from tests.conftest import checkpoint_steps


def _basic_reference(epochs, ckpt_epoch_frequency, batches=4):
    torch.set_default_dtype(torch.float64)
    try:
        script = load_script("basic_float_epochs")
        teacher, student = script["build_models"](0)
        data = script["make_data"](batches)
        optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
        steps_per_epoch, saved, step, kd_weight = len(data), {}, 0, 1.0
        total = steps_per_epoch * epochs  # as given: 3.5 epochs schedule over 14 steps
        for epoch in range(int(epochs)):
            for features, labels in data:
                with torch.no_grad():
                    logits_T = teacher(features, labels)[0]
                logits_S = student(features, labels)[0]
                kd = kd_ce(logits_S, logits_T, 4.0)
                loss = kd_weight * kd + 0.5 * F.cross_entropy(logits_S, labels)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                step += 1
                kd_weight = 1 - step / total  # linear_decay(global_step / total)
                number = epoch + 1
                due = number % ckpt_epoch_frequency == 0 or number == epochs
                if due and step % steps_per_epoch in {0, 2}:  # ckpt_frequency=2 offsets
                    saved[step] = {k: v.clone() for k, v in student.state_dict().items()}
        return saved
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize(
    ("epochs", "steps"),
    [
        ("3.0", [6, 8, 10, 12]),  # epoch 2 (a multiple of 2) and epoch 3 (the last)
        ("3", [6, 8, 10, 12]),  # the same as the float
        ("3.5", [6, 8]),  # 3 epochs run; epoch 3 is not the last of 3.5, so only epoch 2 saves
    ],
)
def test_argparse_float_epochs_train_as_0_2_x(tmp_path, epochs, steps):
    out = tmp_path / "out"
    if epochs == "3.5":
        with pytest.warns(UserWarning, match=r"`num_epochs`=3.5 is not a whole number.*runs"):
            run_script("basic_float_epochs", "--output_dir", out, "--num_train_epochs", epochs)
    else:
        run_script("basic_float_epochs", "--output_dir", out, "--num_train_epochs", epochs)
    assert checkpoint_steps(out) == steps
    expected = _basic_reference(float(epochs), ckpt_epoch_frequency=2)
    assert sorted(expected) == steps
    for step in steps:
        assert_same_state(torch.load(out / f"gs{step}.pkl"), expected[step])


def _mnli_reference(epochs=2.0, batches=8, accumulation=2, lr=1e-2):
    torch.set_default_dtype(torch.float64)
    try:
        script = load_script("general_mnli")
        teacher, student = script["build_models"](0)
        projections = [linear_projection(6, 8), linear_projection(6, 8)]  # match order
        initial = [p.weight.detach().clone() for p in projections]
        data = script["make_data"](batches)
        optimizer = torch.optim.AdamW(script["optimizer_groups"](student), lr=lr)
        optimizer.add_param_group({"params": projections[0].parameters(), "lr": 0.05})
        optimizer.add_param_group({"params": projections[1].parameters()})
        total = int(batches // accumulation * epochs)
        warmup = int(0.25 * total)

        def linear_warmup(step):  # transformers' get_linear_schedule_with_warmup, by hand
            if step < warmup:
                return step / max(1, warmup)
            return max(0.0, (total - step) / max(1, total - warmup))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup)
        saved, step = {}, 0
        for _ in range(int(epochs)):
            optimizer.zero_grad()
            for index, batch in enumerate(data):
                with torch.no_grad():
                    logits_T, hidden_T, _ = teacher(**batch)
                logits_S, hidden_S, _ = student(**batch)
                mask = batch["attention_mask"]
                loss = (
                    kd_ce(logits_S, logits_T, 8)
                    + 0 * F.cross_entropy(logits_S, batch["labels"])
                    + hidden_mse(projections[0](hidden_S[0]), hidden_T[0], mask)
                    + hidden_mse(projections[1](hidden_S[2]), hidden_T[3], mask)
                )
                (loss / accumulation).backward()
                if (index + 1) % accumulation:
                    continue
                torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)  # the student only
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                step += 1
                if step % (batches // accumulation) == 0:
                    saved[step] = {k: v.clone() for k, v in student.state_dict().items()}
        changed = [not torch.equal(p.weight, w) for p, w in zip(projections, initial)]
        return saved, changed
    finally:
        torch.set_default_dtype(torch.float32)


def test_mnli_recipe_general_distiller_with_projections_and_linear_warmup(tmp_path):
    out = tmp_path / "out"
    run_script("general_mnli", "--output_dir", out)
    assert checkpoint_steps(out) == [4, 8]
    expected, projections_changed = _mnli_reference()
    # The student's gradients flow through the projections, so equal student weights at step 8
    # mean the library trained the projections as the reference did (their own groups, their
    # own learning rate, scheduled by the warmup, not clipped).
    assert projections_changed == [True, True]
    for step in (4, 8):
        assert_same_state(torch.load(out / f"gs{step}.pkl"), expected[step])


def _in_float64(function):
    def wrapper(*args, **kwargs):
        torch.set_default_dtype(torch.float64)
        try:
            return function(*args, **kwargs)
        finally:
            torch.set_default_dtype(torch.float32)

    return wrapper


def _snapshot(model):
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


@_in_float64
def _three_teachers_reference():
    script = load_script("multi_teacher_three")
    teachers, student = script["build_models"](0)
    data = script["make_data"](5)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    saved, step = {}, 0
    for _ in range(2):
        for batch in data:
            with torch.no_grad():
                logits_T = sum(teacher(**batch) for teacher in teachers) / 3  # 0.2.x's mean
            logits_S = student(**batch)
            loss = 2 * kd_ce(logits_S, logits_T, 3) + F.cross_entropy(logits_S, batch["labels"])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if step % 5 == 0:
                saved[step] = _snapshot(student)
    return saved


def test_multi_teacher_distiller_on_three_teachers(tmp_path):
    run_script("multi_teacher_three", "--output_dir", tmp_path / "out")
    assert checkpoint_steps(tmp_path / "out") == [5, 10]
    expected = _three_teachers_reference()
    for step in (5, 10):
        assert_same_state(torch.load(tmp_path / "out" / f"gs{step}.pkl"), expected[step])


@_in_float64
def _layer_groups_reference():
    script = load_script("trainer_layer_groups")
    model = script["build_model"](0)
    data = script["make_data"](9)
    optimizer = torch.optim.SGD(script["layer_groups"](model, 0.2, 0.5), lr=0.2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    saved, step = {}, 0
    for _ in range(2):
        optimizer.zero_grad()  # the 9th micro-batch of an epoch never reaches a step
        for index, (features, labels) in enumerate(data):
            (model(features, labels)[1] / 2).backward()
            if (index + 1) % 2:
                continue
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            if step % 4 in {0, 2}:  # ckpt_frequency=2 over 4 steps per epoch
                saved[step] = _snapshot(model)
    return saved, [group["lr"] for group in optimizer.param_groups]


def test_basic_trainer_with_per_layer_learning_rates(tmp_path):
    run_script("trainer_layer_groups", "--output_dir", tmp_path / "out")
    assert checkpoint_steps(tmp_path / "out") == [2, 4, 6, 8]
    expected, final_lrs = _layer_groups_reference()
    assert final_lrs == [0.2 * 0.25, 0.1 * 0.25, 0.05 * 0.25]  # three groups, each scheduled
    for step in (2, 4, 6, 8):
        assert_same_state(torch.load(tmp_path / "out" / f"gs{step}.pkl"), expected[step])


def _shifted(logits_T, labels):
    # SPEC §5: swap the top class's logit with the true label's, row by row, by hand.
    shifted = logits_T.clone()
    for row, label in enumerate(labels.tolist()):
        top = int(logits_T[row].argmax())
        shifted[row, top], shifted[row, label] = logits_T[row, label], logits_T[row, top]
    return shifted


@_in_float64
def _ner_reference():
    script = load_script("ner_logits_mask")
    teacher, student = script["build_models"](0)
    data = script["make_data"](4)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    saved = {}
    for step in range(1, 8):
        ids, mask, labels = data[(step - 1) % 4]  # step mode cycles the data
        with torch.no_grad():
            logits_T, hidden_T = teacher(ids, mask, labels)
        logits_S, hidden_S = student(ids, mask, labels)
        rows = mask.bool()
        kd = kd_ce(logits_S[rows], _shifted(logits_T[rows], labels[rows]), 2)
        loss = kd + 2 * hidden_mse(hidden_S, hidden_T, mask)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 3 == 0 or step == 7:
            saved[step] = _snapshot(student)
    return saved


def test_ner_3d_logits_with_logits_mask_in_step_mode_with_float_steps(tmp_path):
    run_script("ner_logits_mask", "--output_dir", tmp_path / "out")
    assert checkpoint_steps(tmp_path / "out") == [3, 6, 7]
    expected = _ner_reference()
    for step in (3, 6, 7):
        assert_same_state(torch.load(tmp_path / "out" / f"gs{step}.pkl"), expected[step])


@_in_float64
def _span_reference():
    script = load_script("span_two_logits")
    teacher, student = script["build_models"](0)
    data = script["make_data"](3)
    optimizer = torch.optim.Adam(student.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (1 + step))
    saved, step = {}, 0
    for _ in range(2):
        for batch in data:
            with torch.no_grad():
                start_T, end_T, _ = teacher(*batch)
            start_S, end_S, hard = student(*batch)
            loss = kd_ce(start_S, start_T, 8) + kd_ce(end_S, end_T, 8) + hard
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 0.5)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            if step % 3 == 0:
                saved[step] = _snapshot(student)
    return saved


def test_span_extraction_two_logits_with_the_positional_0_2_x_call(tmp_path):
    run_script("span_two_logits", "--output_dir", tmp_path / "out")
    assert checkpoint_steps(tmp_path / "out") == [3, 6]
    expected = _span_reference()
    for step in (3, 6):
        assert_same_state(torch.load(tmp_path / "out" / f"gs{step}.pkl"), expected[step])


def test_notebook_cells_with_a_bert_and_the_positional_train_call(tmp_path):
    pytest.importorskip("transformers")
    notebook = run_script("notebook_bert", "--output_dir", tmp_path / "nb")["RESULT"]
    documented = run_script(
        "notebook_bert", "--output_dir", tmp_path / "doc", "--style", "documented"
    )["RESULT"]
    assert checkpoint_steps(tmp_path / "nb") == checkpoint_steps(tmp_path / "doc") == [3, 6]
    for step in (3, 6):
        ours = torch.load(tmp_path / "nb" / f"gs{step}.pkl")
        for key, value in torch.load(tmp_path / "doc" / f"gs{step}.pkl").items():
            assert torch.equal(ours[key], value), key
    for a, b in zip(notebook.projs, documented.projs):
        assert torch.equal(a.weight, b.weight)
    assert len(notebook.projs) == 2
