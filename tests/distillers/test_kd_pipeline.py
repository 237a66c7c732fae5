"""The KD pipeline per logits pair: mask selection, probability shift, temperature scheduler."""

import copy

import pytest
import torch

import textbrewer
from tests.conftest import LENGTH, make_batches, make_models, training_config
from textbrewer.distillers._kd import probability_shift


def test_probability_shift_swaps_top_class_with_label_and_skips_negative_labels():
    logits = torch.tensor([[1.0, 5.0, 2.0], [3.0, 0.0, 1.0], [0.0, 1.0, 9.0]])
    labels = torch.tensor([2, 0, -100])
    shifted = probability_shift(logits, labels)
    assert shifted.tolist() == [[1.0, 2.0, 5.0], [3.0, 0.0, 1.0], [0.0, 1.0, 9.0]]
    assert logits.tolist()[0] == [1.0, 5.0, 2.0]


class TokenTagger(torch.nn.Module):
    """Per-token logits (batch, length, classes) for sequence-labelling KD."""

    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = torch.nn.Embedding(13, 5).double()
        self.out = torch.nn.Linear(5, 4).double()

    def forward(self, input_ids, attention_mask, labels):
        return self.out(torch.tanh(self.embed(input_ids)))


def tag_adaptor(batch, outputs):
    return {"logits": outputs, "logits_mask": batch[1], "labels": batch[2]}


def reference_loss(logits_S, logits_T, mask, labels, base, beta, gamma):
    rows_S, rows_T = [], []
    for b in range(mask.shape[0]):
        for position in range(mask.shape[1]):
            if mask[b, position]:
                rows_S.append(logits_S[b, position])
                teacher = logits_T[b, position].clone()
                label = int(labels[b, position])
                if label >= 0:
                    top = int(teacher.argmax())
                    teacher[top], teacher[label] = teacher[label].clone(), teacher[top].clone()
                rows_T.append(teacher)
    S, T = torch.stack(rows_S), torch.stack(rows_T)
    s = S.detach() / (S.detach().norm(dim=-1, keepdim=True) + 1e-4)
    t = T / (T.norm(dim=-1, keepdim=True) + 1e-4)
    w = (1 - (s * t).sum(-1)) ** gamma
    temperature = (base + (w.mean() - w) * beta)[:, None]
    p = torch.softmax(T / temperature, -1)
    return -(p * torch.log_softmax(S / temperature, -1)).sum(-1).mean()


def test_masked_3d_logits_with_shift_and_flsw_match_a_hand_loop(tmp_path):
    teacher, student = TokenTagger(0), TokenTagger(1)
    reference = copy.deepcopy(student)
    batches = []
    for ids, mask, _ in make_batches(3):
        labels = torch.randint(0, 4, (ids.shape[0], LENGTH))
        labels[:, 0] = -100
        batches.append((ids, mask, labels))
    config = textbrewer.DistillationConfig(
        temperature=3, temperature_scheduler=["flsw", 0.5, 2], probability_shift=True
    )
    distiller = textbrewer.BasicDistiller(
        training_config(tmp_path), config, teacher, student, tag_adaptor, tag_adaptor
    )
    distiller.train(torch.optim.SGD(student.parameters(), lr=0.5), None, batches, 2)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.5)
    for _ in range(2):
        for batch in batches:
            with torch.no_grad():
                logits_T = teacher(*batch)
            loss = reference_loss(reference(*batch), logits_T, batch[1], batch[2], 3, 0.5, 2)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(student.state_dict()[key], value, rtol=1e-10, atol=1e-10)


def test_one_mask_per_logits_tensor_selects_each(tmp_path):
    teacher, student = TokenTagger(0), TokenTagger(1)
    seen = []

    def spy(logits_S, logits_T, temperature):
        seen.append((logits_S.shape, logits_T.shape))
        return textbrewer.losses.kd_mse_loss(logits_S, logits_T, temperature)

    textbrewer.KD_LOSS_MAP["spy_mse"] = spy
    try:

        def adaptor(batch, outputs):
            everything = torch.ones_like(batch[1])
            return {"logits": [outputs, outputs], "logits_mask": [batch[1], everything]}

        distiller = textbrewer.BasicDistiller(
            training_config(tmp_path),
            textbrewer.DistillationConfig(kd_loss_type="spy_mse"),
            teacher,
            student,
            adaptor,
            adaptor,
        )
        batches = make_batches(1)
        distiller.train(torch.optim.SGD(student.parameters(), lr=0.1), None, batches, 1)
    finally:
        del textbrewer.KD_LOSS_MAP["spy_mse"]
    kept = int(batches[0][1].sum())
    assert seen == [((kept, 4), (kept, 4)), ((4 * LENGTH, 4), (4 * LENGTH, 4))]


def test_data_parallel_flag_still_trains(tmp_path):
    teacher, student = make_models()
    distiller = textbrewer.BasicDistiller(
        training_config(tmp_path, data_parallel=True),
        textbrewer.DistillationConfig(),
        teacher,
        student,
        lambda b, o: {"logits": o[0]},
        lambda b, o: {"logits": o[0]},
    )
    seen = []
    distiller.train(
        torch.optim.SGD(student.parameters(), lr=0.1),
        None,
        make_batches(2),
        1,
        callback=lambda model, step: seen.append(type(model).__name__),
    )
    assert seen == ["DataParallel"]
    assert sorted(torch.load(tmp_path / "out" / "gs2.pkl")) == sorted(student.state_dict())


@pytest.mark.parametrize("name", ["ce", "mse", "kl", "reverse_kl"])
def test_every_kd_loss_trains_through_the_distiller(tmp_path, name):
    teacher, student = make_models()
    adaptor = lambda b, o: {"logits": o[0]}  # noqa: E731
    distiller = textbrewer.BasicDistiller(
        training_config(tmp_path),
        textbrewer.DistillationConfig(kd_loss_type=name),
        teacher,
        student,
        adaptor,
        adaptor,
    )
    before = copy.deepcopy(student.state_dict())
    distiller.train(torch.optim.SGD(student.parameters(), lr=0.1), None, make_batches(2), 1)
    assert not torch.equal(before["head.weight"], student.state_dict()["head.weight"])
