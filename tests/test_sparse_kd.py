"""KD against a top-k teacher: the formulas by hand, the exact case k = classes, the refusals."""

import copy

import pytest
import torch

import textbrewer
from tests.conftest import TinyEncoder, make_batches, make_models, simple_adaptor, training_config
from textbrewer import losses, sparse_kd
from textbrewer.teacher_cache import CachedTeacherDataset, TeacherCache, precompute_teacher_outputs


def logits_pair(rows=5, classes=7, seed=0):
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(rows, classes, generator=generator, dtype=torch.float64)
    teacher = 3 * torch.randn(rows, classes, generator=generator, dtype=torch.float64)
    return student.requires_grad_(), teacher


def by_hand(name, student, teacher, k, T):
    """The top-k forms written out row by row with Python loops."""
    total = 0.0
    for s, t in zip(student.tolist(), teacher.tolist()):
        top = sorted(range(len(t)), key=lambda c: -t[c])[:k]
        p_hat = torch.tensor([t[c] / T for c in top], dtype=torch.float64).softmax(0)
        log_q = torch.tensor(s, dtype=torch.float64).div(T).log_softmax(0)[top]
        s_top = torch.tensor([s[c] / T for c in top], dtype=torch.float64)
        if name == "ce":
            total += float(-(p_hat * log_q).sum())
        elif name == "kl":
            total += float((p_hat * (p_hat.log() - log_q)).sum())
        elif name == "reverse_kl":
            q_hat = s_top.softmax(0)
            total += float((q_hat * (q_hat.log() - p_hat.log())).sum())
        else:
            total += float(
                ((s_top - torch.tensor([t[c] / T for c in top], dtype=torch.float64)) ** 2).mean()
            )
    return total / len(teacher)


@pytest.mark.parametrize("name", ["ce", "kl", "reverse_kl", "mse"])
@pytest.mark.parametrize("k", [1, 3])
def test_topk_forms_equal_the_formula_by_hand(name, k):
    student, teacher = logits_pair()
    values, indices = teacher.topk(k, dim=-1)
    loss = sparse_kd.topk_kd_loss(textbrewer.KD_LOSS_MAP[name], student, values, indices, 2.0)
    assert loss.item() == pytest.approx(by_hand(name, student.detach(), teacher, k, 2.0), rel=1e-12)
    loss.backward()
    assert torch.isfinite(student.grad).all()


@pytest.mark.parametrize("name", ["ce", "kl"])
def test_with_every_class_stored_the_topk_loss_is_the_full_loss(name):
    student, teacher = logits_pair(rows=4, classes=6)
    values, indices = teacher.topk(6, dim=-1)
    full = textbrewer.KD_LOSS_MAP[name](student, teacher, 3.0)
    sparse = sparse_kd.topk_kd_loss(textbrewer.KD_LOSS_MAP[name], student, values, indices, 3.0)
    torch.testing.assert_close(sparse, full, rtol=1e-12, atol=1e-12)
    (grad_full,) = torch.autograd.grad(full, student)
    (grad_sparse,) = torch.autograd.grad(sparse, student)
    torch.testing.assert_close(grad_sparse, grad_full, rtol=1e-10, atol=1e-12)


def test_per_row_temperatures_and_3d_logits():
    student, teacher = logits_pair(rows=6, classes=5)
    student3, teacher3 = student.reshape(2, 3, 5), teacher.reshape(2, 3, 5)
    values, indices = teacher3.topk(2, dim=-1)
    temperature = torch.linspace(1, 3, 6, dtype=torch.float64)
    loss = sparse_kd.topk_ce_loss(student3, values, indices, temperature.reshape(2, 3))
    rows = [
        by_hand("ce", student[i : i + 1].detach(), teacher[i : i + 1], 2, float(temperature[i]))
        for i in range(6)
    ]
    assert loss.item() == pytest.approx(sum(rows) / 6, rel=1e-12)


def test_a_loss_without_a_topk_form_and_full_logit_options_are_refused():
    student, teacher = logits_pair()
    values, indices = teacher.topk(2, dim=-1)
    custom = lambda s, t, T: (s - t).abs().mean()  # noqa: E731
    with pytest.raises(ValueError, match=r"has no top-k form.*\['ce', 'kl', 'mse', 'reverse_kl'\]"):
        sparse_kd.topk_kd_loss(custom, student, values, indices, 1.0)
    with pytest.raises(ValueError, match="different rows; the positions do not align"):
        sparse_kd.topk_kd_loss(losses.kd_ce_loss, student[:3], values, indices, 1.0)


