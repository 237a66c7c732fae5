"""Extending textbrewer: registered functions, and a distiller subclass with its own module."""

import torch
import torch.nn.functional as F
from torch import nn

from textbrewer import (
    FEATURES,
    MATCH_LOSS_MAP,
    PROJ_MAP,
    TEMPERATURE_SCHEDULER,
    BasicDistiller,
    DistillationConfig,
    GeneralDistiller,
    TrainingConfig,
    register_new,
)
from textbrewer.losses import kd_kl_loss, kd_reverse_kl_loss


# 1. An intermediate loss: called loss(S, T, mask=None) with S, T (batch, length, hidden).
def masked_l1(S, T, mask=None):
    if mask is None:
        return (S - T).abs().mean()
    mask = mask.to(S.dtype).unsqueeze(-1)  # (batch, length, 1)
    return ((S - T).abs() * mask).sum() / (mask.sum() * S.size(-1))


MATCH_LOSS_MAP["l1"] = masked_l1  # plain assignment, or register_new("match_Loss", "l1", ...)


# 2. A KD loss: called loss(logits_S, logits_T, temperature); the temperature may be one per row.
def symmetric_kl(logits_S, logits_T, temperature=1):
    return kd_kl_loss(logits_S, logits_T, temperature) + kd_reverse_kl_loss(
        logits_S, logits_T, temperature
    )


register_new("kd_loss", "symmetric_kl", symmetric_kl)

# 3. A weight scheduler: progress x = global_step / total_steps in [0, 1] -> weight.
register_new("weight_scheduler", "half_then_zero", lambda x: 1.0 if x < 0.5 else 0.0)


# 4. A temperature scheduler builder, configured as ["teacher_confidence", beta].
def teacher_confidence_builder(beta):
    def scheduler(logits_S, logits_T, base_temperature):  # detached (rows, classes) logits
        confidence = logits_T.softmax(-1).max(-1).values  # (rows,)
        return base_temperature * (1 + beta * (confidence.mean() - confidence))

    return scheduler


teacher_confidence_builder.needs_arguments = True  # reject a bare name when the config is built
TEMPERATURE_SCHEDULER["teacher_confidence"] = teacher_confidence_builder

# 5. A projection: factory(dim_in_student, dim_out_teacher) -> nn.Module.
PROJ_MAP["mlp"] = lambda dim_in, dim_out: nn.Sequential(
    nn.Linear(dim_in, dim_out), nn.GELU(), nn.Linear(dim_out, dim_out)
)

# 6. A feature of your own: adaptors return it under its name, matches read it.
FEATURES.append("embeddings")


class Tagger(nn.Module):
    def __init__(self, hidden_size):
        super().__init__()
        self.embed = nn.Embedding(100, hidden_size)
        self.layer = nn.Linear(hidden_size, hidden_size)
        self.head = nn.Linear(hidden_size, 5)

    def forward(self, input_ids, attention_mask):
        embeddings = self.embed(input_ids)  # (batch, length, hidden)
        hidden = torch.tanh(self.layer(embeddings))
        return self.head(hidden), embeddings, hidden


def adaptor(batch, outputs):
    input_ids, attention_mask = batch
    logits, embeddings, hidden = outputs
    return {
        "logits": logits,  # (batch, length, 5)
        "logits_mask": attention_mask,  # selects the real tokens' logits
        "embeddings": [embeddings],
        "hidden": [hidden],
        "inputs_mask": attention_mask,
    }


ids = torch.randint(1, 100, (64, 10))
mask = (torch.arange(10) < torch.randint(3, 11, (64, 1))).long()  # (64, 10) of 0/1
batches = [(ids[i : i + 8], mask[i : i + 8]) for i in range(0, 64, 8)]
train_config = TrainingConfig(device="cpu", output_dir="saved_models", progress_bar=False)
distill_config = DistillationConfig(
    kd_loss_type="symmetric_kl",
    temperature_scheduler=["teacher_confidence", 0.5],
    kd_loss_weight_scheduler="half_then_zero",
    intermediate_matches=[
        {"layer_T": 0, "layer_S": 0, "feature": "hidden", "loss": "l1", "weight": 1,
         "proj": ["mlp", 16, 32]},
        {"layer_T": 0, "layer_S": 0, "feature": "embeddings", "loss": "hidden_mse", "weight": 1,
         "proj": ["linear", 16, 32, {"lr": 1e-2}]},
    ],
)  # fmt: skip
teacher, student = Tagger(32), Tagger(16)
distiller = GeneralDistiller(train_config, distill_config, teacher, student, adaptor, adaptor)
optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
distiller.train(optimizer, None, batches, num_epochs=2)


# 7. A subclass: BasicDistiller plus a trained "bridge" from pooled student to teacher states,
#    scored by a loss of its own. Returning the bridge from extra_modules() is all it takes for
#    the session to train it (its own param group), wrap it in DDP (self.wrapped) and save and
#    resume it with the training state.
def pooled_cos(pooled_S, pooled_T):  # (batch, hidden) each -> a 0-dim loss
    return 1 - F.cosine_similarity(pooled_S, pooled_T, dim=-1).mean()


class PooledHiddenDistiller(BasicDistiller):
    def __init__(self, *args, bridge_dims=(16, 32), pooled_weight=1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.bridge = nn.Linear(*bridge_dims).to(self.device)  # create it on the device
        self.pooled_weight = pooled_weight

    def extra_modules(self):
        return [self.bridge]

    def compute_loss(self, results_S, results_T):
        total, parts = super().compute_loss(results_S, results_T)  # KD and hard-label terms
        pooled_S = self.wrapped(self.bridge)(results_S["hidden"][-1].mean(1))
        pooled = pooled_cos(pooled_S, results_T["hidden"][-1].mean(1))
        parts = {**parts, "unweighted_pooled_cos": pooled}  # logged as scalar/<name>
        return total + self.pooled_weight * pooled, parts


def distil_pooled(output_dir, resume_from=None):
    torch.manual_seed(0)
    teacher, student = Tagger(32), Tagger(16)
    config = TrainingConfig(
        device="cpu", output_dir=output_dir, progress_bar=False, save_training_state=True
    )
    distiller = PooledHiddenDistiller(
        config, DistillationConfig(), teacher, student, adaptor, adaptor
    )
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    distiller.train(optimizer, None, batches, num_epochs=2, resume_from=resume_from)
    return distiller


distiller = distil_pooled("saved_models/pooled")
# Resuming from the first epoch's checkpoint ends exactly where the uninterrupted run did,
# bridge included: it was saved and restored with the training state.
resumed = distil_pooled("saved_models/pooled", resume_from="saved_models/pooled/gs8.pkl")
same = torch.equal(resumed.bridge.weight, distiller.bridge.weight)
print("resumed run ends with the same bridge:", same)  # True
student = distiller.model_S

# 8. The step without the loop: train_on_batch + your own backward and optimizer.
optimizer = torch.optim.AdamW(
    [{"params": list(student.parameters())}, *distiller.extra_param_groups()], lr=1e-3
)
with distiller:  # teacher in eval(), student in train()
    for batch in batches:
        total, parts = distiller.train_on_batch(batch, {})  # moves the batch to the device
        total.backward()
        optimizer.step()
        optimizer.zero_grad()
print({name: round(value.item(), 4) for name, value in parts.items()})
