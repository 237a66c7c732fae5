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
