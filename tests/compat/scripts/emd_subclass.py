"""A TextBrewer 0.2.x-style subclass after the EMD distiller of TextBrewer's MNLI example.

It star-imports `textbrewer.distiller_utils`, subclasses `textbrewer.distiller_basic
.BasicDistiller`, sets `self.projs` / `self.projs_group` in `__init__`, turns logits caching
off through `self.d_config`, and overrides `train_on_batch` with `get_outputs_from_batch`,
`post_adaptor`, `select_logits_with_mask`, `self.kd_loss`, `self.t_config`, `self.model_T` and
`self.adaptor_T`, returning `(total_loss, losses_dict)`. Its projections must train and resume.
"""

import argparse

from textbrewer.distiller_basic import BasicDistiller
from textbrewer.distiller_utils import *  # noqa: F403 (what 0.2.x subclasses do)

torch.set_default_dtype(torch.float64)  # noqa: F405
LENGTH = 5


class Encoder(nn.Module):  # noqa: F405
    def __init__(self, hidden_size, layers):
        super().__init__()
        self.embed = nn.Embedding(12, hidden_size)  # noqa: F405
        self.layers = nn.ModuleList(  # noqa: F405
            nn.Linear(hidden_size, hidden_size)  # noqa: F405
            for _ in range(layers)
        )
        self.out = nn.Linear(hidden_size, 3)  # noqa: F405

    def forward(self, input_ids, attention_mask, labels):
        hidden = self.embed(input_ids)
        states = []
        for layer in self.layers:
            hidden = torch.tanh(layer(hidden))  # noqa: F405
            states.append(hidden)
        logits = self.out(hidden[:, 0])
        return logits, states, F.cross_entropy(logits, labels)  # noqa: F405


class EMDLikeDistiller(BasicDistiller):
    """Each student layer is projected and matched to every teacher layer, uniformly weighted
    (EMD with a fixed uniform transport plan), plus KD on the logits."""

    def __init__(self, *args, emd_weight=1.0, student_layers=2, dims=(6, 8), **kwargs):
        super().__init__(*args, **kwargs)
        self.d_config.is_caching_logits = False
        self.emd_weight = emd_weight
        self.projs = [nn.Linear(*dims) for _ in range(student_layers)]  # noqa: F405
        self.projs_group = [{"lr": 0.05}, {"lr": 0.02}]

    def train_on_batch(self, batch, args):
        (teacher_batch, results_T), (student_batch, results_S) = get_outputs_from_batch(  # noqa: F405
            batch, self.t_config.device, self.model_T, self.model_S, args
        )
        results_T = post_adaptor(self.adaptor_T(teacher_batch, results_T))  # noqa: F405
        results_S = post_adaptor(self.adaptor_S(student_batch, results_S))  # noqa: F405
        total_loss, losses_dict = 0, {}
        if "logits" in results_T and "logits" in results_S:
            logits_list_T = results_T["logits"]
            logits_list_S = results_S["logits"]
            if "logits_mask" in results_S:
                masks = results_S["logits_mask"]
                logits_list_S = select_logits_with_mask(logits_list_S, masks)  # noqa: F405
                logits_list_T = select_logits_with_mask(logits_list_T, masks)  # noqa: F405
            total_kd_loss = 0
            for l_T, l_S in zip(logits_list_T, logits_list_S):
                total_kd_loss = total_kd_loss + self.kd_loss(l_S, l_T, self.d_config.temperature)
            total_loss = total_loss + total_kd_loss * self.d_config.kd_loss_weight
            losses_dict["unweighted_kd_loss"] = total_kd_loss
        mask = results_S["inputs_mask"].unsqueeze(-1)
        hidden_T, hidden_S = results_T["hidden"], results_S["hidden"]
        emd = 0
        for index, student in enumerate(hidden_S):
            projected = self.projs[index](student)
            for teacher in hidden_T:
                squared = ((projected - teacher) ** 2 * mask).sum()
                emd = emd + squared / (mask.sum() * teacher.shape[-1])
        emd = emd / (len(hidden_S) * len(hidden_T))
        total_loss = total_loss + self.emd_weight * emd
        losses_dict["unweighted_emd"] = emd
        if "losses" in results_S:
            total_hl_loss = sum(loss.mean() for loss in results_S["losses"])
            total_loss = total_loss + total_hl_loss * self.d_config.hard_label_weight
            losses_dict["unweighted_hard_label_loss"] = total_hl_loss
        return total_loss, losses_dict


def make_data(count, seed=13):
    generator = torch.Generator().manual_seed(seed)  # noqa: F405
    batches = []
    for _ in range(count):
        ids = torch.randint(0, 12, (4, LENGTH), generator=generator)  # noqa: F405
        lengths = torch.randint(2, LENGTH + 1, (4,), generator=generator)  # noqa: F405
        mask = (torch.arange(LENGTH)[None] < lengths[:, None]).to(torch.float64)  # noqa: F405
        labels = torch.randint(0, 3, (4,), generator=generator)  # noqa: F405
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return batches


def adaptor(batch, model_outputs):
    return {
        "logits": model_outputs[0],
        "hidden": model_outputs[1],
        "inputs_mask": batch["attention_mask"],
        "losses": model_outputs[2],
    }


def build_models(seed):
    torch.manual_seed(seed)  # noqa: F405
    return Encoder(8, 3), Encoder(6, 2)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--num_train_epochs", type=float, default=2.0)
    parser.add_argument("--save_training_state", action="store_true")
    parser.add_argument("--resume_from", default=None)
    args = parser.parse_args()
    model_T, model_S = build_models(0)
    train_config = TrainingConfig(  # noqa: F405
        output_dir=args.output_dir, device="cpu", save_training_state=args.save_training_state
    )
    distill_config = DistillationConfig(  # noqa: F405
        temperature=4, hard_label_weight=0.5, kd_loss_weight=1, is_caching_logits=True
    )
    distiller = EMDLikeDistiller(train_config, distill_config, model_T, model_S, adaptor, adaptor)
    optimizer = torch.optim.AdamW(model_S.parameters(), lr=1e-2)  # noqa: F405
    extra = {} if args.resume_from is None else {"resume_from": args.resume_from}
    with distiller:
        distiller.train(optimizer, make_data(4), args.num_train_epochs, max_grad_norm=1.0, **extra)
    return distiller


if __name__ == "__main__":
    RESULT = main()
