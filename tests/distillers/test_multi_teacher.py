"""Multi-teacher distillation: matches that name their teacher, weighted means, mean of losses.

Each parity test compares the final weights (float64) with a hand-written loop doing the
arithmetic of docs/multi_teacher.rst, as tests/distillers/test_parity.py does for 0.2.x.
"""

import copy
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import textbrewer
from tests.conftest import (
    checkpoint_steps,
    leave_process_group,
    make_batches,
    make_models,
    simple_adaptor,
    training_config,
)
from tests.distillers.test_distributed import free_port
from tests.distillers.test_parity import (
    assert_same_weights,
    hand_loop,
    plain_hidden_mse,
    plain_kd_ce,
)
from tests.distillers.test_resume import shuffled_loader
from textbrewer.training.plans import TaskBatch


def plain_cos(S, T, mask):
    keep = mask.bool()
    S, T = S[keep], T[keep]
    cosine = (S * T).sum(-1) / (S.norm(dim=-1) * T.norm(dim=-1))
    return (1 - cosine).mean()


def plain_flsw(logits_S, logits_T, base, beta, gamma, eps=1e-4):
    s = logits_S / (logits_S.norm(dim=-1, keepdim=True) + eps)
    t = logits_T / (logits_T.norm(dim=-1, keepdim=True) + eps)
    w = (1 - (s * t).sum(-1)) ** gamma
    return base + (w.mean() - w) * beta


def plain_kd_ce_rows(logits_S, logits_T, temperature_rows):
    temperature = temperature_rows[:, None]
    targets = torch.softmax(logits_T / temperature, dim=-1)
    return -(targets * torch.log_softmax(logits_S / temperature, dim=-1)).sum(-1).mean()


# Teacher 0 has width 8, teacher 1 width 10; the student (width 6) reads one layer of each.
TWO_TEACHER_MATCHES = [
    {
        "layer_T": 3,
        "layer_S": 2,
        "feature": "hidden",
        "loss": "hidden_mse",
        "weight": 2,
        "proj": ["linear", 6, 8, {"lr": 0.05}],
        "teacher": 0,
    },
    {
        "layer_T": 2,
        "layer_S": 1,
        "feature": "hidden",
        "loss": "cos",
        "weight": 0.5,
        "proj": ["tanh", 6, 10],
        "teacher": 1,
    },
]


def two_teachers_of_different_widths():
    teacher_0, student = make_models(seed=1, teacher_dim=8, student_dim=6)
    teacher_1, _ = make_models(seed=2, teacher_dim=10, student_dim=6)
    return [teacher_0, teacher_1], student


def multi_teacher(tmp_path, teachers, student, config=None, **options):
    return textbrewer.MultiTeacherDistiller(
        training_config(tmp_path),
        config or textbrewer.DistillationConfig(temperature=3, hard_label_weight=0.5),
        teachers,
        student,
        simple_adaptor,
        simple_adaptor,
        **options,
    )


def test_two_teachers_with_one_match_each_and_projections_match_hand_loop(tmp_path):
    teachers, student = two_teachers_of_different_widths()
    reference = copy.deepcopy(student)
    batches = make_batches(5)
    config = textbrewer.DistillationConfig(
        temperature=3, hard_label_weight=0.5, intermediate_matches=TWO_TEACHER_MATCHES
    )
    distiller = multi_teacher(tmp_path, teachers, student, config)
    distiller.matches.projections.double()
    projections = [copy.deepcopy(layer) for layer in distiller.projs]
    distiller.train(torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9), None, batches, 2)

    def loss(out_S, outs_T, batch, step):
        averaged = (outs_T[0][0] + outs_T[1][0]) / 2
        kd = plain_kd_ce(out_S[0], averaged, 3)
        match_0 = plain_hidden_mse(projections[0](out_S[1][2]), outs_T[0][1][3], batch[1])
        match_1 = plain_cos(projections[1](out_S[1][1]), outs_T[1][1][2], batch[1])
        return kd + out_S[3].mean() * 0.5 + match_0 * 2 + match_1 * 0.5

    hand_loop(
        reference,
        teachers,
        batches,
        epochs=2,
        gas=1,
        loss_fn=loss,
        extra_params=[
            {"params": list(projections[0].parameters()), "lr": 0.05},
            {"params": list(projections[1].parameters())},
        ],
    )
    assert_same_weights(student, reference)
    for trained, by_hand in zip(distiller.projs, projections):
        assert_same_weights(trained, by_hand)


