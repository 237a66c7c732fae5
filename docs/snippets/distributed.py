"""Distributed distillation. Launch: torchrun --nproc_per_node=2 docs/snippets/distributed.py"""

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig

local_rank = int(os.environ["LOCAL_RANK"])  # set by torchrun, like RANK and WORLD_SIZE
use_cuda = torch.cuda.is_available()
dist.init_process_group("nccl" if use_cuda else "gloo")  # optional: the distiller would do it

torch.manual_seed(0)  # the same initial weights on every rank
teacher = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 3))
student = nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))


def adaptor(batch, outputs):
    return {"logits": outputs}


dataset = TensorDataset(torch.randn(512, 16))
sampler = DistributedSampler(dataset, shuffle=True)  # each rank reads its own share
dataloader = DataLoader(dataset, batch_size=16, sampler=sampler)  # set_epoch is called for you

train_config = TrainingConfig(
    device="cuda" if use_cuda else "cpu",  # 'cuda' becomes cuda:<local_rank>
    local_rank=local_rank,
    mixed_precision="bf16" if use_cuda else "no",
    output_dir="saved_models_ddp",  # rank 0 writes the checkpoints
    log_dir="runs/ddp",  # rank 0 writes tensorboard
)
distiller = GeneralDistiller(
    train_config, DistillationConfig(temperature=4), teacher, student, adaptor, adaptor
)
optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)


def report(model, step):  # runs on every rank; model is the DistributedDataParallel wrapper
    if dist.get_rank() == 0:
        print(f"checkpoint at step {step}: {type(model).__name__}")


distiller.train(optimizer, None, dataloader, num_epochs=2, callback=report)
dist.destroy_process_group()
