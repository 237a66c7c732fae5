"""Different batches for teacher and student, and precomputed teacher outputs (teacher_cache)."""

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from textbrewer import BasicDistiller, DistillationConfig, TrainingConfig


class PairedDataset(Dataset):
    """Item i is {'teacher': ..., 'student': ...}, optionally with 'teacher_cache'."""

    def __init__(self, teacher_items, student_items, teacher_cache=None):
        if len(teacher_items) != len(student_items):
            raise ValueError("teacher and student datasets must have the same length")
        self.teacher_items, self.student_items = teacher_items, student_items
        self.teacher_cache = teacher_cache

    def __len__(self):
        return len(self.teacher_items)

    def __getitem__(self, index):
        item = {"teacher": self.teacher_items[index], "student": self.student_items[index]}
        if self.teacher_cache is not None:
            item["teacher_cache"] = self.teacher_cache[index]
        return item


# The teacher reads 12 features per example, the student another view of it with 8.
teacher, student = nn.Linear(12, 3), nn.Linear(8, 3)
teacher_items = [(torch.randn(12),) for _ in range(64)]  # each item: a tuple -> model(*batch)
student_items = [{"input": torch.randn(8)} for _ in range(64)]  # a dict -> student(input=...)


def adaptor_T(batch, outputs):  # outputs: the teacher's logits, or the cached value
    return {"logits": outputs}


def adaptor_S(batch, outputs):
    return {"logits": outputs}


config = DistillationConfig(temperature=2)
train_config = TrainingConfig(device="cpu", output_dir="saved_models", progress_bar=False)

# 1. Different batches: the default collate keeps the nested structure of each item.
loader = DataLoader(PairedDataset(teacher_items, student_items), batch_size=16)
distiller = BasicDistiller(train_config, config, teacher, student, adaptor_T, adaptor_S)
distiller.train(torch.optim.SGD(student.parameters(), lr=0.1), None, loader, num_epochs=1)

# 2. Cached teacher outputs: the teacher is not run; adaptor_T receives the cached logits.
with torch.no_grad():
    cache = [teacher(*item) for item in teacher_items]
loader = DataLoader(PairedDataset(teacher_items, student_items, cache), batch_size=16)
distiller.train(torch.optim.SGD(student.parameters(), lr=0.1), None, loader, num_epochs=1)
