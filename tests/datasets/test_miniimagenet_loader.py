"""miniImageNet loader on small pickles written in the published on-disk format."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import mamlkit.datasets.miniimagenet as mini_module
from mamlkit.datasets import EpisodeSampler, MiniImageNet, miniimagenet_tasks
from mamlkit.datasets.miniimagenet import RAVI_SPLITS

PER_CLASS = 3


def write_cache_pickle(path: Path, split: str, per_class: int = PER_CLASS, seed: int = 0) -> None:
    """``mini-imagenet-cache-<split>.pkl``: image_data [N, 84, 84, 3] uint8 + class_dict.

    Rows of different classes are interleaved so that grouping by ``class_dict`` is exercised.
    Every image of the k-th class (sorted ids) has red = k, green = 100 + example, blue = 200.
    """
    wnids = list(RAVI_SPLITS[split])
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(wnids) * per_class)
    images = np.zeros((len(order), 84, 84, 3), dtype=np.uint8)
    class_dict: dict[str, list[int]] = {}
    for slot, flat in enumerate(order):
        c, e = divmod(int(flat), per_class)
        images[slot, :, :, 0] = sorted(wnids).index(wnids[c])
        images[slot, :, :, 1] = 100 + e
        images[slot, :, :, 2] = 200
        class_dict.setdefault(wnids[c], []).append(slot)
    with open(path, "wb") as handle:
        pickle.dump({"image_data": images, "class_dict": class_dict}, handle, protocol=4)


@pytest.fixture(scope="module")
def mini_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("miniimagenet")
    write_cache_pickle(root / "mini-imagenet-cache-train.pkl", "train")
    write_cache_pickle(root / "mini-imagenet-cache-validation.pkl", "val")
    write_cache_pickle(root / "mini-imagenet-cache-test.pkl", "test")
    return root


def test_ravi_split_lists_are_disjoint_and_sized_64_16_20():
    sizes = {split: len(set(names)) for split, names in RAVI_SPLITS.items()}
    assert sizes == {"train": 64, "val": 16, "test": 20}
    train, val, test = (set(RAVI_SPLITS[s]) for s in ("train", "val", "test"))
    assert not train & val and not train & test and not val & test


def test_splits_load_grouped_by_class_channels_first(mini_root):
    for split, classes in (("train", 64), ("val", 16), ("test", 20)):
        data = MiniImageNet(mini_root, split)
        assert len(data) == classes
        assert data.class_names == sorted(RAVI_SPLITS[split])
        assert data.images.shape == (classes, PER_CLASS, 3, 84, 84)
        assert data.images.dtype == np.uint8
        red, green, blue = data.images[:, :, 0], data.images[:, :, 1], data.images[:, :, 2]
        assert np.all(red == np.arange(classes)[:, None, None, None])  # right class, right place
        assert np.all(blue == 200)
        assert sorted(np.unique(green)) == [100 + e for e in range(PER_CLASS)]
    assert MiniImageNet(mini_root, "val").path.name == "mini-imagenet-cache-validation.pkl"


def test_factory_and_episodes(mini_root):
    sampler = miniimagenet_tasks(mini_root, ways=5, shots=1, queries=2, split="test", seed=1)
    assert isinstance(sampler, EpisodeSampler)
    batch = sampler.sample(4)
    assert batch.support_x.shape == (4, 5, 3, 84, 84) and batch.query_x.shape == (4, 10, 3, 84, 84)
    red = torch.round(batch.query_x[:, :, 0, 0, 0] * 255).long()
    assert torch.equal(red, torch.gather(batch.info["classes"], 1, batch.query_y))


def test_ragged_classes_give_a_list(tmp_path):
    write_cache_pickle(tmp_path / "mini-imagenet-cache-test.pkl", "test")
    with open(tmp_path / "mini-imagenet-cache-test.pkl", "rb") as handle:
        content = pickle.load(handle)
    first = sorted(content["class_dict"])[0]
    content["class_dict"][first] = content["class_dict"][first][:2]
    with open(tmp_path / "mini-imagenet-cache-test.pkl", "wb") as handle:
        pickle.dump(content, handle)
    data = MiniImageNet(tmp_path, "test")
    assert isinstance(data.images, list) and data.images[0].shape == (2, 3, 84, 84)
    assert data.sampler(5, 1, 1).sample(2).support_x.shape == (2, 5, 3, 84, 84)


def test_download_verifies_a_given_sha256_and_warns_without_one(mini_root, tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    os.link(mini_root / "mini-imagenet-cache-test.pkl", mirror / "mini-imagenet-cache-test.pkl")
    digest = MiniImageNet(mini_root, "test").file_sha256()
    data = MiniImageNet(tmp_path / "a", "test", download=True, mirror=mirror.as_uri(),
                        sha256={"test": digest})
    assert len(data) == 20
    with pytest.raises(ValueError, match="checksum mismatch"):
        MiniImageNet(tmp_path / "b", "test", download=True, mirror=mirror.as_uri(),
                     sha256={"test": "0" * 64})
    assert not (tmp_path / "b" / "mini-imagenet-cache-test.pkl").exists()
    with pytest.warns(UserWarning, match="no published sha256"):
        MiniImageNet(tmp_path / "c", "test", download=True, mirror=mirror.as_uri())


def test_download_failure_is_an_oserror(tmp_path):
    with pytest.raises(OSError, match="could not download"):
        MiniImageNet(tmp_path, "test", download=True, mirror=(tmp_path / "nowhere").as_uri(),
                     sha256={"test": "0" * 64})


# ------------------------------------------------------------------------- bad input
def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="mini-imagenet-cache-train.pkl.*download=True"):
        MiniImageNet(tmp_path, "train")


def test_wrong_split_file_is_detected(mini_root, tmp_path):
    os.link(mini_root / "mini-imagenet-cache-test.pkl", tmp_path / "mini-imagenet-cache-train.pkl")
    with pytest.raises(ValueError, match="does not hold the Ravi & Larochelle train classes"):
        MiniImageNet(tmp_path, "train")
    assert len(MiniImageNet(tmp_path, "train", check_classes=False)) == 20


def test_corrupt_and_malicious_pickles(tmp_path):
    path = tmp_path / "mini-imagenet-cache-test.pkl"
    write_cache_pickle(path, "test")
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match="not a readable data pickle"):
        MiniImageNet(tmp_path, "test")

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo should-not-run",))

    path.write_bytes(pickle.dumps({"image_data": Payload(), "class_dict": {}}))
    with pytest.raises(ValueError, match="is not allowed"):
        MiniImageNet(tmp_path, "test")


def test_wrong_structure(tmp_path):
    path = tmp_path / "mini-imagenet-cache-test.pkl"
    path.write_bytes(pickle.dumps({"images": np.zeros(3)}))
    with pytest.raises(ValueError, match="expected a dict with 'image_data' and 'class_dict'"):
        MiniImageNet(tmp_path, "test")
    path.write_bytes(pickle.dumps({"image_data": np.zeros((2, 84, 84, 3), np.float32),
                                   "class_dict": {}}))
    with pytest.raises(ValueError, match="uint8 \\[N, height, width, 3\\]"):
        MiniImageNet(tmp_path, "test")
    path.write_bytes(pickle.dumps({"image_data": np.zeros((2, 84, 84, 3), np.uint8),
                                   "class_dict": {"n01930112": [0, 5]}}))
    with pytest.raises(ValueError, match="rows outside image_data"):
        MiniImageNet(tmp_path, "test")


def test_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="split='validation' is unknown"):
        MiniImageNet(tmp_path, "validation")


def test_module_constants_point_at_the_published_files():
    assert mini_module.MINIIMAGENET_URL.endswith("7978538/files")
