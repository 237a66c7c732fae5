"""An adaptor for MiniLM-style distillation of Hugging Face BERT-like models.

It returns the attention maps as scores (log-probabilities, whose softmax is the probabilities
the model returned) and appends the last layer's value relation, so that
``textbrewer.recipes.minilm_matches`` finds it at index ``num_layers`` of the ``attention`` list.
"""

from typing import Any, Callable

import torch
from torch import nn


def minilm_adaptor(value_layer: nn.Linear, heads: int) -> Callable[[Any, Any], dict]:
    """Builds an adaptor; ``value_layer`` is the last layer's value projection.

    For a ``BertForSequenceClassification`` that is ``model.bert.encoder.layer[-1]
    .attention.self.value``. Call the model with ``output_attentions=True`` (and
    ``attn_implementation="eager"``, the implementation that returns attention maps).
    """
    captured = {}
    value_layer.register_forward_hook(lambda module, args, output: captured.update(value=output))

    def adaptor(batch: dict, outputs: Any) -> dict:
        value = captured["value"]  # (batch, length, hidden)
        size, length, hidden = value.shape
        value = value.view(size, length, heads, hidden // heads).transpose(1, 2)
        relation = value @ value.transpose(-1, -2) / (hidden // heads) ** 0.5
        padding = 1.0 - batch["attention_mask"][:, None, None, :].to(relation.dtype)
        relation = relation - 1e4 * padding  # padded keys get no probability
        scores = [probs.clamp_min(1e-12).log() for probs in outputs.attentions]
        return {
            "logits": outputs.logits,
            "attention": [*scores, relation],  # (batch, heads, length, length) each
            "inputs_mask": batch["attention_mask"],
        }

    return adaptor


if __name__ == "__main__":
    import transformers

    from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig, recipes

    def bert(layers: int, hidden: int) -> transformers.BertForSequenceClassification:
        config = transformers.BertConfig(
            vocab_size=50,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=2,
            intermediate_size=2 * hidden,
            attn_implementation="eager",
        )
        return transformers.BertForSequenceClassification(config)

    torch.manual_seed(0)
    teacher, student = bert(layers=6, hidden=32), bert(layers=3, hidden=16)
    batches = [
        {
            "input_ids": torch.randint(1, 50, (4, 8)),
            "attention_mask": torch.ones(4, 8, dtype=torch.long),
        }
        for _ in range(4)
    ]
    distiller = GeneralDistiller(
        TrainingConfig(device="cpu", output_dir="minilm_models"),
        DistillationConfig(intermediate_matches=recipes.minilm_matches(3, 6)),
        teacher,
        student,
        minilm_adaptor(teacher.bert.encoder.layer[-1].attention.self.value, heads=2),
        minilm_adaptor(student.bert.encoder.layer[-1].attention.self.value, heads=2),
    )
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    distiller.train(optimizer, None, batches, num_epochs=1, output_attentions=True)