def test_weighted_mean_of_logits_matches_hand_loop(tmp_path):
    teachers = [make_models(seed=s)[0] for s in (1, 2)]
    _, student = make_models(seed=3)
    reference = copy.deepcopy(student)
    batches = make_batches(5)
    distiller = multi_teacher(tmp_path, teachers, student, teacher_weights=[1, 3])
    distiller.train(torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9), None, batches, 2)

    def loss(out_S, outs_T, batch, step):
        averaged = (1 * outs_T[0][0] + 3 * outs_T[1][0]) / 4
        return plain_kd_ce(out_S[0], averaged, 3) + out_S[3].mean() * 0.5

    hand_loop(reference, teachers, batches, epochs=2, gas=1, loss_fn=loss)
    assert_same_weights(student, reference)


def test_weighted_mean_of_kd_losses_with_per_teacher_temperatures_matches_hand_loop(tmp_path):
    teachers = [make_models(seed=s)[0] for s in (1, 2)]
    _, student = make_models(seed=3)
    reference = copy.deepcopy(student)
    batches = make_batches(5)
    config = textbrewer.DistillationConfig(
        temperature=3, temperature_scheduler=["flsw", 1.0, 2.0], hard_label_weight=0.5
    )
    distiller = multi_teacher(
        tmp_path, teachers, student, config, teacher_weights=[2, 1], combine_teachers="mean_losses"
    )
    distiller.train(torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9), None, batches, 2)

    def loss(out_S, outs_T, batch, step):
        kd = []
        for out_T in outs_T:
            temperature = plain_flsw(out_S[0].detach(), out_T[0], 3, beta=1.0, gamma=2.0)
            kd.append(plain_kd_ce_rows(out_S[0], out_T[0], temperature))
        return (2 * kd[0] + 1 * kd[1]) / 3 + out_S[3].mean() * 0.5

    hand_loop(reference, teachers, batches, epochs=2, gas=1, loss_fn=loss)
    assert_same_weights(student, reference)


def test_equal_weights_keep_the_0_2_average_to_the_last_bit(tmp_path):
    weights = []
    for name, options in (("default", {}), ("explicit", {"combine_teachers": "mean_logits"})):
        teachers = [make_models(seed=s)[0] for s in (1, 2)]
        _, student = make_models(seed=3)
        distiller = multi_teacher(tmp_path / name, teachers, student, **options)
        distiller.train(torch.optim.SGD(student.parameters(), lr=0.1), None, make_batches(3), 1)
        weights.append(student)
    assert_same_weights(weights[0], weights[1], tolerance=0)


