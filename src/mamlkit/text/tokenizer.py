"""A word-level tokenizer with a vocabulary fitted on meta-training texts only."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

PAD_ID = 0
"""Token id of padding (also the ``padding_idx`` of the trainable encoders)."""
UNK_ID = 1
"""Token id of words outside the vocabulary."""

_WORD = re.compile(r"<[^\s<>]+>|[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


def split_words(text: str) -> list[str]:
    """Lower-cased words of ``text``: runs of letters/digits (with an apostrophe suffix such as
    ``don't``), single punctuation marks, and angle-bracket tags such as FewRel's ``<e1>`` kept
    whole.
    """
    return _WORD.findall(text.lower())


@dataclass
class WordTokenizer:
    """Maps texts to fixed-length int64 token ids ``[batch, max_length]``, padded with ``PAD_ID``.

    Build it with :meth:`fit` on the meta-training texts only, so meta-test words are unknown
    words (``UNK_ID``) exactly as for a new class in deployment. ``vocabulary[i]`` is the word of
    id ``i``; ids 0 and 1 are ``<pad>`` and ``<unk>``.
    """

    vocabulary: list[str]
    max_length: int = 32
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {self.max_length}.")
        if self.vocabulary[:2] != ["<pad>", "<unk>"]:
            raise ValueError(
                "vocabulary must start with '<pad>', '<unk>' (ids 0 and 1); build it with "
                "WordTokenizer.fit(texts)."
            )
        self._index = {word: i for i, word in enumerate(self.vocabulary)}

    @classmethod
    def fit(cls, texts: Iterable[str], max_length: int = 32, min_count: int = 1,
            max_size: int | None = None) -> WordTokenizer:
        """Vocabulary of the words in ``texts`` seen at least ``min_count`` times.

        Words are ordered by decreasing count (ties alphabetically) and cut at ``max_size`` ids in
        total (including ``<pad>`` and ``<unk>``) when given. Pass meta-training texts only.
        """
        counts = Counter(word for text in texts for word in split_words(text))
        if not counts:
            raise ValueError("no words found in the texts: fit the tokenizer on non-empty texts.")
        words = sorted((w for w, n in counts.items() if n >= min_count),
                       key=lambda w: (-counts[w], w))
        if max_size is not None:
            if max_size < 3:
                raise ValueError(f"max_size must be >= 3 (pad, unk, one word), got {max_size}.")
            words = words[:max_size - 2]
        return cls(["<pad>", "<unk>"] + words, max_length=max_length)

    @property
    def vocab_size(self) -> int:
        """Number of token ids (the embedding table size an encoder needs)."""
        return len(self.vocabulary)

    def encode_one(self, text: str) -> list[int]:
        """Token ids of one text, truncated to ``max_length`` (no padding)."""
        return [self._index.get(w, UNK_ID) for w in split_words(text)][: self.max_length]

    def encode(self, texts: Sequence[str]) -> Tensor:
        """Token ids of ``texts`` as an int64 tensor ``[len(texts), max_length]``, right-padded."""
        ids = torch.full((len(texts), self.max_length), PAD_ID, dtype=torch.int64)
        for row, text in enumerate(texts):
            tokens = self.encode_one(text)
            if tokens:
                ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.int64)
        return ids

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """The words of ``ids`` joined by spaces, padding dropped (for inspection)."""
        values = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        return " ".join(self.vocabulary[i] for i in values if i != PAD_ID)
