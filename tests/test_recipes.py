"""textbrewer.recipes: layer maps checked by hand; every recipe trains a GeneralDistiller step."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import TinyEncoder, make_batches, training_config
from textbrewer import DistillationConfig, GeneralDistiller, recipes

TEACHER_LAYERS, TEACHER_DIM, STUDENT_DIM = 12, 8, 4


@pytest.mark.parametrize(
    ("student_layers", "teacher_layers", "expected_T"),
    [
        (3, 12, [0, 4, 8, 12]),
        (4, 12, [0, 3, 6, 9, 12]),
        (6, 12, [0, 2, 4, 6, 8, 10, 12]),
        (3, 5, [0, 1, 3, 5]),  # 5 // 3 = 1, 10 // 3 = 3
        (2, 2, [0, 1, 2]),
    ],
)
def test_uniform_layer_map_sends_student_layer_m_to_teacher_layer_m_n_over_m(
    student_layers, teacher_layers, expected_T
):
    pairs = recipes.uniform_layer_map(student_layers, teacher_layers)
    assert pairs == list(zip(expected_T, range(student_layers + 1)))


def test_uniform_layer_map_rejects_a_student_deeper_than_the_teacher():
    with pytest.raises(ValueError, match=r"`student_layers`=4 exceeds `teacher_layers`=3"):
        recipes.uniform_layer_map(4, 3)


@pytest.mark.parametrize("value", [0, -1, 2.0, True], ids=repr)
def test_layer_counts_must_be_positive_ints(value):
    with pytest.raises(ValueError, match=r"`student_layers`=.* must be an int >= 1"):
        recipes.hidden_matches(value)


def test_l3_hidden_mse_is_four_projected_hidden_matches():
    proj = ["linear", 768, 768]
    assert recipes.preset_matches("L3_hidden_mse") == [
        {"layer_T": t, "layer_S": s, "feature": "hidden", "loss": "hidden_mse", "weight": 1}
        | {"proj": proj}
        for t, s in [(0, 0), (4, 1), (8, 2), (12, 3)]
    ]


def test_small_variants_project_from_the_smaller_student_width():
    for name in ("L3_small_hidden_mse", "L4_small_hidden_mse", "L6_small_hidden_mse"):
        assert {tuple(m["proj"]) for m in recipes.preset_matches(name)} == {("linear", 384, 768)}


def test_tinybert_maps_hidden_states_with_embeddings_and_attentions_of_the_mapped_layers():
    matches = recipes.preset_matches("L4_tinybert")
    hidden = [(m["layer_T"], m["layer_S"], m["loss"]) for m in matches if m["feature"] == "hidden"]
    attention = [
        (m["layer_T"], m["layer_S"], m["loss"]) for m in matches if m["feature"] == "attention"
    ]
    assert hidden == [(t, s, "hidden_mse") for t, s in [(0, 0), (3, 1), (6, 2), (9, 3), (12, 4)]]
    assert attention == [(t, s, "attention_mse") for t, s in [(2, 0), (5, 1), (8, 2), (11, 3)]]
    assert all(m["proj"] == ["linear", 312, 768] for m in matches if m["feature"] == "hidden")
    assert all("proj" not in m for m in matches if m["feature"] == "attention")


def test_minilm_matches_the_last_attention_and_the_appended_value_relation():
    assert recipes.preset_matches("L3_minilm") == [
        {"layer_T": 11, "layer_S": 2, "feature": "attention", "loss": "attention_ce", "weight": 1},
        {"layer_T": 12, "layer_S": 3, "feature": "attention", "loss": "attention_ce", "weight": 1},
    ]
    assert len(recipes.minilm_matches(3, value_relation=False)) == 1


def test_no_projection_needs_equal_widths():
    assert all("proj" not in m for m in recipes.hidden_matches(3, proj=None))
    with pytest.raises(ValueError, match=r"`proj`=None needs equal widths.*proj='linear'"):
        recipes.hidden_matches(3, student_hidden=384, proj=None)


def test_an_unknown_preset_name_lists_the_known_ones():
    with pytest.raises(KeyError, match=r"`name`='L5_hidden_mse' is not in recipes.PRESETS"):
        recipes.preset_matches("L5_hidden_mse")


def test_each_call_returns_fresh_lists():
    first = recipes.preset_matches("L3_hidden_mse")
    first[0]["proj"][1] = 1
    assert recipes.preset_matches("L3_hidden_mse")[0]["proj"] == ["linear", 768, 768]


@pytest.mark.parametrize("name", sorted(recipes.PRESETS))
def test_every_preset_at_bert_base_sizes_is_a_valid_distillation_config(name):
    config = DistillationConfig(intermediate_matches=recipes.preset_matches(name))
    assert [m.to_dict() for m in config.intermediate_matches] == [
        {**m, "proj": [*m["proj"], {}] if "proj" in m else None}
        for m in recipes.preset_matches(name)
    ]


def adaptor(batch, outputs):
    """TinyEncoder outputs, with MiniLM's value relation appended to the attention list."""
    logits, hidden, attentions, _ = outputs
    last = hidden[-1]  # (batch, length, dim); stands in for the last layer's values
    key_mask = (1.0 - batch[1][:, None, None, :].to(last.dtype)) * -1e4
    relation = torch.einsum("bqd,bkd->bqk", last, last)[:, None] / math.sqrt(last.shape[-1])
    relation = relation.expand(-1, attentions[0].shape[1], -1, -1) + key_mask
    return {
        "logits": logits,
        "hidden": hidden,
        "attention": (*attentions, relation),
        "inputs_mask": batch[1],
    }