def test_multi_task_with_two_teachers_for_one_task_matches_hand_loop(tmp_path):
    teacher_a0, student = make_models(seed=4, teacher_dim=8, student_dim=6)
    teacher_a1, _ = make_models(seed=5, teacher_dim=8)
    teacher_b, _ = make_models(seed=6, teacher_dim=8)
    reference = copy.deepcopy(student)
    loaders = {"a": make_batches(3, seed=1), "b": make_batches(5, seed=2)}
    config = textbrewer.DistillationConfig(
        temperature=2,
        intermediate_matches=[
            {
                "layer_T": 3,
                "layer_S": 2,
                "feature": "hidden",
                "loss": "hidden_mse",
                "weight": 1.5,
                "proj": ["linear", 6, 8],
                "teacher": 0,
            }
        ],
    )
    distiller = textbrewer.MultiTaskDistiller(
        training_config(tmp_path, ckpt_steps=4),
        config,
        {"a": [teacher_a0, teacher_a1], "b": teacher_b},
        student,
        {"a": [simple_adaptor, simple_adaptor], "b": simple_adaptor},
        {"a": simple_adaptor, "b": simple_adaptor},
        teacher_weights={"a": [3, 1]},
        combine_teachers="mean_losses",
    )
    distiller.matches.projections.double()
    projection = copy.deepcopy(distiller.projs[0])
    np.random.seed(7)
    distiller.train(
        torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9), None, loaders, 8, tau=0.5
    )

    np.random.seed(7)
    optimizer = torch.optim.SGD(
        [{"params": list(reference.parameters())}, {"params": list(projection.parameters())}],
        lr=0.1,
        momentum=0.9,
    )
    sizes = np.array([3, 5]) ** 0.5
    iterators = {name: iter(textbrewer.utils.cycle(data)) for name, data in loaders.items()}
    teachers = {"a": [teacher_a0, teacher_a1], "b": [teacher_b]}
    task_weights = {"a": [3 / 4, 1 / 4], "b": [1.0]}
    for _ in range(8):
        task = np.random.choice(["a", "b"], p=sizes / sizes.sum())
        batch = next(iterators[task])
        with torch.no_grad():
            outs_T = [teacher(*batch) for teacher in teachers[task]]
        out_S = reference(*batch)
        kd = sum(
            w * plain_kd_ce(out_S[0], out_T[0], 2) for w, out_T in zip(task_weights[task], outs_T)
        )
        match = plain_hidden_mse(projection(out_S[1][2]), outs_T[0][1][3], batch[1])
        (kd + out_S[3].mean() * 0 + match * 1.5).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert_same_weights(student, reference)
    assert_same_weights(distiller.projs[0], projection)


# ---------------------------------------------------------------- errors


def match(**overrides):
    entry = dict(TWO_TEACHER_MATCHES[0])
    entry.update(overrides)
    return entry


def test_a_match_without_teacher_on_several_teachers_says_how_to_name_one(tmp_path):
    teachers, student = two_teachers_of_different_widths()
    entry = match()
    del entry["teacher"]
    config = textbrewer.DistillationConfig(intermediate_matches=[entry])
    with pytest.raises(ValueError, match=r"`intermediate_matches\[0\]` does not say which teacher"):
        multi_teacher(tmp_path, teachers, student, config)
    with pytest.raises(ValueError, match=r"add 'teacher': <index into model_T, 0 to 1>"):
        multi_teacher(tmp_path, teachers, student, config)


def test_a_teacher_index_out_of_range_is_refused(tmp_path):
    teachers, student = two_teachers_of_different_widths()
    config = textbrewer.DistillationConfig(intermediate_matches=[match(teacher=2)])
    with pytest.raises(
        ValueError, match=r"`intermediate_matches\[0\].teacher`=2 .* indices 0 to 1"
    ):
        multi_teacher(tmp_path, teachers, student, config)


@pytest.mark.parametrize("name", ["GeneralDistiller", "MultiTaskDistiller"])
def test_single_teacher_distillers_refuse_a_teacher_other_than_0(tmp_path, name):
    teacher, student = make_models(teacher_dim=8, student_dim=6)
    config = textbrewer.DistillationConfig(intermediate_matches=[match(teacher=1)])
    if name == "GeneralDistiller":
        build = lambda cfg: textbrewer.GeneralDistiller(  # noqa: E731
            training_config(tmp_path), cfg, teacher, student, simple_adaptor, simple_adaptor
        )
    else:
        build = lambda cfg: textbrewer.MultiTaskDistiller(  # noqa: E731
            training_config(tmp_path, ckpt_steps=1),
            cfg,
            {"a": teacher},
            student,
            {"a": simple_adaptor},
            {"a": simple_adaptor},
        )
    with pytest.raises(ValueError, match=r"`intermediate_matches\[0\].teacher`=1, but .* one"):
        build(config)
    for accepted in (0, None):
        build(textbrewer.DistillationConfig(intermediate_matches=[match(teacher=accepted)]))


def test_a_custom_match_must_name_the_teacher_its_module_belongs_to(tmp_path):
    teachers, student = two_teachers_of_different_widths()
    custom = {
        "module_T": teachers[1].layers[0],
        "module_S": student.layers[0],
        "loss": lambda s, t, ms, mt: (s.sum() - t.sum()) ** 2,
        "weight": 1,
    }
    with pytest.raises(ValueError, match=r"`custom_matches\[0\]` does not say which teacher"):
        multi_teacher(tmp_path, teachers, student, custom_matches=[custom])
    with pytest.raises(ValueError, match=r"not a submodule of model_T\[0\]"):
        multi_teacher(tmp_path, teachers, student, custom_matches=[{**custom, "teacher": 0}])
    multi_teacher(tmp_path, teachers, student, custom_matches=[{**custom, "teacher": 1}])


