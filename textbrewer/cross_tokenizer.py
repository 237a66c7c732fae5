"""Teacher and student with different tokenizers: ``{'teacher': ..., 'student': ...}`` batches.

``CrossTokenizerCollate`` tokenizes the same raw texts twice, once per tokenizer, and returns a
batch whose ``'teacher'`` and ``'student'`` parts each feed one model (SPEC §3), each with its
own ``input_ids`` and ``attention_mask``. The two token sequences do not align position by
position, so only sequence-level features can be matched: logits over classes (sentence
classification), pooled hidden states or the ``[CLS]`` vector, which ``pooled_layers`` computes
in an adaptor. The distillers refuse the rest with errors that say why: an intermediate match
between token sequences of different lengths ("the positions do not align", naming the match and
both lengths), and KD between logits over vocabularies of different sizes (naming both sizes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Number
from typing import Any

import torch

POOLINGS = ("mean", "cls")


class CrossTokenizerCollate:
    """``collate_fn`` that tokenizes raw texts for the teacher and for the student.

    An example is a string; a ``(text, label)`` or ``(text, text_pair)`` or
    ``(text, text_pair, label)`` tuple; or a dict with ``text_key``, optionally
    ``text_pair_key`` and ``label_key``. Labels, when the examples have them, go into both
    sub-batches as a tensor under ``labels_name`` (what Hugging Face models take to compute their
    loss), unless ``labels_name`` is ``None``.

    Args:
        tokenizer_T: the teacher's tokenizer (a ``transformers`` tokenizer, or any callable
            with the same call signature returning tensors).
        tokenizer_S: the student's tokenizer.
        max_length: truncate both to this many tokens (``None``: the tokenizers' limits).
        max_length_T: the teacher's limit, if different.
        max_length_S: the student's limit, if different.
        padding: as the tokenizers take it (``True``: pad to the longest in the batch).
        text_key: the text field of dict examples.
        text_pair_key: the second text field of dict examples, if any.
        label_key: the label field of dict examples.
        labels_name: the key of the labels in each sub-batch (``None``: leave them out).

    Raises:
        ValueError: a tokenizer cannot pad (no pad token), or ``padding`` is false.

    Example:
        >>> collate = CrossTokenizerCollate(roberta_tokenizer, bert_tokenizer)  # doctest: +SKIP
        >>> batch = collate([("a fine film", 1), ("dull", 0)])  # doctest: +SKIP
        >>> sorted(batch), sorted(batch["student"])  # doctest: +SKIP
        (['student', 'teacher'], ['attention_mask', 'input_ids', 'labels', 'token_type_ids'])
    """

    def __init__(
        self,
        tokenizer_T: Any,
        tokenizer_S: Any,
        *,
        max_length: int | None = None,
        max_length_T: int | None = None,
        max_length_S: int | None = None,
        padding: bool | str = True,
        text_key: str = "text",
        text_pair_key: str | None = None,
        label_key: str = "label",
        labels_name: str | None = "labels",
    ) -> None:
        if not padding:
            raise ValueError(
                f"`padding`={padding!r}: batches of texts of different lengths need padding "
                "(True, 'longest' or 'max_length')"
            )
        for name, tokenizer in (("tokenizer_T", tokenizer_T), ("tokenizer_S", tokenizer_S)):
            if not callable(tokenizer):
                raise TypeError(f"`{name}` must be a tokenizer (callable), got {tokenizer!r}")
            if getattr(tokenizer, "pad_token", "") is None:
                raise ValueError(
                    f"`{name}` has no pad token, so it cannot pad a batch: set "
                    f"{name}.pad_token (e.g. to its eos_token) first"
                )
        self.tokenizer_T, self.tokenizer_S = tokenizer_T, tokenizer_S
        self.max_length_T = max_length_T or max_length
        self.max_length_S = max_length_S or max_length
        self.padding = padding
        self.text_key, self.text_pair_key = text_key, text_pair_key
        self.label_key, self.labels_name = label_key, labels_name

    @property
    def vocab_sizes(self) -> tuple[int | None, int | None]:
        """``(teacher's, student's)`` vocabulary sizes (``len(tokenizer)``), ``None`` if unknown."""
        return _vocab_size(self.tokenizer_T), _vocab_size(self.tokenizer_S)

    def __call__(self, examples: Sequence[Any]) -> dict[str, dict[str, torch.Tensor]]:
        """Returns ``{'teacher': {...}, 'student': {...}}``, each with its own attention mask."""
        texts, pairs, labels = self._fields(examples)
        batch = {
            "teacher": self._tokenize(self.tokenizer_T, texts, pairs, self.max_length_T),
            "student": self._tokenize(self.tokenizer_S, texts, pairs, self.max_length_S),
        }
        if labels is not None and self.labels_name is not None:
            tensor = torch.tensor(labels)
            batch["teacher"][self.labels_name] = tensor
            batch["student"][self.labels_name] = tensor
        return batch

    def _tokenize(self, tokenizer: Any, texts, pairs, max_length) -> dict[str, torch.Tensor]:
        encoded = tokenizer(
            texts,
            pairs,
            padding=self.padding,
            truncation=max_length is not None,
            max_length=max_length,
            return_tensors="pt",
        )
        return dict(encoded)

    def _fields(self, examples: Sequence[Any]) -> tuple[list, list | None, list | None]:
        if not examples:
            raise ValueError("CrossTokenizerCollate got an empty list of examples")
        parsed = [self._parse(example, index) for index, example in enumerate(examples)]
        texts = [text for text, _, _ in parsed]
        pairs = [pair for _, pair, _ in parsed]
        labels = [label for _, _, label in parsed]
        for name, values in (("text pair", pairs), ("label", labels)):
            present = [value is not None for value in values]
            if any(present) and not all(present):
                raise ValueError(f"some examples of this batch have a {name} and some do not")
        return (
            texts,
            pairs if pairs[0] is not None else None,
            labels if labels[0] is not None else None,
        )

    def _parse(self, example: Any, index: int) -> tuple[str, str | None, Any]:
        if isinstance(example, str):
            return example, None, None
        if isinstance(example, Mapping):
            if self.text_key not in example:
                raise KeyError(
                    f"example {index} has no text under `text_key`={self.text_key!r} (keys: "
                    f"{sorted(example)})"
                )
            pair = example.get(self.text_pair_key) if self.text_pair_key else None
            return example[self.text_key], pair, example.get(self.label_key)
        if isinstance(example, (tuple, list)) and example and isinstance(example[0], str):
            rest = list(example[1:])
            pair = rest.pop(0) if rest and isinstance(rest[0], str) else None
            label = rest.pop(0) if rest else None
            if rest or (label is not None and not isinstance(label, (Number, torch.Tensor))):
                raise ValueError(
                    f"example {index}: {example!r} is not (text[, text_pair][, label])"
                )
            return example[0], pair, label
        raise TypeError(
            f"example {index} must be a string, a (text[, text_pair][, label]) tuple or a dict "
            f"with {self.text_key!r}, got {type(example).__name__}"
        )


def pooled_layers(
    hidden_states: Sequence[torch.Tensor], attention_mask: torch.Tensor, pooling: str = "mean"
) -> list[torch.Tensor]:
    """Sequence-level features of every layer, for matches across tokenizers.

    Args:
        hidden_states: per layer, (batch, length, hidden) token states.
        attention_mask: (batch, length), 1 for real tokens.
        pooling: ``'mean'`` (over the real tokens) or ``'cls'`` (position 0).

    Returns:
        Per layer, a (batch, hidden) tensor: return it as ``hidden`` from both adaptors, and
        the matches compare sentences, not token positions.

    Example:
        >>> states = [torch.ones(2, 3, 4), torch.zeros(2, 3, 4)]
        >>> [tuple(x.shape) for x in pooled_layers(states, torch.ones(2, 3))]
        [(2, 4), (2, 4)]
    """
    if pooling not in POOLINGS:
        raise ValueError(f"`pooling`={pooling!r} is not one of {POOLINGS}")
    if pooling == "cls":
        return [states[:, 0] for states in hidden_states]
    mask = attention_mask.unsqueeze(-1)
    pooled = []
    for states in hidden_states:
        weights = mask.to(states.dtype)
        pooled.append((states * weights).sum(1) / weights.sum(1).clamp(min=1))
    return pooled


def _vocab_size(tokenizer: Any) -> int | None:
    try:
        return len(tokenizer)
    except TypeError:
        return getattr(tokenizer, "vocab_size", None)
