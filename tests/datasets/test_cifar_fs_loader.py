"""CIFAR-FS loader on a small CIFAR-100 written in the official python on-disk format."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import mamlkit.datasets.cifar_fs as cifar_module
from mamlkit.datasets import CIFARFS, cifar_fs_tasks
from mamlkit.datasets.cifar_fs import BERTINETTO_SPLITS

FINE_NAMES = sorted(n for names in BERTINETTO_SPLITS.values() for n in names)  # official order
TRAIN_PER_CLASS, TEST_PER_CLASS = 4, 1


def batch_pickle(label_list: list[int], batch_label: str) -> bytes:
    """A CIFAR-100 batch dict: rows are R, G, B 32x32 planes; R = label, G = row index % 256."""
    n = len(label_list)
    data = np.zeros((n, 3, 32, 32), dtype=np.uint8)
    data[:, 0] = np.asarray(label_list, dtype=np.uint8)[:, None, None]
    data[:, 1] = (np.arange(n) % 256).astype(np.uint8)[:, None, None]
    data[:, 2] = 7
    content = {
        b"filenames": [f"img_{i:05d}.png".encode() for i in range(n)],
        b"batch_label": batch_label.encode(),
        b"fine_labels": list(label_list),
        b"coarse_labels": [label // 5 for label in label_list],
        b"data": data.reshape(n, 3072),
    }
    return pickle.dumps(content, protocol=2)


def cifar_parts(seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    train = rng.permutation(np.repeat(np.arange(100), TRAIN_PER_CLASS)).tolist()
    test = rng.permutation(np.repeat(np.arange(100), TEST_PER_CLASS)).tolist()
    meta = {b"fine_label_names": FINE_NAMES, b"coarse_label_names": [f"c{i}" for i in range(20)]}
    return {
        "train": batch_pickle(train, "training batch 1 of 1"),
        "test": batch_pickle(test, "testing batch 1 of 1"),
        "meta": pickle.dumps(meta, protocol=2),
    }


def write_folder(root: Path, parts: dict[str, bytes]) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, data in parts.items():
        (folder / name).write_bytes(data)


def write_archive(path: Path, parts: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in parts.items():
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_archive(root / "cifar-100-python.tar.gz", cifar_parts())
    return root


def test_bertinetto_split_covers_cifar100_once():
    sizes = {split: len(names) for split, names in BERTINETTO_SPLITS.items()}
    assert sizes == {"train": 64, "val": 16, "test": 20}
    assert len(set(FINE_NAMES)) == 100


def test_splits_from_the_archive(cifar_root):
    per_class = TRAIN_PER_CLASS + TEST_PER_CLASS
    for split, classes in (("train", 64), ("val", 16), ("test", 20)):
        data = CIFARFS(cifar_root, split)
        assert len(data) == classes and data.class_names == list(BERTINETTO_SPLITS[split])
        assert data.images.shape == (classes, per_class, 3, 32, 32)
        labels = np.asarray([FINE_NAMES.index(n) for n in data.class_names])
        assert np.all(data.images[:, :, 0] == labels[:, None, None, None])  # red plane = label
        assert np.all(data.images[:, :, 2] == 7)  # planes stay in R, G, B order


def test_extracted_folder_matches_the_archive(cifar_root, tmp_path):
    write_folder(tmp_path, cifar_parts())
    assert np.array_equal(CIFARFS(tmp_path, "val").images, CIFARFS(cifar_root, "val").images)


def test_factory(cifar_root):
    batch = cifar_fs_tasks(cifar_root, ways=5, shots=2, queries=3, split="test", seed=0).sample(3)
    assert batch.support_x.shape == (3, 10, 3, 32, 32) and batch.query_y.shape == (3, 15)
    names = BERTINETTO_SPLITS["test"]
    red = torch.round(batch.support_x[:, :, 0, 0, 0] * 255).long()
    expected = torch.tensor([FINE_NAMES.index(n) for n in names])[batch.info["classes"]]
    assert torch.equal(red, torch.gather(expected, 1, batch.support_y))


def test_download_checks_the_official_sha256(cifar_root, tmp_path, monkeypatch):
    url = (cifar_root / "cifar-100-python.tar.gz").as_uri()
    with pytest.raises(ValueError, match="checksum mismatch"):
        CIFARFS(tmp_path / "a", "val", download=True, mirror=url)
    assert not (tmp_path / "a" / "cifar-100-python.tar.gz").exists()
    digest = cifar_module.sha256_file(cifar_root / "cifar-100-python.tar.gz")
    monkeypatch.setattr(cifar_module, "CIFAR100_SHA256", digest)
    assert len(CIFARFS(tmp_path / "b", "val", download=True, mirror=url)) == 16


# ------------------------------------------------------------------------- bad input
def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-100-python.tar.gz.*download=True"):
        CIFARFS(tmp_path, "train")
    (tmp_path / "cifar-100-python").mkdir()
    with pytest.raises(FileNotFoundError, match="lacks \\['meta', 'train', 'test'\\]"):
        CIFARFS(tmp_path, "train")


def test_verify_always_rejects_a_non_official_archive(cifar_root):
    with pytest.raises(ValueError, match="does not have the official sha256"):
        CIFARFS(cifar_root, "train", verify="always")


def test_corrupt_archive(cifar_root, tmp_path):
    data = (cifar_root / "cifar-100-python.tar.gz").read_bytes()
    (tmp_path / "cifar-100-python.tar.gz").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        CIFARFS(tmp_path, "train")
    (tmp_path / "cifar-100-python.tar.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="corrupt or truncated"):
        CIFARFS(tmp_path, "train")


def test_archive_without_the_expected_members(tmp_path):
    parts = cifar_parts()
    del parts["test"]
    write_archive(tmp_path / "cifar-100-python.tar.gz", parts)
    with pytest.raises(ValueError, match="has no \\['cifar-100-python/test'\\]"):
        CIFARFS(tmp_path, "train")


def test_wrong_contents(tmp_path):
    parts = cifar_parts()
    parts["meta"] = pickle.dumps({b"fine_label_names": FINE_NAMES[:50]}, protocol=2)
    write_folder(tmp_path / "a", parts)
    with pytest.raises(ValueError, match="100 'fine_label_names'"):
        CIFARFS(tmp_path / "a", "train")
    parts = cifar_parts()
    parts["train"] = pickle.dumps({b"data": np.zeros((4, 100), np.uint8), b"fine_labels": [0] * 4})
    write_folder(tmp_path / "b", parts)
    with pytest.raises(ValueError, match="uint8 \\[N, 3072\\]"):
        CIFARFS(tmp_path / "b", "train")
    parts = cifar_parts()
    parts["test"] = b"\x80\x02garbage"
    write_folder(tmp_path / "c", parts)
    with pytest.raises(ValueError, match="not a readable data pickle"):
        CIFARFS(tmp_path / "c", "train")


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="split='meta-train' is unknown"):
        CIFARFS(tmp_path, "meta-train")
    with pytest.raises(ValueError, match="verify='sometimes' is unknown"):
        CIFARFS(tmp_path, "train", verify="sometimes")
