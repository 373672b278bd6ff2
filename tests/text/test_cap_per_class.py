"""--max-per-class caps every class, or only the meta-validation and meta-test classes."""

from __future__ import annotations

from collections import Counter

import pytest

from mamlkit.config import make_config
from mamlkit.experiments.text_data import cap_per_class
from mamlkit.text.data import TextClassificationData


def data() -> TextClassificationData:
    labels = [0, 1, 2] * 5 + [0, 0]
    return TextClassificationData([f"text {i}" for i in range(len(labels))], labels,
                                  ["a", "b", "c"], name="toy")


def test_caps_only_the_named_classes_keeping_the_first_in_file_order() -> None:
    full = data()
    capped = cap_per_class(full, 2, classes={1, 2})
    assert Counter(capped.labels) == {0: 7, 1: 2, 2: 2}
    assert [t for t, y in zip(capped.texts, capped.labels) if y == 1] == ["text 1", "text 4"]
    assert Counter(cap_per_class(full, 2).labels) == {0: 2, 1: 2, 2: 2}
    assert cap_per_class(full, 0, classes={1}) is full


def test_the_scope_option_is_checked() -> None:
    assert make_config({"max_per_class_splits": "eval"}, {}).max_per_class_splits == "eval"
    with pytest.raises(ValueError, match="max_per_class_splits"):
        make_config({"max_per_class_splits": "train"}, {})