@pytest.mark.parametrize(
    ("weights", "error", "message"),
    [
        ([1], ValueError, r"has 1 weight\(s\) for 2 teachers"),
        ([1, -1], ValueError, "finite number >= 0"),
        ([0, 0], ValueError, "must not all be 0"),
        ("11", TypeError, "one number per teacher"),
        ([1, "x"], TypeError, "'x' is not a number"),
    ],
)
def test_bad_teacher_weights_are_refused(tmp_path, weights, error, message):
    teachers = [make_models(seed=s)[0] for s in (1, 2)]
    with pytest.raises(error, match=message):
        multi_teacher(tmp_path, teachers, make_models()[1], teacher_weights=weights)


def test_an_unknown_combination_lists_the_known_ones(tmp_path):
    teachers = [make_models(seed=s)[0] for s in (1, 2)]
    with pytest.raises(ValueError, match=r"'mean_logits', 'mean_losses'"):
        multi_teacher(tmp_path, teachers, make_models()[1], combine_teachers="vote")


# ---------------------------------------------------------------- one loss, by hand


def plain_ce_rows(logits_S, logits_T, temperature):
    targets = torch.softmax(logits_T / temperature, dim=-1)
    return -(targets * torch.log_softmax(logits_S / temperature, dim=-1)).sum(-1).mean()


def three_d_results():
    generator = torch.Generator().manual_seed(0)
    logits = [torch.randn(2, 5, 7, generator=generator, dtype=torch.float64) for _ in range(3)]
    masks = [
        torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]]),
        torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]),
        torch.tensor([[0, 1, 1, 1, 1], [0, 1, 1, 1, 0]]),
    ]
    results_S = {"logits": [logits[0]], "logits_mask": [masks[0]]}
    results_T = [{"logits": [logits[i]], "logits_mask": [masks[i]]} for i in (1, 2)]
    return logits, masks, results_S, results_T


