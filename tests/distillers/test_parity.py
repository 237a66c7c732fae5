"""Final weights of every distiller equal a hand-written loop doing the SPEC's arithmetic."""

import copy

import pytest
import torch

import textbrewer
from tests.conftest import make_batches, make_models, simple_adaptor, training_config


def plain_kd_ce(logits_S, logits_T, temperature):
    targets = torch.softmax(logits_T / temperature, dim=-1)
    return -(targets * torch.log_softmax(logits_S / temperature, dim=-1)).sum(-1).mean()


def plain_hidden_mse(S, T, mask):
    mask = mask.to(S)
    return ((S - T) ** 2 * mask[..., None]).sum() / (mask.sum() * S.shape[-1])


def hand_loop(student, teachers, batches, epochs, gas, loss_fn, extra_params=(), scheduler=None):
    optimizer = torch.optim.SGD(
        [{"params": list(student.parameters())}, *extra_params], lr=0.1, momentum=0.9
    )
    schedule = scheduler(optimizer) if scheduler else None
    for teacher in teachers:
        teacher.eval()
    student.train()
    step = 0
    for _ in range(epochs):
        optimizer.zero_grad()
        for index, batch in enumerate(batches):
            with torch.no_grad():
                outputs_T = [teacher(*batch) for teacher in teachers]
            outputs_S = student(*batch)
            total = loss_fn(outputs_S, outputs_T, batch, step)
            (total / gas).backward()
            if (index + 1) % gas == 0:
                optimizer.step()
                if schedule:
                    schedule.step()
                optimizer.zero_grad()
                step += 1
    return student


def assert_same_weights(model_a, model_b, tolerance=1e-10):
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        torch.testing.assert_close(state_a[key], state_b[key], rtol=tolerance, atol=tolerance)


def test_basic_distiller_matches_hand_loop_with_accumulation_and_hard_labels(tmp_path):
    teacher, student = make_models()
    reference = copy.deepcopy(student)
    batches = make_batches(7)
    config = textbrewer.DistillationConfig(temperature=3, hard_label_weight=0.5)
    distiller = textbrewer.BasicDistiller(
        training_config(tmp_path, gradient_accumulation_steps=2),
        config,
        teacher,
        student,
        simple_adaptor,
        simple_adaptor,
    )
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    distiller.train(optimizer, None, batches, num_epochs=2)

    def loss(out_S, outs_T, batch, step):
        return plain_kd_ce(out_S[0], outs_T[0][0], 3) * 1 + out_S[3].mean() * 0.5

    hand_loop(reference, [teacher], batches, epochs=2, gas=2, loss_fn=loss)
    assert_same_weights(student, reference)


def test_general_distiller_matches_hand_loop_with_projection_and_weight_schedule(tmp_path):
    teacher, student = make_models(teacher_dim=8, student_dim=6)
    reference = copy.deepcopy(student)
    batches = make_batches(6)
    config = textbrewer.DistillationConfig(
        temperature=2,
        kd_loss_weight_scheduler="linear_decay",
        intermediate_matches=[
            {
                "layer_T": 3,
                "layer_S": 2,
                "feature": "hidden",
                "loss": "hidden_mse",
                "weight": 2,
                "proj": ["linear", 6, 8, {"lr": 0.05}],
            },
        ],
    )
    distiller = textbrewer.GeneralDistiller(
        training_config(tmp_path), config, teacher, student, simple_adaptor, simple_adaptor
    )
    distiller.matches.projections.double()
    projection = copy.deepcopy(distiller.projs[0])
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    distiller.train(optimizer, None, batches, num_epochs=2)
    total_steps = 12

    def loss(out_S, outs_T, batch, step):
        kd_weight = 1 if step == 0 else 1 - step / total_steps
        kd = plain_kd_ce(out_S[0], outs_T[0][0], 2)
        match = plain_hidden_mse(projection(out_S[1][2]), outs_T[0][1][3], batch[1])
        return kd * kd_weight + match * 2

    hand_loop(
        reference,
        [teacher],
        batches,
        epochs=2,
        gas=1,
        loss_fn=loss,
        extra_params=[{"params": list(projection.parameters()), "lr": 0.05}],
    )
    assert_same_weights(student, reference)
    assert_same_weights(distiller.projs[0], projection)


def test_multi_teacher_distiller_averages_teacher_logits_like_hand_loop(tmp_path):
    torch.manual_seed(1)
    teachers = [make_models(seed=s)[0] for s in (1, 2)]
    _, student = make_models(seed=3)
    reference = copy.deepcopy(student)
    batches = make_batches(5)
    distiller = textbrewer.MultiTeacherDistiller(
        training_config(tmp_path),
        textbrewer.DistillationConfig(temperature=4),
        teachers,
        student,
        simple_adaptor,
        simple_adaptor,
    )
    distiller.train(torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9), None, batches, 2)

    def loss(out_S, outs_T, batch, step):
        averaged = (outs_T[0][0] + outs_T[1][0]) / 2
        return plain_kd_ce(out_S[0], averaged, 4)

    hand_loop(reference, teachers, batches, epochs=2, gas=1, loss_fn=loss)
    assert_same_weights(student, reference)


def test_basic_trainer_matches_hand_loop_with_scheduler_class(tmp_path):
    _, model = make_models()
    reference = copy.deepcopy(model)
    batches = make_batches(5)
    trainer = textbrewer.BasicTrainer(training_config(tmp_path), model, simple_adaptor)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    trainer.train(
        optimizer,
        batches,
        2,
        scheduler_class=torch.optim.lr_scheduler.StepLR,
        scheduler_args={"step_size": 3, "gamma": 0.5},
        max_grad_norm=0.5,
    )

    def run():
        optimizer = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
        schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
        for _ in range(2):
            optimizer.zero_grad()
            for batch in batches:
                reference(*batch)[3].mean().backward()
                torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()

    run()
    assert_same_weights(model, reference)


