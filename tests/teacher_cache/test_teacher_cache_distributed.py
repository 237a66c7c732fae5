"""Two gloo processes: each rank precomputes its share; training from the cache with a
DistributedSampler equals training with the live teacher."""

import copy
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import textbrewer
from tests.conftest import (
    leave_process_group,
    make_batches,
    make_models,
    simple_adaptor,
    training_config,
)
from textbrewer.teacher_cache import CachedTeacherDataset, precompute_teacher_outputs

pytestmark = pytest.mark.slow

MATCHES = [
    {"layer_T": 3, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 1},
    {"layer_T": 1, "layer_S": 1, "feature": "attention", "loss": "attention_ce", "weight": 1},
]


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def examples():
    batches = make_batches(6, batch_size=4)
    return [tuple(t[i] for t in batch) for batch in batches for i in range(4)]


def train(rank, workdir, teacher, student, dataset, collate):
    config = textbrewer.DistillationConfig(intermediate_matches=MATCHES, hard_label_weight=1)
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=2, rank=rank, seed=3)
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, sampler=sampler, collate_fn=collate)
    distiller = textbrewer.GeneralDistiller(
        training_config(Path(workdir), local_rank=rank),
        config,
        teacher,
        student,
        simple_adaptor,
        simple_adaptor,
    )
    distiller.train(torch.optim.SGD(student.parameters(), lr=0.1), None, loader, 3)
    return config


def worker(rank, port, workdir, results):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2"
    )
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    teacher, student = make_models()
    live_student = copy.deepcopy(student)
    data = examples()
    config = textbrewer.DistillationConfig(intermediate_matches=MATCHES)
    calls = []
    hook = teacher.register_forward_hook(lambda *args: calls.append(rank))
    cache = precompute_teacher_outputs(
        teacher,
        simple_adaptor,
        data,
        os.path.join(workdir, "cache"),
        config,
        batch_size=4,
        chunk_size=4,
        progress_bar=False,
    )
    precompute_calls = len(calls)
    dataset = CachedTeacherDataset(data, cache, config)
    train(rank, os.path.join(workdir, "cached"), teacher, student, dataset, dataset.collate())
    cached_calls = len(calls) - precompute_calls
    hook.remove()
    train(rank, os.path.join(workdir, "live"), teacher, live_student, data, None)
    torch.save(
        {
            "cached": student.state_dict(),
            "live": live_student.state_dict(),
            "precompute_calls": precompute_calls,
            "cached_calls": cached_calls,
            "chunks_written": sorted(os.listdir(os.path.join(workdir, "cache", "chunks"))),
        },
        os.path.join(results, f"rank{rank}.pt"),
    )
    leave_process_group()


def test_two_ranks_precompute_their_share_and_train_from_the_cache_like_the_live_teacher(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    mp.spawn(worker, args=(free_port(), str(tmp_path), str(results)), nprocs=2, join=True)
    ranks = [torch.load(results / f"rank{r}.pt") for r in range(2)]
    # 24 examples in 6 chunks of 4: each rank ran the teacher on its 3 chunks, one batch each.
    assert [saved["precompute_calls"] for saved in ranks] == [3, 3]
    assert [saved["cached_calls"] for saved in ranks] == [0, 0]
    assert ranks[0]["chunks_written"] == [f"{c:05d}" for c in range(6)]
    initial = make_models()[1].state_dict()
    for saved in ranks:
        for key, value in saved["live"].items():
            # To round-off: the cache's teacher forwards ran on other batches (see
            # test_teacher_cache_training.assert_same_weights).
            torch.testing.assert_close(saved["cached"][key], value, rtol=1e-12, atol=1e-14)
            assert torch.equal(ranks[0]["live"][key], value), key
    assert not torch.equal(ranks[0]["cached"]["head.weight"], initial["head.weight"])