@pytest.mark.parametrize("mode", ["mean_logits", "mean_losses"])
def test_masks_of_3d_logits_follow_the_documented_rule_of_each_mode(tmp_path, mode):
    teachers = [make_models(seed=s)[0] for s in (1, 2)]
    distiller = multi_teacher(
        tmp_path,
        teachers,
        make_models()[1],
        textbrewer.DistillationConfig(temperature=2),
        teacher_weights=[1, 4],
        combine_teachers=mode,
    )
    logits, masks, results_S, results_T = three_d_results()
    total, parts = distiller.compute_loss(results_S, results_T)
    student = logits[0][masks[0].bool()]
    if mode == "mean_logits":  # teacher 0's mask selects every teacher's rows
        rows = masks[1].bool()
        expected = plain_ce_rows(student, 0.2 * logits[1][rows] + 0.8 * logits[2][rows], 2)
    else:  # each teacher's own mask
        expected = sum(
            w * plain_ce_rows(student, logits[i][masks[i].bool()], 2)
            for w, i in ((0.2, 1), (0.8, 2))
        )
    torch.testing.assert_close(parts["unweighted_kd_loss"], expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(total, expected, rtol=1e-12, atol=1e-12)


def test_mean_of_ce_losses_is_ce_against_the_mixture_of_probabilities(tmp_path):
    # The docs' reason to prefer 'mean_losses' for teachers that differ: with one temperature,
    # the weighted mean of the CE losses is the CE against the weighted mixture of p_T.
    teachers = [make_models(seed=s)[0] for s in (1, 2)]
    distiller = multi_teacher(
        tmp_path,
        teachers,
        make_models()[1],
        textbrewer.DistillationConfig(temperature=3),
        teacher_weights=[3, 1],
        combine_teachers="mean_losses",
    )
    generator = torch.Generator().manual_seed(1)
    student, first, second = (
        torch.randn(6, 5, generator=generator, dtype=torch.float64) for _ in range(3)
    )
    _, parts = distiller.compute_loss(
        {"logits": [student]}, [{"logits": [first * 4]}, {"logits": [second]}]
    )
    mixture = 0.75 * torch.softmax(first * 4 / 3, -1) + 0.25 * torch.softmax(second / 3, -1)
    expected = -(mixture * torch.log_softmax(student / 3, -1)).sum(-1).mean()
    torch.testing.assert_close(parts["unweighted_kd_loss"], expected, rtol=1e-12, atol=1e-12)


def test_a_teacher_without_logits_is_an_error_naming_it_in_either_mode(tmp_path):
    # 0.2.x raised when one side's adaptor returned logits and another's did not; silently
    # training without the KD term would hide the mistake.
    teachers = [make_models(seed=s)[0] for s in (1, 2)]
    for mode in ("mean_logits", "mean_losses"):
        distiller = multi_teacher(tmp_path, teachers, make_models()[1], combine_teachers=mode)
        losses = torch.tensor([0.5, 1.5], dtype=torch.float64)
        with pytest.raises(
            ValueError,
            match=r"adaptor_S, adaptor_T\[1\] returned 'logits' but adaptor_T\[0\] did not",
        ):
            distiller.compute_loss(
                {"logits": [torch.zeros(2, 3)], "losses": [losses]},
                [{}, {"logits": [torch.ones(2, 3)]}],
            )
        total, parts = distiller.compute_loss({"losses": [losses]}, [{}, {}])
        assert list(parts) == ["unweighted_hard_label_loss"]
        assert total.item() == pytest.approx(0.5)


# ---------------------------------------------------------------- resume and DDP


def resumable_run(tmp_path, name, resume_from=None):
    torch.manual_seed(0)
    teacher_0, student = make_models(seed=1, teacher_dim=8, student_dim=6, dropout=0.2)
    teacher_1, _ = make_models(seed=2, teacher_dim=10, dropout=0.2)
    config = training_config(
        tmp_path / name,
        save_training_state=True,
        gradient_accumulation_steps=2,
        ckpt_steps=2,
        log_every_n_steps=2,
    )
    distiller = textbrewer.MultiTeacherDistiller(
        config,
        textbrewer.DistillationConfig(
            kd_loss_weight_scheduler="linear_decay", intermediate_matches=TWO_TEACHER_MATCHES
        ),
        [teacher_0, teacher_1],
        student,
        simple_adaptor,
        simple_adaptor,
        teacher_weights=[1, 2],
        combine_teachers="mean_losses",
    )
    distiller.matches.projections.double()
    optimizer = torch.optim.AdamW(student.parameters(), lr=0.01)
    torch.manual_seed(1)
    distiller.train(
        optimizer,
        shuffled_loader(),
        num_epochs=None,
        num_steps=6,
        scheduler_class=torch.optim.lr_scheduler.StepLR,
        scheduler_args={"step_size": 2, "gamma": 0.7},
        resume_from=resume_from,
    )
    return student, distiller


def test_multi_teacher_run_with_projections_resumes_bit_identically(tmp_path):
    reference, reference_distiller = resumable_run(tmp_path, "full")
    assert checkpoint_steps(tmp_path / "full" / "out") == [2, 4, 6]
    for step in (2, 4):
        checkpoint = tmp_path / "full" / "out" / f"gs{step}.pkl"
        resumed, distiller = resumable_run(tmp_path, f"from{step}", resume_from=checkpoint)
        for key, value in reference.state_dict().items():
            assert torch.equal(resumed.state_dict()[key], value), (step, key)
        pairs = zip(
            reference_distiller.matches.projections.parameters(),
            distiller.matches.projections.parameters(),
        )
        assert all(torch.equal(a, b) for a, b in pairs)
        assert len(list(distiller.matches.projections.parameters())) == 4


def ddp_distill(rank, world_size, batches, workdir):
    teacher_0, student = make_models(seed=1, teacher_dim=8, student_dim=6)
    teacher_1, _ = make_models(seed=2, teacher_dim=10)
    matches = [dict(m, proj=m["proj"][:3]) for m in TWO_TEACHER_MATCHES]
    distiller = textbrewer.MultiTeacherDistiller(
        training_config(
            workdir, local_rank=rank if world_size > 1 else -1, gradient_accumulation_steps=2
        ),
        textbrewer.DistillationConfig(hard_label_weight=1, intermediate_matches=matches),
        [teacher_0, teacher_1],
        student,
        simple_adaptor,
        simple_adaptor,
        teacher_weights=[3, 1],
    )
    distiller.matches.projections.double()
    seen = []
    distiller.train(
        torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9),
        batches,
        2,
        scheduler_class=torch.optim.lr_scheduler.StepLR,
        scheduler_args={"step_size": 2},
        callback=lambda model, step: seen.append((type(model).__name__, step)),
    )
    return student, distiller, seen