def test_multi_task_distiller_samples_tasks_like_hand_loop(tmp_path):
    teacher_a, student = make_models(seed=4)
    teacher_b, _ = make_models(seed=5)
    reference = copy.deepcopy(student)
    loaders = {"a": make_batches(3, seed=1), "b": make_batches(5, seed=2)}
    distiller = textbrewer.MultiTaskDistiller(
        training_config(tmp_path, ckpt_steps=3),
        textbrewer.DistillationConfig(temperature=2),
        {"a": teacher_a, "b": teacher_b},
        student,
        {"a": simple_adaptor, "b": simple_adaptor},
        {"a": simple_adaptor, "b": simple_adaptor},
    )
    import numpy as np

    np.random.seed(7)
    distiller.train(
        torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9), None, loaders, 7, tau=0.5
    )

    np.random.seed(7)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    sizes = np.array([3, 5]) ** 0.5
    weights = sizes / sizes.sum()
    iterators = {name: iter(textbrewer.utils.cycle(data)) for name, data in loaders.items()}
    teachers = {"a": teacher_a, "b": teacher_b}
    optimizer.zero_grad()
    for _ in range(7):
        task = np.random.choice(["a", "b"], p=weights)
        batch = next(iterators[task])
        with torch.no_grad():
            out_T = teachers[task](*batch)
        out_S = reference(*batch)
        plain_kd_ce(out_S[0], out_T[0], 2).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert_same_weights(student, reference)


@pytest.mark.parametrize("style", ["documented", "documented_keywords", "legacy", "legacy_kw"])
def test_both_call_styles_give_identical_weights(tmp_path, style):
    results = {}
    for name in ("baseline", style):
        teacher, student = make_models()
        distiller = textbrewer.BasicDistiller(
            training_config(tmp_path / name),
            textbrewer.DistillationConfig(),
            teacher,
            student,
            simple_adaptor,
            simple_adaptor,
        )
        optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
        schedule_args = {"step_size": 2, "gamma": 0.5}
        batches = make_batches(4)
        if name == "baseline":
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, **schedule_args)
            distiller.train(optimizer, scheduler, batches, 2)
        elif style == "documented_keywords":
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, **schedule_args)
            distiller.train(
                optimizer=optimizer, scheduler=scheduler, dataloader=batches, num_epochs=2
            )
        elif style == "documented":
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, **schedule_args)
            distiller.train(optimizer, scheduler, batches, 2, None, None, None)
        elif style == "legacy":
            distiller.train(optimizer, batches, 2, torch.optim.lr_scheduler.StepLR, schedule_args)
        else:
            distiller.train(
                optimizer,
                dataloader=batches,
                num_epochs=2,
                scheduler_class=torch.optim.lr_scheduler.StepLR,
                scheduler_args=schedule_args,
                max_grad_norm=-1,
            )
        results[name] = student
    assert_same_weights(results["baseline"], results[style], tolerance=0)


def test_multi_task_legacy_and_documented_calls_give_identical_weights(tmp_path):
    import numpy as np

    weights = []
    for style in ("documented", "legacy"):
        teacher_a, student = make_models(seed=4)
        teacher_b, _ = make_models(seed=5)
        distiller = textbrewer.MultiTaskDistiller(
            training_config(tmp_path / style, ckpt_steps=2),
            textbrewer.DistillationConfig(),
            {"a": teacher_a, "b": teacher_b},
            student,
            {"a": simple_adaptor, "b": simple_adaptor},
            {"a": simple_adaptor, "b": simple_adaptor},
        )
        optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
        loaders = {"a": make_batches(2, seed=1), "b": make_batches(3, seed=2)}
        double = {name: (lambda batch: batch) for name in loaders}
        np.random.seed(3)
        if style == "documented":
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)
            distiller.train(optimizer, scheduler, loaders, 5, 2, None, double)
        else:
            distiller.train(
                optimizer,
                loaders,
                5,
                torch.optim.lr_scheduler.StepLR,
                {"step_size": 2},
                tau=2,
                batch_postprocessors=double,
            )
        weights.append(student)
    assert_same_weights(weights[0], weights[1], tolerance=0)


def test_multi_teacher_caching_matches_hand_loop_over_the_shuffled_cache(tmp_path):
    teachers = [make_models(seed=s)[0] for s in (1, 2)]
    _, student = make_models(seed=3)
    reference = copy.deepcopy(student)
    batches = make_batches(3)
    distiller = textbrewer.MultiTeacherDistiller(
        training_config(tmp_path),
        textbrewer.DistillationConfig(is_caching_logits=True),
        teachers,
        student,
        [simple_adaptor, simple_adaptor],
        simple_adaptor,
    )
    import random

    random.seed(0)
    distiller.train(torch.optim.SGD(student.parameters(), lr=0.1), None, batches, 2)
    random.seed(0)
    order = list(range(3))
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    for _ in range(2):
        random.shuffle(order)
        for index in order:
            batch = batches[index]
            with torch.no_grad():
                averaged = (teachers[0](*batch)[0] + teachers[1](*batch)[0]) / 2
            plain_kd_ce(reference(*batch)[0], averaged, 4).backward()
            optimizer.step()
            optimizer.zero_grad()
    assert_same_weights(student, reference)
