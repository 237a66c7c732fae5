"""Hugging Face models as transformers builds them today, and the mistakes users make with them.

Each test builds real tiny BERTs from a config (no download) and checks that a mistake ends in
an error naming the adaptor, the key and the fix, and that what 0.2.x accepted still trains.
"""

import copy
import functools

import pytest
import torch

import textbrewer
from tests.conftest import training_config
from textbrewer.distillers import _adaptor_checks

transformers = pytest.importorskip("transformers")


def bert(layers=2, hidden=8, seed=0, attention="eager", head=True, **flags):
    return copy.deepcopy(_pristine(layers, hidden, seed, attention, head, tuple(flags.items())))


@functools.cache
def _pristine(layers, hidden, seed, attention, head, flags):
    """Each model is built (and randomly initialised) once; tests get copies."""
    flags = dict(flags)
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=30,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=16,
        num_labels=3,
        attn_implementation=attention,
        **flags,
    )
    model = transformers.BertForSequenceClassification if head else transformers.BertModel
    return model(config)


def batches(count=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    result = []
    for _ in range(count):
        mask = torch.ones(4, 7, dtype=torch.long)
        mask[1, 5:] = 0
        mask[3, 4:] = 0
        ids = torch.randint(1, 30, (4, 7), generator=generator) * mask
        labels = torch.randint(0, 3, (4,), generator=generator)
        result.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return result


def adaptor(batch, outputs):
    return {
        "logits": outputs.logits,
        "hidden": outputs.hidden_states,
        "attention": outputs.attentions,
        "inputs_mask": batch["attention_mask"],
    }


HIDDEN = {"layer_T": 4, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 1}
ATTENTION = {"layer_T": 3, "layer_S": 1, "feature": "attention", "loss": "attention_mse"}


def distil(tmp_path, matches, teacher=None, student=None, adaptor_T=adaptor, adaptor_S=adaptor,
           **forward):  # fmt: skip
    teacher = teacher or bert(4, 16, seed=0)
    student = student or bert(2, 8, seed=1)
    torch.manual_seed(2)  # the projections' initialisation and dropout draw from it
    distiller = textbrewer.GeneralDistiller(
        training_config(tmp_path),
        textbrewer.DistillationConfig(intermediate_matches=matches),
        teacher,
        student,
        adaptor_T,
        adaptor_S,
    )
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    distiller.train(optimizer, None, batches(), 1, **forward)
    return student


def with_proj(match, dim_in=8, dim_out=16):
    return {**match, "proj": ["linear", dim_in, dim_out]}


def test_hidden_states_not_asked_for_name_the_adaptor_key_and_flag(tmp_path):
    with pytest.raises(ValueError, match="intermediate_matches|adaptor_S") as raised:
        distil(tmp_path, [with_proj(HIDDEN)])
    message = str(raised.value)
    assert "adaptor_S returned 'hidden'=None" in message
    assert "`hidden_states`" in message
    assert "output_hidden_states=True" in message
    assert "intermediate_matches[0] (hidden, loss 'hidden_mse', layer_S=2, layer_T=4)" in message


def test_the_teacher_side_is_named_when_only_the_teacher_lacks_the_flag(tmp_path):
    student = bert(2, 8, seed=1, output_hidden_states=True)
    with pytest.raises(ValueError, match="adaptor_T returned 'hidden'=None.*output_hidden_states"):
        distil(tmp_path, [with_proj(HIDDEN)], student=student)


def test_attentions_not_asked_for_name_output_attentions(tmp_path):
    match = {**ATTENTION, "weight": 1}
    with pytest.raises(ValueError, match="adaptor_S returned 'attention'=None.*output_attentions"):
        distil(tmp_path, [match])


def test_sdpa_attention_returns_none_and_the_message_says_eager(tmp_path):
    match = {**ATTENTION, "weight": 1}
    teacher, student = bert(4, 16, 0, attention="sdpa"), bert(2, 8, 1, attention="sdpa")
    probe = student(input_ids=torch.ones(1, 3, dtype=torch.long), output_attentions=True)
    if probe.attentions:  # transformers < 5 fell back to eager attention when asked for them
        pytest.skip("this transformers returns attentions from an sdpa model")
    with pytest.raises(ValueError, match="intermediate_matches|adaptor_S") as raised:
        distil(tmp_path, [match], teacher, student, output_attentions=True)
    message = str(raised.value)
    assert "adaptor_S returned 'attention' as an empty sequence" in message
    assert "attn_implementation='eager'" in message


def test_eager_attention_trains_the_same_match(tmp_path):
    match = {**ATTENTION, "weight": 1}
    student = bert(2, 8, 1)
    before = student.bert.encoder.layer[0].attention.self.query.weight.clone()
    distil(tmp_path, [match], student=student, output_attentions=True)
    assert not torch.equal(before, student.bert.encoder.layer[0].attention.self.query.weight)


def test_last_hidden_state_where_the_layers_go_is_refused(tmp_path):
    def last_only(batch, outputs):
        return {**adaptor(batch, outputs), "hidden": outputs.hidden_states[-1]}

    with pytest.raises(ValueError, match="intermediate_matches|adaptor_S") as raised:
        distil(tmp_path, [with_proj(HIDDEN, 8, 16)], adaptor_S=last_only, output_hidden_states=True)
    message = str(raised.value)
    assert "adaptor_S returned 'hidden' as one tensor of shape (4, 7, 8)" in message
    assert "would read batch rows" in message
    assert "outputs.hidden_states rather than outputs.last_hidden_state" in message


def test_one_attention_map_where_the_layers_go_is_refused(tmp_path):
    def last_only(batch, outputs):
        return {**adaptor(batch, outputs), "attention": outputs.attentions[-1]}

    match = {**ATTENTION, "layer_S": 0, "weight": 1}
    with pytest.raises(ValueError, match=r"'attention' as one tensor of shape \(4, 2, 7, 7\)"):
        distil(tmp_path, [match], adaptor_S=last_only, output_attentions=True)


def test_layers_stacked_in_one_tensor_train_like_the_tuple(tmp_path):
    def stacked(batch, outputs):
        return {**adaptor(batch, outputs), "hidden": torch.stack(outputs.hidden_states)}

    match = with_proj(HIDDEN)
    reference = distil(tmp_path / "tuple", [match], output_hidden_states=True)
    result = distil(tmp_path / "stacked", [match], adaptor_S=stacked, output_hidden_states=True)
    for key, value in reference.state_dict().items():
        assert torch.equal(result.state_dict()[key], value), key


def test_the_whole_model_output_as_hidden_is_refused(tmp_path):
    def whole(batch, outputs):
        return {**adaptor(batch, outputs), "hidden": outputs}

    with pytest.raises(TypeError) as raised:
        distil(tmp_path, [with_proj(HIDDEN)], adaptor_S=whole, output_hidden_states=True)
    message = str(raised.value)
    assert "adaptor_S returned 'hidden' as a SequenceClassifierOutput with keys" in message
    assert "'logits', 'hidden_states'" in message
    assert "outputs.hidden_states" in message


def test_hidden_as_a_dict_by_layer_number_trains_as_in_0_2_x(tmp_path):
    def by_number(batch, outputs):
        return {**adaptor(batch, outputs), "hidden": dict(enumerate(outputs.hidden_states))}

    match = with_proj(HIDDEN)
    reference = distil(tmp_path / "tuple", [match], output_hidden_states=True)
    result = distil(tmp_path / "dict", [match], adaptor_S=by_number, output_hidden_states=True)
    for key, value in reference.state_dict().items():
        assert torch.equal(result.state_dict()[key], value), key
    missing = {**match, "layer_S": 5}
    with pytest.raises(IndexError, match="layer_S=5 is out of range"):
        distil(tmp_path / "missing", [missing], adaptor_S=by_number, output_hidden_states=True)


def test_an_additive_attention_mask_as_inputs_mask_is_refused(tmp_path):
    def additive(batch, outputs):
        mask = (1.0 - batch["attention_mask"].float()) * -10000.0
        return {**adaptor(batch, outputs), "inputs_mask": mask}

    with pytest.raises(ValueError, match="intermediate_matches|adaptor_S") as raised:
        distil(tmp_path, [with_proj(HIDDEN)], adaptor_S=additive, output_hidden_states=True)
    message = str(raised.value)
    assert "adaptor_S returned an `inputs_mask` with values other than 0 and 1 (e.g. -10000)" in (
        message
    )
    assert "additive attention mask" in message
    assert "batch['attention_mask']" in message


def test_the_mask_values_are_read_on_the_first_batch_only(tmp_path, monkeypatch):
    calls = []
    check = _adaptor_checks.check_inputs_mask
    monkeypatch.setattr(
        "textbrewer.distillers._matching.check_inputs_mask",
        lambda mask, *args: calls.append(1) or check(mask, *args),
    )
    distil(tmp_path, [with_proj(HIDDEN)], output_hidden_states=True)
    assert calls == [1]  # 2 batches, one read-back


def test_a_boolean_or_float_0_1_mask_is_accepted(tmp_path):
    for kind in (torch.bool, torch.float32):

        def typed(batch, outputs, kind=kind):
            return {**adaptor(batch, outputs), "inputs_mask": batch["attention_mask"].to(kind)}

        distil(
            tmp_path / str(kind), [with_proj(HIDDEN)], adaptor_S=typed, output_hidden_states=True
        )


def test_a_projection_whose_dim_in_does_not_fit_names_match_dim_in_and_size(tmp_path):
    with pytest.raises(ValueError, match="intermediate_matches|adaptor_S") as raised:
        distil(tmp_path, [with_proj(HIDDEN, 12, 16)], output_hidden_states=True)
    message = str(raised.value)
    assert "intermediate_matches[0] (hidden, loss 'hidden_mse', layer_S=2, layer_T=4)" in message
    assert "proj ['linear', 12, 16] takes features of size dim_in=12" in message
    assert "the student's 'hidden' has size 8 (shape (4, 7, 8))" in message
    assert "set 'proj': ['linear', 8, 16]" in message
    assert "mat1" not in message


def test_a_student_in_float64_with_a_float32_projection_says_so(tmp_path):
    student = bert(2, 8, seed=1).double()
    with pytest.raises(ValueError, match=r"is torch.float64 but the projection's weights are"):
        distil(tmp_path, [with_proj(HIDDEN)], student=student, output_hidden_states=True)


def test_an_inputs_mask_of_another_length_is_named(tmp_path):
    def short(batch, outputs):
        return {**adaptor(batch, outputs), "inputs_mask": batch["attention_mask"][:, :5]}

    with pytest.raises(ValueError, match="intermediate_matches|adaptor_S") as raised:
        distil(tmp_path, [with_proj(HIDDEN)], adaptor_S=short, output_hidden_states=True)
    assert (
        "`inputs_mask` has shape (4, 5), which does not fit the 'hidden' of shape (4, 7, 16)"
        in (str(raised.value))
    )


def test_a_missing_loss_says_the_batch_needs_labels(tmp_path):
    def with_loss(batch, outputs):
        return {"logits": outputs.logits, "losses": outputs.loss}

    unlabelled = [{k: v for k, v in b.items() if k != "labels"} for b in batches()]
    student = bert(2, 8, seed=1)
    distiller = textbrewer.BasicDistiller(
        training_config(tmp_path),
        textbrewer.DistillationConfig(),
        bert(4, 16),
        student,
        with_loss,
        with_loss,
    )
    with pytest.raises(TypeError) as raised:
        distiller.train(torch.optim.AdamW(student.parameters()), None, unlabelled, 1)
    assert "adaptor_T: `losses` is None" in str(raised.value)
    assert "only when the batch holds `labels`" in str(raised.value)


def test_a_bert_model_without_head_distils_hidden_states(tmp_path):
    def encoder_adaptor(batch, outputs):
        return {"hidden": outputs.hidden_states, "inputs_mask": batch["attention_mask"]}

    teacher, student = bert(4, 16, 0, head=False), bert(2, 8, 1, head=False)
    bare = [{k: v for k, v in b.items() if k != "labels"} for b in batches()]
    distiller = textbrewer.GeneralDistiller(
        training_config(tmp_path),
        textbrewer.DistillationConfig(intermediate_matches=[with_proj(HIDDEN)]),
        teacher,
        student,
        encoder_adaptor,
        encoder_adaptor,
    )
    before = student.encoder.layer[1].output.dense.weight.clone()
    distiller.train(
        torch.optim.AdamW(student.parameters()), None, bare, 1, output_hidden_states=True
    )
    assert not torch.equal(before, student.encoder.layer[1].output.dense.weight)