def unpadded(batches):
    # hidden_mse and cos average over positions: without padding the halves split evenly.
    return [(ids.clamp(min=1), torch.ones_like(mask), labels) for ids, mask, labels in batches]


def ddp_worker(rank, world_size, port, workdir, results):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size)
    )
    torch.set_num_threads(1)
    halves = [tuple(t[rank * 2 : (rank + 1) * 2] for t in b) for b in make_batches(4)]
    student, distiller, seen = ddp_distill(rank, world_size, unpadded(halves), workdir)
    torch.save(
        {
            "student": student.state_dict(),
            "proj": distiller.matches.projections.state_dict(),
            "seen": seen,
        },
        os.path.join(results, f"rank{rank}.pt"),
    )
    leave_process_group()


@pytest.mark.slow
def test_two_gloo_processes_train_a_multi_teacher_run_like_one_with_double_batches(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    mp.spawn(ddp_worker, args=(2, free_port(), tmp_path / "ddp", str(results)), nprocs=2)
    student, distiller, _ = ddp_distill(0, 1, unpadded(make_batches(4)), tmp_path / "single")
    for rank in range(2):
        saved = torch.load(results / f"rank{rank}.pt")
        for key, value in student.state_dict().items():
            torch.testing.assert_close(saved["student"][key], value, rtol=0, atol=1e-6)
        for key, value in distiller.matches.projections.state_dict().items():
            torch.testing.assert_close(saved["proj"][key], value, rtol=0, atol=1e-6)
        assert saved["seen"] == [("DistributedDataParallel", 2), ("DistributedDataParallel", 4)]


# ---------------------------------------------------------------- multi-task specifics


def two_task_distiller(tmp_path, matches=None, **options):
    teacher_a0, student = make_models(seed=4, teacher_dim=8, student_dim=6)
    teacher_a1, _ = make_models(seed=5, teacher_dim=8)
    teacher_b, _ = make_models(seed=6, teacher_dim=8)
    distiller = textbrewer.MultiTaskDistiller(
        training_config(tmp_path, ckpt_steps=2),
        textbrewer.DistillationConfig(intermediate_matches=matches),
        {"a": [teacher_a0, teacher_a1], "b": teacher_b},
        student,
        {"a": simple_adaptor, "b": simple_adaptor},
        {"a": simple_adaptor, "b": simple_adaptor},
        **options,
    )
    return distiller, [teacher_a0, teacher_a1]


def test_a_multi_task_match_must_name_a_teacher_when_a_task_has_several(tmp_path):
    entry = {k: v for k, v in match().items() if k != "teacher"}
    with pytest.raises(ValueError, match=r"task 'a' has 2 teachers: add 'teacher': <index into "):
        two_task_distiller(tmp_path, [entry])
    with pytest.raises(ValueError, match=r"task 'b' has one teacher"):
        two_task_distiller(tmp_path, [match(teacher=1)])


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"teacher_weights": {"c": [1]}}, KeyError, r"task\(s\) \['c'\] not in model_T"),
        ({"teacher_weights": [1, 2]}, TypeError, "must be a dict: task name"),
        ({"teacher_weights": {"a": [1]}}, ValueError, r"`teacher_weights\['a'\]`"),
        ({"combine_teachers": "max"}, ValueError, "known: 'mean_logits', 'mean_losses'"),
    ],
)
def test_bad_multi_task_teacher_options_are_refused(tmp_path, options, error, message):
    with pytest.raises(error, match=message):
        two_task_distiller(tmp_path, **options)


