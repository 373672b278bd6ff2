"""--max-per-class caps every class or only the evaluation classes; feature episodes encode each
text once."""

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


def test_feature_episodes_encode_each_text_once_and_keep_the_episodes() -> None:
    import torch

    from mamlkit.experiments.text import feature_episodes
    from mamlkit.experiments.text_data import TextTask
    from mamlkit.text.episodes import ClassGroups
    from mamlkit.text.last_layers import BertLayer, LastLayersClassifier

    torch.manual_seed(0)
    model = LastLayersClassifier([BertLayer(8, 2, 16)], 8, 3)
    tensors = [torch.cat([torch.randn(n, 4, 8), torch.ones(n, 4, 1)], -1) for n in (5, 6, 7, 5)]
    groups = ClassGroups(tensors, [0, 1, 2, 3], list("abcd"))
    task = TextTask("toy", data(), None, torch.empty(0), {"test": groups})
    config = make_config({"ways": 3, "shots": 1, "queries": 2}, {})
    episodes = groups.sampler(3, 1, 2).fixed_episodes(7, seed=3, meta_batch_size=4)
    encoded = list(feature_episodes(model, task, config, "test", episodes))[0]
    assert encoded.num_tasks == 7
    with torch.no_grad():
        for i, batch in enumerate(episodes):
            for t in range(batch.num_tasks):
                torch.testing.assert_close(encoded.query_x[4 * i + t],
                                           model.features(batch.query_x[t]))
                assert torch.equal(encoded.support_y[4 * i + t], batch.support_y[t])
