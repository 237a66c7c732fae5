"""Training from an on-disk teacher cache gives the weights of training with the live teacher."""

import copy

import numpy as np
import pytest
import torch

import textbrewer
from tests.conftest import make_batches, make_models, simple_adaptor, training_config
from textbrewer.teacher_cache import CachedTeacherDataset, precompute_teacher_outputs

MATCHES = [
    {"layer_T": 3, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 1},
    {"layer_T": 2, "layer_S": 1, "feature": "attention", "loss": "attention_mse", "weight": 1},
    {"layer_T": [1, 2], "layer_S": [0, 1], "feature": "hidden", "loss": "nst", "weight": 0.5},
]


def examples(count=20, seed=0):
    """Single examples (input_ids, attention_mask, label), padded to the same length."""
    batches = make_batches(count // 4, batch_size=4, seed=seed)
    return [tuple(t[i] for t in batch) for batch in batches for i in range(4)]


class Counting(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.model(*args, **kwargs)


def loader(dataset, collate=None, seed=0, batch_size=4):
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=collate
    )


def cached_loader(data, cache, config, **kwargs):
    dataset = CachedTeacherDataset(data, cache, config)
    return loader(dataset, dataset.collate(), **kwargs)


def assert_same_weights(trained, reference):
    """Equal to float64 round-off: the cache's teacher forwards ran on other batches.

    A GEMM over 3 rows and one over 4 may round the same row differently (AVX-512 kernels do), so
    a cached output can differ from the live one in its last bit; any real difference in what
    was stored or read is many orders of magnitude larger.
    """
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(trained.state_dict()[key], value, rtol=1e-12, atol=1e-14)


def general(tmp_path, name, config, teacher, student, **overrides):
    return textbrewer.GeneralDistiller(
        training_config(tmp_path / name, **overrides),
        config,
        teacher,
        student,
        simple_adaptor,
        simple_adaptor,
    )


@pytest.mark.parametrize("mode", ["epochs", "steps"])
def test_cache_run_equals_live_teacher_run_with_shuffling(tmp_path, mode):
    teacher, student = make_models()
    live_student = copy.deepcopy(student)
    data = examples()
    config = textbrewer.DistillationConfig(intermediate_matches=MATCHES, hard_label_weight=1)
    cache = precompute_teacher_outputs(
        teacher,
        simple_adaptor,
        data,
        tmp_path / "cache",
        config,
        batch_size=3,
        chunk_size=7,
        progress_bar=False,
    )
    counting = Counting(teacher)
    kwargs = {"num_steps": 7} if mode == "steps" else {}
    epochs = None if mode == "steps" else 3
    extra = {"ckpt_steps": 3} if mode == "steps" else {}
    cached = general(tmp_path, "cached", config, counting, student, **extra)
    cached.train(
        torch.optim.SGD(student.parameters(), lr=0.1),
        None,
        cached_loader(data, cache, config),
        epochs,
        **kwargs,
    )
    assert counting.calls == 0
    live = general(tmp_path, "live", config, teacher, live_student, **extra)
    live.train(
        torch.optim.SGD(live_student.parameters(), lr=0.1), None, loader(data), epochs, **kwargs
    )
    assert_same_weights(student, live_student)
    assert not torch.equal(student.head.weight, make_models()[1].head.weight)  # it trained


def test_basic_distiller_from_a_logits_only_cache(tmp_path):
    teacher, student = make_models()
    live_student = copy.deepcopy(student)
    data = examples()
    config = textbrewer.DistillationConfig(temperature=2, hard_label_weight=0.5)
    cache = precompute_teacher_outputs(
        teacher, simple_adaptor, data, tmp_path / "cache", None, progress_bar=False
    )
    assert cache.selection == [{"hidden": [], "attention": []}]
    for model, batches, name in (
        (student, cached_loader(data, cache, config), "cached"),
        (live_student, loader(data), "live"),
    ):
        textbrewer.BasicDistiller(
            training_config(tmp_path / name),
            config,
            teacher,
            model,
            simple_adaptor,
            simple_adaptor,
        ).train(torch.optim.SGD(model.parameters(), lr=0.1), None, batches, 2)
    assert_same_weights(student, live_student)


def test_multi_teacher_cache_holds_one_result_per_teacher(tmp_path):
    teachers = [make_models(seed=1)[0], make_models(seed=2)[0]]
    _, student = make_models(seed=3)
    live_student = copy.deepcopy(student)
    data = examples()
    matches = [dict(MATCHES[0], teacher=1), dict(MATCHES[1], teacher=0)]
    config = textbrewer.DistillationConfig(intermediate_matches=matches)
    cache = precompute_teacher_outputs(
        teachers, simple_adaptor, data, tmp_path / "cache", config, progress_bar=False
    )
    assert cache.selection == [
        {"hidden": [], "attention": [2]},
        {"hidden": [3], "attention": []},
    ]
    counting = [Counting(t) for t in teachers]
    for model, models_T, batches, name in (
        (student, counting, cached_loader(data, cache, config), "cached"),
        (live_student, teachers, loader(data), "live"),
    ):
        textbrewer.MultiTeacherDistiller(
            training_config(tmp_path / name),
            config,
            models_T,
            model,
            simple_adaptor,
            simple_adaptor,
        ).train(torch.optim.SGD(model.parameters(), lr=0.1), None, batches, 2)
    assert [c.calls for c in counting] == [0, 0]
    assert_same_weights(student, live_student)


def test_multi_task_with_one_cache_per_task(tmp_path):
    teachers = {"a": make_models(seed=1)[0], "b": make_models(seed=2)[0]}
    _, student = make_models(seed=3)
    live_student = copy.deepcopy(student)
    data = {"a": examples(12, seed=1), "b": examples(20, seed=2)}
    config = textbrewer.DistillationConfig(intermediate_matches=MATCHES[:2])
    caches = {
        task: precompute_teacher_outputs(
            teachers[task],
            simple_adaptor,
            data[task],
            tmp_path / task,
            config,
            progress_bar=False,
        )
        for task in data
    }
    adaptors = {task: simple_adaptor for task in data}
    runs = (
        (student, {t: cached_loader(data[t], caches[t], config) for t in data}, "cached"),
        (live_student, {t: loader(data[t]) for t in data}, "live"),
    )
    for model, loaders, name in runs:
        np.random.seed(5)
        distiller = textbrewer.MultiTaskDistiller(
            training_config(tmp_path / name, ckpt_steps=4),
            config,
            teachers,
            model,
            adaptors,
            adaptors,
        )
        distiller.train(torch.optim.SGD(model.parameters(), lr=0.1), None, loaders, 9)
    assert_same_weights(student, live_student)


def test_dynamic_padding_fits_cached_features_to_each_batch_length(tmp_path):
    """Examples of different lengths, padded per batch: masked losses see the same values."""
    teacher, student = make_models()
    live_student = copy.deepcopy(student)
    generator = torch.Generator().manual_seed(4)
    data = []
    for _ in range(16):
        length = int(torch.randint(2, 7, (1,), generator=generator))
        ids = torch.randint(1, 13, (length,), generator=generator)
        data.append((ids, int(torch.randint(0, 3, (1,), generator=generator))))

    def pad(items):
        length = max(len(ids) for ids, _ in items)
        ids = torch.zeros(len(items), length, dtype=torch.long)
        mask = torch.zeros(len(items), length, dtype=torch.long)
        for row, (tokens, _) in enumerate(items):
            ids[row, : len(tokens)], mask[row, : len(tokens)] = tokens, 1
        return ids, mask, torch.tensor([label for _, label in items])

    matches = [dict(MATCHES[0])]  # hidden_mse with the student's mask
    config = textbrewer.DistillationConfig(intermediate_matches=matches, kd_loss_weight=0)
    cache = precompute_teacher_outputs(
        teacher,
        simple_adaptor,
        data,
        tmp_path / "cache",
        config,
        collate_fn=pad,
        batch_size=5,
        chunk_size=6,
        progress_bar=False,
    )
    lengths = {
        np.load(p, mmap_mode="r").shape[1]
        for p in (tmp_path / "cache").glob("chunks/*/t0.hidden.3.npy")
    }
    assert len(lengths) > 1  # chunks were stored at different lengths
    dataset = CachedTeacherDataset(data, cache, config)
    for model, batches, name in (
        (student, loader(dataset, dataset.collate(pad), seed=2), "cached"),
        (live_student, loader(data, pad, seed=2), "live"),
    ):
        general(tmp_path, name, config, teacher, model).train(
            torch.optim.SGD(model.parameters(), lr=0.1), None, batches, 2
        )
    for key, value in live_student.state_dict().items():
        torch.testing.assert_close(student.state_dict()[key], value, rtol=1e-12, atol=1e-12)


def test_a_layer_the_cache_does_not_store_fails_with_the_stored_layers(tmp_path):
    teacher, student = make_models()
    data = examples(8)
    stored = textbrewer.DistillationConfig(intermediate_matches=MATCHES[:1])
    cache = precompute_teacher_outputs(
        teacher, simple_adaptor, data, tmp_path / "cache", stored, progress_bar=False
    )
    other = textbrewer.DistillationConfig(intermediate_matches=[dict(MATCHES[0], layer_T=2)])
    dataset = CachedTeacherDataset(data, cache)  # no config: it is not checked up front
    distiller = general(tmp_path, "run", other, teacher, student)
    with pytest.raises(IndexError, match=r"'hidden' layer 2 is not in the teacher cache .*\[3\]"):
        distiller.train(
            torch.optim.SGD(student.parameters(), lr=0.1),
            None,
            loader(dataset, dataset.collate()),
            1,
        )


@pytest.mark.slow
def test_dataloader_workers_read_the_cache_themselves(tmp_path):
    teacher, _ = make_models()
    data = examples(12)
    config = textbrewer.DistillationConfig(intermediate_matches=MATCHES[:1])
    cache = precompute_teacher_outputs(
        teacher,
        simple_adaptor,
        data,
        tmp_path / "cache",
        config,
        chunk_size=5,
        progress_bar=False,
    )
    cache.teacher_outputs([0])  # the parent has a memory map open: workers must cope
    dataset = CachedTeacherDataset(data, cache, config)
    order = torch.randperm(12, generator=torch.Generator().manual_seed(1)).tolist()
    batches = list(
        torch.utils.data.DataLoader(
            dataset,
            batch_size=4,
            sampler=order,
            collate_fn=dataset.collate(),
            num_workers=2,
            multiprocessing_context="spawn",
        )
    )
    for position, batch in enumerate(batches):
        indices = order[4 * position : 4 * position + 4]
        expected = cache.teacher_outputs(indices)
        assert torch.equal(batch["teacher_cache"]["hidden"][3], expected["hidden"][3])
        assert torch.equal(batch["teacher_cache"]["logits"][0], expected["logits"][0])
        assert torch.equal(batch["student"][0], torch.stack([data[i][0] for i in indices]))