def test_a_task_with_a_list_of_adaptors_needs_one_per_teacher(tmp_path):
    teacher, student = make_models()
    with pytest.raises(ValueError, match=r"`adaptor_T\['a'\]` has 3 adaptors for 2 teacher"):
        textbrewer.MultiTaskDistiller(
            training_config(tmp_path, ckpt_steps=2),
            textbrewer.DistillationConfig(),
            {"a": [teacher, teacher]},
            student,
            {"a": [simple_adaptor] * 3},
            {"a": simple_adaptor},
        )


def test_a_multi_teacher_task_uses_a_teacher_cache_list_like_its_teachers(tmp_path):
    distiller, teachers = two_task_distiller(
        tmp_path, teacher_weights={"a": [1, 2]}, combine_teachers="mean_losses"
    )
    batch = make_batches(1)[0]
    with torch.no_grad():
        cache = [teacher(*batch) for teacher in teachers]
    with distiller:
        run, run_parts = distiller.train_on_batch(TaskBatch("a", batch), {})
        cached, cached_parts = distiller.train_on_batch(
            TaskBatch("a", {"teacher": batch, "student": batch, "teacher_cache": cache}), {}
        )
    assert torch.equal(run, cached)
    assert (
        run_parts.keys()
        == cached_parts.keys()
        == {
            "unweighted_kd_loss",
            "unweighted_hard_label_loss",
        }
    )
    results_S = simple_adaptor(batch, distiller.model_S(*batch))
    with pytest.raises(KeyError, match=r"`task`=None: a list of teacher results"):
        distiller.compute_loss(results_S, [simple_adaptor(batch, c) for c in cache])


def test_caching_is_ignored_with_a_warning_when_there_are_matches(tmp_path, caplog):
    teachers, student = two_teachers_of_different_widths()
    config = textbrewer.DistillationConfig(
        is_caching_logits=True, intermediate_matches=TWO_TEACHER_MATCHES
    )
    with caplog.at_level("WARNING", logger="textbrewer"):
        distiller = multi_teacher(tmp_path, teachers, student, config)
    assert "ignores is_caching_logits=True when there are intermediate" in caplog.text
    distiller.matches.projections.double()
    distiller.train(torch.optim.SGD(student.parameters(), lr=0.1), None, make_batches(2), 1)
    assert checkpoint_steps(tmp_path / "out") == [2]


def test_a_custom_match_reads_the_module_and_inputs_mask_of_the_teacher_it_names(tmp_path):
    teachers, student = two_teachers_of_different_widths()
    seen = []

    def loss(out_S, out_T, mask_S, mask_T):
        seen.append((out_T.shape[-1], mask_T))
        return (out_S.mean() - out_T.mean()) ** 2

    def adaptor_1(batch, outputs):  # teacher 1's own inputs_mask, to tell the two apart
        return {**simple_adaptor(batch, outputs), "inputs_mask": batch[1] * 0}

    custom = {
        "module_T": teachers[1].layers[0],
        "module_S": student.layers[0],
        "loss": loss,
        "weight": 2,
        "teacher": 1,
    }
    distiller = textbrewer.MultiTeacherDistiller(
        training_config(tmp_path),
        textbrewer.DistillationConfig(),
        teachers,
        student,
        [simple_adaptor, adaptor_1],
        simple_adaptor,
        custom_matches=[custom],
    )
    batch = make_batches(1)[0]
    with distiller:
        total, parts = distiller.train_on_batch(batch, {})
    ((width, mask_T),) = seen
    assert width == 10  # teacher 1's layer, not teacher 0's (width 8)
    assert torch.equal(mask_T, batch[1] * 0)
    assert list(parts) == [
        "unweighted_kd_loss",
        "unweighted_hard_label_loss",
        "unweighted_custom_match_0",
    ]
    expected = parts["unweighted_kd_loss"] + 2 * parts["unweighted_custom_match_0"]
    torch.testing.assert_close(total, expected, rtol=1e-12, atol=1e-12)