def tiny_overrides(name):
    if "minilm" in name:
        return {"teacher_layers": TEACHER_LAYERS}
    return {
        "teacher_layers": TEACHER_LAYERS,
        "teacher_hidden": TEACHER_DIM,
        "student_hidden": STUDENT_DIM,
    }


@pytest.mark.parametrize("name", sorted(recipes.PRESETS))
def test_every_preset_trains_one_step_of_general_distiller_on_tiny_models(name, tmp_path):
    student_layers = int(name[1])
    matches = recipes.preset_matches(name, **tiny_overrides(name))
    torch.manual_seed(0)
    teacher = TinyEncoder(dim=TEACHER_DIM, layers=TEACHER_LAYERS)
    student = TinyEncoder(dim=STUDENT_DIM, layers=student_layers)
    parts_seen = []

    class Recorder(GeneralDistiller):
        def compute_loss(self, results_S, results_T):
            total, parts = super().compute_loss(results_S, results_T)
            parts_seen.append({key: float(value.detach()) for key, value in parts.items()})
            return total, parts

    distiller = Recorder(
        training_config(tmp_path),
        DistillationConfig(intermediate_matches=matches),
        teacher,
        student,
        adaptor,
        adaptor,
    )
    before = [p.detach().clone() for p in student.parameters()]
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    distiller.train(optimizer, None, make_batches(1), num_epochs=1)

    expected_parts = {
        f"unweighted_{m['feature']}_{m['loss']}_{m['layer_S']}_{m['layer_T']}" for m in matches
    }
    (parts,) = parts_seen
    assert expected_parts <= set(parts)
    assert all(math.isfinite(parts[key]) and parts[key] > 0 for key in expected_parts)
    assert sum(proj is not None for proj in distiller.projs) == sum("proj" in m for m in matches)
    assert not any(torch.equal(a, b) for a, b in zip(before, student.parameters()))


def test_the_documented_minilm_adaptor_trains_a_tiny_bert_with_the_minilm_recipe(tmp_path):
    transformers = pytest.importorskip("transformers")
    snippet = Path(__file__).resolve().parent.parent / "docs" / "snippets" / "minilm_adaptor.py"
    spec = importlib.util.spec_from_file_location("minilm_adaptor_snippet", snippet)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def bert(layers, hidden):
        config = transformers.BertConfig(
            vocab_size=30,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=2,
            intermediate_size=2 * hidden,
            max_position_embeddings=8,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            attn_implementation="eager",
        )
        return transformers.BertForSequenceClassification(config)

    torch.manual_seed(0)
    teacher, student = bert(4, 16), bert(2, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]])
    batch = {"input_ids": torch.randint(1, 30, (2, 6)) * mask, "attention_mask": mask}
    adaptor_S = module.minilm_adaptor(student.bert.encoder.layer[-1].attention.self.value, 2)
    results = adaptor_S(batch, student(**batch, output_attentions=True))
    assert len(results["attention"]) == 3  # two layers' scores, then the value relation
    probabilities = student(**batch, output_attentions=True).attentions[-1]
    torch.testing.assert_close(results["attention"][1].softmax(-1), probabilities)
    relation = results["attention"][2]  # (batch, heads, length, length), padded keys -1e4 below
    assert relation.shape == (2, 2, 6, 6)
    assert (relation[1, :, :, 3:] < -1e3).all()

    parts_seen = []

    class Recorder(GeneralDistiller):
        def compute_loss(self, results_S, results_T):
            total, parts = super().compute_loss(results_S, results_T)
            parts_seen.append(sorted(parts))
            return total, parts

    distiller = Recorder(
        training_config(tmp_path),
        DistillationConfig(intermediate_matches=recipes.minilm_matches(2, 4)),
        teacher,
        student,
        module.minilm_adaptor(teacher.bert.encoder.layer[-1].attention.self.value, 2),
        adaptor_S,
    )
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    distiller.train(optimizer, None, [batch], num_epochs=1, output_attentions=True)
    assert {
        "unweighted_attention_attention_ce_1_3",
        "unweighted_attention_attention_ce_2_4",
    } <= set(parts_seen[0])
