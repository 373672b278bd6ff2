"""Disjoint class splits (meta-train / meta-validation / meta-test) for few-shot text tasks.

Few-shot classification evaluates on classes never seen while meta-training (Vinyals et al., 2016,
"Matching Networks for One Shot Learning"), so each dataset's classes are split into three
disjoint sets. Default sizes (see :data:`DEFAULT_SPLIT_SIZES`):

=================  =========================  =========================================
dataset            meta-train / val / test    how
=================  =========================  =========================================
BANKING77          47 / 15 / 15 intents       seeded shuffle of the 77 intents
CLINC150           6 / 2 / 2 domains           seeded shuffle of the 10 domains, so
                   (= 90 / 30 / 30 intents)    meta-test intents come from unseen domains;
                                               the out-of-scope class, when loaded, goes
                                               to meta-test
FewRel val_wiki    6 / 5 / 5 relations         seeded shuffle of the 16 validation relations
                                               (5 held-out relations allow FewRel's 5-way
                                               episodes; its 64 training relations are not
                                               available here)
anything else      60% / 20% / rest            seeded shuffle of the classes
=================  =========================  =========================================
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from mamlkit.text.clinc150 import OUT_OF_SCOPE
from mamlkit.text.data import TextClassificationData

DEFAULT_SPLIT_SIZES: dict[str, tuple[int, int, int]] = {
    "banking77": (47, 15, 15),
    "clinc150": (6, 2, 2),
    "fewrel_val_wiki": (6, 5, 5),
}
"""Meta-train / meta-validation / meta-test sizes per dataset name (CLINC150 counts domains)."""

SPLIT_NAMES = ("train", "validation", "test")
"""Names of the three splits, as accepted by :meth:`ClassSplit.classes`."""


@dataclass(frozen=True)
class ClassSplit:
    """Three disjoint, sorted lists of class ids: meta-train, meta-validation and meta-test."""

    train: list[int]
    validation: list[int]
    test: list[int]

    def __post_init__(self) -> None:
        seen: dict[int, str] = {}
        for name in SPLIT_NAMES:
            for c in getattr(self, name):
                if c in seen:
                    raise ValueError(
                        f"class {c} is in both the {seen[c]} and the {name} split; meta-splits "
                        "must have disjoint classes."
                    )
                seen[c] = name

    def classes(self, split: str) -> list[int]:
        """Class ids of ``split`` (``"train"``, ``"validation"`` or ``"test"``)."""
        if split not in SPLIT_NAMES:
            raise ValueError(f"unknown split {split!r}; choose one of {list(SPLIT_NAMES)}.")
        return list(getattr(self, split))


def _check_sizes(sizes: Sequence[int], available: int, what: str) -> None:
    if len(sizes) != 3 or any(int(s) != s or s < 0 for s in sizes):
        raise ValueError(
            f"split sizes must be three non-negative integers (train, validation, test), got "
            f"{tuple(sizes)}."
        )
    if sum(sizes) > available:
        raise ValueError(
            f"split sizes {tuple(sizes)} need {sum(sizes)} {what} but only {available} exist: "
            "lower the sizes."
        )


def split_classes(class_ids: Sequence[int], sizes: Sequence[int], seed: int = 0) -> ClassSplit:
    """Shuffle ``class_ids`` with ``seed`` and cut them into train / validation / test of ``sizes``.

    Classes left over when ``sum(sizes) < len(class_ids)`` are in no split.
    """
    ids = list(class_ids)
    _check_sizes(sizes, len(ids), "classes")
    random.Random(seed).shuffle(ids)
    n_train, n_val, n_test = sizes
    return ClassSplit(sorted(ids[:n_train]), sorted(ids[n_train:n_train + n_val]),
                      sorted(ids[n_train + n_val:n_train + n_val + n_test]))


def split_by_groups(groups: dict[str, list[int]], sizes: Sequence[int],
                    seed: int = 0) -> ClassSplit:
    """Shuffle whole groups (e.g. CLINC150 domains) and give each split all classes of its groups.

    ``sizes`` counts groups, so meta-test classes come from groups unseen in meta-training.
    """
    names = sorted(groups)
    _check_sizes(sizes, len(names), "groups")
    random.Random(seed).shuffle(names)
    n_train, n_val, _ = sizes
    cuts = (names[:n_train], names[n_train:n_train + n_val],
            names[n_train + n_val:n_train + n_val + sizes[2]])
    return ClassSplit(*[sorted(c for g in part for c in groups[g]) for part in cuts])


def default_class_split(data: TextClassificationData, seed: int = 0) -> ClassSplit:
    """The documented default split of ``data`` (module table above), shuffled with ``seed``."""
    if data.name == "clinc150" and data.class_groups:
        split = split_by_groups(data.class_groups, DEFAULT_SPLIT_SIZES["clinc150"], seed)
        if OUT_OF_SCOPE in data.class_names:
            oos = data.class_names.index(OUT_OF_SCOPE)
            split = ClassSplit(split.train, split.validation, sorted(split.test + [oos]))
        return split
    sizes = DEFAULT_SPLIT_SIZES.get(data.name)
    if sizes is None:
        n = data.num_classes
        n_train, n_val = round(0.6 * n), round(0.2 * n)
        sizes = (n_train, n_val, n - n_train - n_val)
    return split_classes(range(data.num_classes), sizes, seed)
