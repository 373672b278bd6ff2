"""Grouping encoded texts by class so that N-way K-shot episodes can be drawn from a split.

Each split's examples become one tensor per class (token ids ``[n_c, length]`` or embeddings
``[n_c, dim]`` or cached states ``[n_c, length, dim + 1]``), the form
:class:`mamlkit.datasets.episodic.EpisodeSampler` draws episodes from (Vinyals et al., 2016).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mamlkit.text.data import TextClassificationData
from mamlkit.text.splits import ClassSplit

if TYPE_CHECKING:
    from mamlkit.datasets.episodic import EpisodeSampler

@dataclass
class ClassGroups:
    """Per-class tensors of one split: ``tensors[j]`` holds the examples of dataset class
    ``class_ids[j]`` (named ``class_names[j]``), in file order."""

    tensors: list[Tensor]
    class_ids: list[int]
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.tensors)

    def counts(self) -> list[int]:
        """Number of examples per group."""
        return [int(t.shape[0]) for t in self.tensors]

    def stacked(self, examples: int | None = None) -> Tensor:
        """One dense tensor ``[classes, examples, ...]`` of the first ``examples`` per class.

        Without ``examples`` every class must have the same count (true for CLINC150 and FewRel,
        not for BANKING77, whose smallest class has 75 examples).
        """
        counts = self.counts()
        if examples is None:
            if len(set(counts)) != 1:
                raise ValueError(
                    f"classes have {min(counts)}..{max(counts)} examples, so they cannot be "
                    f"stacked whole; pass examples=<= {min(counts)} to keep that many per class, "
                    "or use the list in .tensors (EpisodeSampler accepts it)."
                )
            examples = counts[0]
        if examples < 1 or examples > min(counts):
            raise ValueError(
                f"examples={examples} but the smallest class has {min(counts)}: choose "
                f"1..{min(counts)}."
            )
        return torch.stack([t[:examples] for t in self.tensors])

    def sampler(self, ways: int, shots: int, queries: int, seed: int = 0) -> EpisodeSampler:
        """An :class:`mamlkit.datasets.episodic.EpisodeSampler` over these classes.

        Token ids (int64) travel through the sampler unchanged; embeddings stay float.
        ``info["classes"]`` of a sampled batch indexes :attr:`class_ids`.
        """
        from mamlkit.datasets.episodic import EpisodeSampler

        return EpisodeSampler(self.tensors, ways, shots, queries, seed=seed)


def group_by_class(features: Tensor, labels: Sequence[int] | Tensor, class_ids: Sequence[int],
                   class_names: Sequence[str] | None = None, min_examples: int = 1,
                   drop_small: bool = False) -> ClassGroups:
    """The rows of ``features`` (``[n, ...]``) of each class in ``class_ids``, one tensor each.

    A class with fewer than ``min_examples`` rows (set it to ``shots + queries``) raises
    ``ValueError`` naming the class, unless ``drop_small=True``, which leaves such classes out
    with a warning. ``class_names`` (indexed by class id) makes messages readable.
    """
    label_tensor = torch.as_tensor(labels, dtype=torch.int64)
    if features.shape[0] != label_tensor.shape[0]:
        raise ValueError(
            f"{features.shape[0]} feature rows but {label_tensor.shape[0]} labels: encode every "
            "text of the dataset, in order."
        )
    names = list(class_names) if class_names is not None else None
    tensors, kept, small = [], [], []
    for c in class_ids:
        rows = features[label_tensor == c]
        name = names[c] if names is not None else str(c)
        if rows.shape[0] < min_examples:
            small.append((c, name, int(rows.shape[0])))
            continue
        tensors.append(rows)
        kept.append(c)
    if small and not drop_small:
        c, name, n = small[0]
        raise ValueError(
            f"class {name!r} (id {c}) has {n} examples but {min_examples} are needed "
            f"(shots + queries){f' ({len(small)} classes are short)' if len(small) > 1 else ''}. "
            "Lower shots/queries, or pass drop_small=True to leave such classes out."
        )
    if small:
        warnings.warn(
            f"dropped {len(small)} classes with fewer than {min_examples} examples: "
            + ", ".join(f"{name!r} ({n})" for _, name, n in small),
            stacklevel=2,
        )
    if not tensors:
        raise ValueError(
            f"no class has {min_examples} examples; lower shots/queries or check the split."
        )
    label_names = [names[c] if names is not None else str(c) for c in kept]
    return ClassGroups(tensors, kept, label_names)


def split_class_groups(data: TextClassificationData, split: ClassSplit, split_name: str,
                       features: Tensor, min_examples: int = 1,
                       drop_small: bool = False) -> ClassGroups:
    """:func:`group_by_class` for the classes of ``split_name`` in ``split``.

    ``features`` are all texts of ``data`` encoded in order: token ids from a
    :class:`~mamlkit.text.tokenizer.WordTokenizer` fitted on ``data.texts_of(split.train)``, or
    embeddings from :func:`~mamlkit.text.embedding_cache.embed_texts`.
    """
    if features.shape[0] != len(data):
        raise ValueError(
            f"features have {features.shape[0]} rows but {data.name or 'the dataset'} has "
            f"{len(data)} texts: encode data.texts, all of them, in order."
        )
    return group_by_class(features, data.labels, split.classes(split_name), data.class_names,
                          min_examples, drop_small)