def examples(count=12):
    batches = make_batches(count // 4, batch_size=4)
    return [tuple(t[i] for t in batch) for batch in batches for i in range(4)]


def cached_run(tmp_path, config, topk, name, teachers=None, models=None, **distiller_options):
    teacher, student = models or make_models()
    data = examples()
    models_T = teachers or teacher
    cache = precompute_teacher_outputs(
        models_T,
        simple_adaptor,
        data,
        tmp_path / f"cache-{name}",
        None,
        topk=topk,
        progress_bar=False,
    )
    dataset = CachedTeacherDataset(data, cache, config)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=dataset.collate())
    distiller_class = textbrewer.MultiTeacherDistiller if teachers else textbrewer.BasicDistiller
    distiller = distiller_class(
        training_config(tmp_path / name),
        config,
        models_T,
        student,
        simple_adaptor,
        simple_adaptor,
        **distiller_options,
    )
    distiller.train(torch.optim.SGD(student.parameters(), lr=0.1), None, loader, 1)
    return student


def test_a_topk_cache_with_every_class_trains_like_the_full_cache(tmp_path):
    config = textbrewer.DistillationConfig(temperature=2)
    full = cached_run(tmp_path, config, None, "full")
    top = cached_run(tmp_path, config, 3, "top3")  # 3 classes: every class stored, sorted
    for key, value in full.state_dict().items():
        torch.testing.assert_close(top.state_dict()[key], value, rtol=1e-10, atol=1e-12)
    one = cached_run(tmp_path, config, 1, "top1")
    assert not torch.allclose(one.head.weight, full.head.weight)


def test_topk_refuses_schedulers_shift_and_averaged_teachers(tmp_path):
    shifted = textbrewer.DistillationConfig(probability_shift=True)
    with pytest.raises(ValueError, match="`probability_shift` needs the teacher's full logits"):
        cached_run(tmp_path, shifted, 2, "shift")
    scheduled = textbrewer.DistillationConfig(temperature_scheduler=["flsw", 1, 1])
    with pytest.raises(ValueError, match="`temperature_scheduler` needs the teacher's full"):
        cached_run(tmp_path, scheduled, 2, "flsw")
    teachers = [make_models(seed=1)[0], make_models(seed=2)[0]]
    config = textbrewer.DistillationConfig()
    with pytest.raises(ValueError, match="use combine_teachers='mean_losses'"):
        cached_run(tmp_path, config, 2, "mean", teachers=teachers)
    cached_run(tmp_path, config, 2, "losses", teachers=teachers, combine_teachers="mean_losses")


def test_kd_between_different_vocabulary_sizes_names_both_sizes(tmp_path):
    teacher, _ = make_models()
    student = copy.deepcopy(teacher)
    student.head = torch.nn.Linear(8, 5).double()
    distiller = textbrewer.BasicDistiller(
        training_config(tmp_path),
        textbrewer.DistillationConfig(),
        teacher,
        student,
        simple_adaptor,
        simple_adaptor,
    )
    with pytest.raises(ValueError, match=r"student's logits have 5 classes .* teacher's 3"):
        distiller.train(torch.optim.SGD(student.parameters(), lr=0.1), None, make_batches(1), 1)


def test_a_topk_cache_with_classes_beyond_the_students_is_refused_on_the_first_batch(tmp_path):
    torch.manual_seed(0)
    teacher = TinyEncoder(dim=8, layers=3, classes=7).double()  # a larger label set
    _, student = make_models()  # 3 classes
    before = copy.deepcopy(student.state_dict())
    with pytest.raises(
        ValueError,
        match=r"logits_topk_indices\[0\] from adaptor_T holds classes \d\.\.[3-6], but the "
        r"student's logits\[0\] have 3 classes \(0\.\.2\); the top-k teacher cache was made",
    ):
        cached_run(tmp_path, textbrewer.DistillationConfig(), 2, "wide", models=(teacher, student))
    stored = TeacherCache(tmp_path / "cache-wide").teacher_outputs(range(12))
    assert int(stored["logits_topk_indices"][0].max()) >= 3  # the case at hand
    for key, value in before.items():  # refused before any step
        assert torch.equal(student.state_dict()[key], value), key
