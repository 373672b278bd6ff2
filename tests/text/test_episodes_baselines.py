"""Grouping texts by class for episodes, and the prototype / linear-probe baselines."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mamlkit import TaskBatch
from mamlkit.text import (
    WordTokenizer,
    default_class_split,
    group_by_class,
    linear_probe_accuracy,
    load_banking77,
    prototype_accuracy,
    split_class_groups,
)


def _banking77(data_root: Path):
    if not (data_root / "banking77").is_dir():
        pytest.skip(f"banking77/ not found under {data_root} (set MAMLKIT_DATA)")
    return load_banking77(data_root)


def test_token_episodes_from_banking77_meta_test_split(data_root):
    data = _banking77(data_root)
    split = default_class_split(data, seed=0)
    tokenizer = WordTokenizer.fit(data.texts_of(split.train), max_length=24)
    ids = tokenizer.encode(data.texts)
    groups = split_class_groups(data, split, "test", ids, min_examples=20)
    assert groups.class_ids == split.test and len(groups) == 15
    assert [t.shape[0] for t in groups.tensors] == [data.class_counts()[c] for c in split.test]
    first = groups.tensors[0][0]
    assert torch.equal(first, ids[data.labels.index(split.test[0])])
    batch = groups.sampler(ways=5, shots=2, queries=3, seed=0).sample(4)
    assert batch.support_x.shape == (4, 10, 24) and batch.support_x.dtype == torch.int64
    assert batch.query_x.shape == (4, 15, 24) and batch.query_y.shape == (4, 15)
    # sampled rows are real encoded texts of the class named in info["classes"]
    chosen = groups.tensors[int(batch.info["classes"][0, 0])]
    assert (chosen == batch.support_x[0, 0]).all(dim=1).any()
    assert groups.stacked(75).shape == (15, 75, 24)
    with pytest.raises(ValueError, match="cannot be stacked whole"):
        groups.stacked()


def test_too_few_examples_error_names_class_or_drops_with_warning():
    features = torch.randn(9, 4)
    labels = [0, 0, 0, 0, 1, 1, 2, 2, 2]
    names = ["balance", "refund", "top_up"]
    with pytest.raises(ValueError, match=r"class 'refund' \(id 1\) has 2 examples but 3"):
        group_by_class(features, labels, [0, 1, 2], names, min_examples=3)
    with pytest.warns(UserWarning, match=r"dropped 1 classes .*'refund' \(2\)"):
        groups = group_by_class(features, labels, [0, 1, 2], names, min_examples=3,
                                drop_small=True)
    assert groups.class_ids == [0, 2] and groups.class_names == ["balance", "top_up"]
    with pytest.raises(ValueError, match="9 feature rows but 8 labels"):
        group_by_class(features, labels[:8], [0])


def _synthetic_batch(tasks: int, ways: int, shots: int, queries: int, dim: int,
                     spread: float) -> TaskBatch:
    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(tasks, ways, 1, dim, generator=generator) * 3

    def draw(n: int) -> torch.Tensor:
        noise = torch.randn(tasks, ways, n, dim, generator=generator) * spread
        return (centers + noise).reshape(tasks, ways * n, dim)

    labels = torch.arange(ways)
    return TaskBatch(draw(shots), labels.repeat_interleave(shots).expand(tasks, -1),
                     draw(queries), labels.repeat_interleave(queries).expand(tasks, -1))


def test_prototype_and_linear_probe_beat_chance_on_separable_tasks():
    batch = _synthetic_batch(tasks=8, ways=5, shots=3, queries=10, dim=16, spread=1.0)
    for metric in ("euclidean", "cosine"):
        accuracy = prototype_accuracy(batch, metric=metric)
        assert accuracy.shape == (8,) and accuracy.mean() > 0.8  # chance is 0.2
    probe = linear_probe_accuracy(batch, steps=50, lr=0.5, seed=0)
    assert probe.shape == (8,) and probe.mean() > 0.8
    untrained = linear_probe_accuracy(batch, steps=0, seed=0)
    assert untrained.mean() < probe.mean()
    # pure noise: no better than chance, so the high numbers above are earned
    noise = _synthetic_batch(tasks=8, ways=5, shots=3, queries=10, dim=16, spread=1e3)
    assert prototype_accuracy(noise).mean() < 0.45


def test_baselines_reject_token_ids_and_missing_classes():
    ids = TaskBatch(torch.zeros(1, 2, 5, dtype=torch.int64), torch.tensor([[0, 1]]),
                    torch.zeros(1, 2, 5, dtype=torch.int64), torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="expected float embeddings"):
        prototype_accuracy(ids)
    gap = TaskBatch(torch.randn(1, 2, 3), torch.tensor([[0, 0]]), torch.randn(1, 2, 3),
                    torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="class without support examples"):
        linear_probe_accuracy(gap)
    with pytest.raises(ValueError, match="unknown metric"):
        prototype_accuracy(gap, metric="manhattan")
