"""DistributedDataParallel through torch.distributed (gloo on CPU, 2 processes)."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

import textbrewer
from tests.conftest import PROJECTED_HIDDEN_MATCH as MATCH
from tests.conftest import (
    leave_process_group,
    make_batches,
    make_models,
    simple_adaptor,
    training_config,
)
from textbrewer.training.plans import LoaderPasses

pytestmark = pytest.mark.slow


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def distill(rank, world_size, batches, workdir, matches):
    teacher, student = make_models(teacher_dim=8, student_dim=6)
    config = training_config(
        workdir,
        local_rank=rank if world_size > 1 else -1,
        gradient_accumulation_steps=2,
        ckpt_frequency=2,
    )
    distiller = textbrewer.GeneralDistiller(
        config,
        textbrewer.DistillationConfig(hard_label_weight=1, intermediate_matches=matches),
        teacher,
        student,
        simple_adaptor,
        simple_adaptor,
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


def worker(rank, world_size, port, workdir, results):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size)
    )
    torch.set_num_threads(1)
    full = make_batches(6, batch_size=4)
    # Each rank gets its half of every batch; unpadded so the means split evenly.
    halves = [tuple(t[rank * 2 : (rank + 1) * 2] for t in batch) for batch in full]
    halves = [(ids.clamp(min=1), torch.ones_like(mask), labels) for ids, mask, labels in halves]
    student, distiller, seen = distill(rank, world_size, halves, workdir, [MATCH])
    torch.save(
        {
            "student": student.state_dict(),
            "proj": distiller.matches.projections.state_dict(),
            "seen": seen,
        },
        os.path.join(results, f"rank{rank}.pt"),
    )
    leave_process_group()


def test_two_gloo_processes_match_one_process_with_double_batch(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    mp.spawn(worker, args=(2, free_port(), tmp_path / "ddp", str(results)), nprocs=2, join=True)
    full = make_batches(6, batch_size=4)
    full = [(ids.clamp(min=1), torch.ones_like(mask), labels) for ids, mask, labels in full]
    student, distiller, _ = distill(0, 1, full, tmp_path / "single", [MATCH])
    ranks = [torch.load(results / f"rank{r}.pt") for r in range(2)]
    for saved in ranks:
        for key, value in student.state_dict().items():
            torch.testing.assert_close(saved["student"][key], value, rtol=0, atol=1e-6)
        for key, value in distiller.matches.projections.state_dict().items():
            torch.testing.assert_close(saved["proj"][key], value, rtol=0, atol=1e-6)
    assert (
        ranks[0]["seen"]
        == ranks[1]["seen"]
        == [("DistributedDataParallel", step) for step in (1, 3, 4, 6)]
    )
    assert sorted(os.listdir(tmp_path / "ddp" / "out")) == [
        "gs1.pkl",
        "gs3.pkl",
        "gs4.pkl",
        "gs6.pkl",
    ]


def test_distributed_sampler_epoch_is_set_before_every_pass():
    class Sampler:
        def __init__(self):
            self.epochs = []

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

    class Loader(list):
        sampler = Sampler()

    loader = Loader(make_batches(2))
    passes = LoaderPasses(loader)
    for _ in range(5):
        passes.next_cycled()
    assert loader.sampler.epochs == [0, 1, 2]
