"""Hugging Face models as they are: ModelOutput reaches the adaptors, dict batches, BERT matches."""

import pytest
import torch

import textbrewer
from tests.conftest import training_config

transformers = pytest.importorskip("transformers")


def tiny_bert(layers, hidden, seed):
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=40,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=16,
        num_labels=3,
        attn_implementation="eager",
    )
    return transformers.BertForSequenceClassification(config)


def collate(examples):
    """What a tokenizer plus DataCollatorWithPadding yields: a dict of padded tensors."""
    length = max(len(ids) for ids, _ in examples)
    input_ids = torch.zeros(len(examples), length, dtype=torch.long)
    attention_mask = torch.zeros(len(examples), length, dtype=torch.long)
    for row, (ids, _) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": torch.zeros_like(input_ids),
        "labels": torch.tensor([label for _, label in examples]),
    }


def dataset(count=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(count):
        length = int(torch.randint(4, 10, (1,), generator=generator))
        ids = torch.randint(1, 40, (length,), generator=generator).tolist()
        examples.append((ids, ids[0] % 3))
    return examples


seen_outputs = []


def adaptor(batch, outputs):
    seen_outputs.append(type(outputs))
    return {
        "logits": outputs.logits,
        "hidden": outputs.hidden_states,
        "attention": outputs.attentions,
        "inputs_mask": batch["attention_mask"],
        "losses": outputs.loss,
    }


def test_general_distiller_matches_hidden_states_and_attentions_of_bert(tmp_path):
    teacher, student = tiny_bert(4, 16, 0), tiny_bert(2, 8, 1)
    loader = torch.utils.data.DataLoader(dataset(), batch_size=8, collate_fn=collate)
    config = textbrewer.DistillationConfig(
        temperature=2,
        hard_label_weight=0.5,
        intermediate_matches=[
            {
                "layer_T": 0,
                "layer_S": 0,
                "feature": "hidden",
                "loss": "hidden_mse",
                "weight": 1,
                "proj": ["linear", 8, 16],
            },
            {
                "layer_T": 4,
                "layer_S": 2,
                "feature": "hidden",
                "loss": "hidden_mse",
                "weight": 1,
                "proj": ["linear", 8, 16],
            },
            {
                "layer_T": 1,
                "layer_S": 0,
                "feature": "attention",
                "loss": "attention_mse",
                "weight": 1,
            },
            {
                "layer_T": 3,
                "layer_S": 1,
                "feature": "attention",
                "loss": "attention_ce",
                "weight": 1,
            },
        ],
    )
    totals = []

    class Recorder(textbrewer.GeneralDistiller):
        def compute_loss(self, results_S, results_T):
            total, parts = super().compute_loss(results_S, results_T)
            totals.append(float(total.detach()))
            return total, parts

    distiller = Recorder(training_config(tmp_path), config, teacher, student, adaptor, adaptor)
    optimizer = torch.optim.AdamW(student.parameters(), lr=3e-3)
    seen_outputs.clear()
    distiller.train(optimizer, None, loader, 6, output_hidden_states=True, output_attentions=True)
    assert set(seen_outputs) == {transformers.modeling_outputs.SequenceClassifierOutput}
    assert sum(totals[-4:]) < 0.9 * sum(totals[:4])
    fresh = tiny_bert(2, 8, 2)
    fresh.load_state_dict(torch.load(tmp_path / "out" / "gs24.pkl"))


def test_basic_trainer_trains_a_bert_teacher_from_dict_batches(tmp_path):
    model = tiny_bert(2, 8, 0)
    loader = torch.utils.data.DataLoader(dataset(), batch_size=8, collate_fn=collate)
    trainer = textbrewer.BasicTrainer(
        training_config(tmp_path), model, lambda batch, outputs: {"losses": outputs.loss}
    )
    trainer.train(torch.optim.AdamW(model.parameters(), lr=1e-2), None, loader, 2)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gs4.pkl", "gs8.pkl"]


def test_a_batch_encoding_keeps_its_type_and_metadata_when_moved():
    from textbrewer.distillers._batches import move_to_device

    encoding = transformers.BatchEncoding(
        {"input_ids": torch.ones(2, 3, dtype=torch.long)}, encoding=None, tensor_type="pt"
    )
    encoding.custom = "kept"
    moved = move_to_device(encoding, torch.device("cpu"))
    assert moved is encoding
    assert moved.custom == "kept"
    assert torch.equal(moved["input_ids"], torch.ones(2, 3, dtype=torch.long))
