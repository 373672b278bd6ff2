"""Class splits: disjoint, seeded, documented sizes; CLINC150 split by domain."""

from __future__ import annotations

from pathlib import Path

import pytest

from mamlkit.text import (
    ClassSplit,
    TextClassificationData,
    default_class_split,
    load_banking77,
    load_clinc150,
    load_fewrel,
    split_by_groups,
    split_classes,
)


def _root(data_root: Path, folder: str) -> Path:
    if not (data_root / folder).is_dir():
        pytest.skip(f"{folder}/ not found under {data_root} (set MAMLKIT_DATA)")
    return data_root


def _assert_disjoint_cover(split: ClassSplit, num_classes: int) -> None:
    train, val, test = set(split.train), set(split.validation), set(split.test)
    assert not (train & val) and not (train & test) and not (val & test)
    assert train | val | test == set(range(num_classes))


@pytest.mark.parametrize(
    ("loader", "folder", "sizes"),
    [(load_banking77, "banking77", (47, 15, 15)), (load_fewrel, "fewrel", (6, 5, 5)),
     (load_clinc150, "clinc150", (90, 30, 30))],
)
def test_default_splits_are_disjoint_with_documented_sizes(data_root, loader, folder, sizes):
    data = loader(_root(data_root, folder))
    split = default_class_split(data, seed=0)
    assert (len(split.train), len(split.validation), len(split.test)) == sizes
    _assert_disjoint_cover(split, data.num_classes)
    assert default_class_split(data, seed=0) == split
    assert default_class_split(data, seed=1) != split


def test_clinc150_split_keeps_domains_whole_and_oos_in_test(data_root):
    data = load_clinc150(_root(data_root, "clinc150"), include_out_of_scope=True)
    split = default_class_split(data, seed=3)
    for ids in data.class_groups.values():
        owners = [name for name in ("train", "validation", "test") if ids[0] in split.classes(name)]
        assert len(owners) == 1
        assert set(ids) <= set(split.classes(owners[0]))
    assert data.class_names.index("oos") in split.test
    _assert_disjoint_cover(split, data.num_classes)


def test_split_helpers_validate_sizes():
    split = split_classes(range(10), (5, 2, 2), seed=0)
    assert len(split.train) + len(split.validation) + len(split.test) == 9
    with pytest.raises(ValueError, match="need 12 classes but only 10 exist"):
        split_classes(range(10), (8, 2, 2))
    with pytest.raises(ValueError, match="three non-negative integers"):
        split_classes(range(10), (5, 5))
    with pytest.raises(ValueError, match="in both the train and the test split"):
        ClassSplit([1, 2], [3], [2])
    with pytest.raises(ValueError, match="need 4 groups"):
        split_by_groups({"a": [0], "b": [1]}, (2, 1, 1))
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        split.classes("dev")


def test_unlisted_dataset_gets_proportional_split():
    data = TextClassificationData(["t"] * 10, list(range(10)), [str(i) for i in range(10)],
                                  name="custom")
    split = default_class_split(data)
    assert (len(split.train), len(split.validation), len(split.test)) == (6, 2, 2)
