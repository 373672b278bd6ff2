"""CIFAR-FS (Bertinetto et al. 2019, "Meta-learning with differentiable closed-form solvers").

All 100 CIFAR-100 classes (Krizhevsky 2009), 600 32x32 RGB images each (the 500 training and 100
test images pooled), split by class into 64 meta-training, 16 meta-validation and 20 meta-test
classes. Read from the official CIFAR-100 python version: ``cifar-100-python/{train,test,meta}``
(pickled dicts with ``data`` uint8 ``[N, 3072]`` as red, green, blue 32x32 planes,
``fine_labels``, and ``fine_label_names`` in ``meta``), either extracted or straight from
``cifar-100-python.tar.gz``.

Checksums: ``download=True`` fetches the archive and verifies its published sha256 (a mismatch
deletes it and raises); local files are accepted after format checks unless ``verify="always"``,
which also requires the official sha256 of a local archive.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np

from mamlkit.datasets._files import download_file, sha256_file
from mamlkit.datasets._safe_pickle import load_data_pickle, load_data_pickle_bytes
from mamlkit.datasets.class_images import ClassImages
from mamlkit.datasets.episodic import EpisodeSampler

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
"""The official CIFAR-100 python archive."""

CIFAR100_SHA256 = "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"
"""sha256 of ``cifar-100-python.tar.gz`` (169,001,437 bytes; md5
eb9058c3a382ffc7106e4002c42a8d85 as published with the dataset)."""

ARCHIVE_NAME = "cifar-100-python.tar.gz"
FOLDER_NAME = "cifar-100-python"

BERTINETTO_SPLITS: dict[str, tuple[str, ...]] = {
    "train": (
        "dolphin", "seal", "aquarium_fish", "ray", "trout", "orchid", "sunflower", "tulip",
        "bottle", "bowl", "can", "cup", "plate", "apple", "mushroom", "orange", "pear", "clock",
        "keyboard", "chair", "couch", "bee", "caterpillar", "cockroach", "bear", "lion", "tiger",
        "wolf", "bridge", "castle", "house", "road", "skyscraper", "cloud", "forest", "mountain",
        "elephant", "kangaroo", "porcupine", "possum", "raccoon", "skunk", "lobster", "spider",
        "boy", "girl", "dinosaur", "lizard", "snake", "turtle", "hamster", "mouse", "rabbit",
        "shrew", "squirrel", "oak_tree", "palm_tree", "pine_tree", "willow_tree", "bus", "train",
        "lawn_mower", "streetcar", "tank",
    ),
    "val": (
        "beaver", "otter", "flatfish", "shark", "lamp", "television", "beetle", "butterfly",
        "sea", "camel", "cattle", "crab", "crocodile", "maple_tree", "motorcycle", "tractor",
    ),
    "test": (
        "whale", "poppy", "rose", "sweet_pepper", "telephone", "bed", "table", "wardrobe",
        "leopard", "plain", "chimpanzee", "fox", "snail", "worm", "baby", "man", "woman",
        "bicycle", "pickup_truck", "rocket",
    ),
}
"""CIFAR-100 fine class names of Bertinetto et al.'s 64/16/20 split (their ``splits/bertinetto``
lists, as also shipped with torchmeta)."""

SPLITS = tuple(BERTINETTO_SPLITS)
VERIFY_MODES = ("download", "always")


PARTS = ("meta", "train", "test")


def _read_parts(root: Path, download: bool, verify: str, mirror: str) -> dict[str, object]:
    """The unpickled ``meta``, ``train`` and ``test`` files, from the folder or the archive."""
    folder, archive = root / FOLDER_NAME, root / ARCHIVE_NAME
    if folder.is_dir():
        if verify == "always":
            raise ValueError(
                f"verify='always' needs {ARCHIVE_NAME} to check its sha256, but only the extracted "
                f"folder {folder} is there. Put the archive in {root}, or pass verify='download'."
            )
        missing = [name for name in PARTS if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{folder} lacks {missing}; extract the whole official {ARCHIVE_NAME} there."
            )
        return {name: load_data_pickle(folder / name) for name in PARTS}
    downloaded = False
    if not archive.is_file():
        if not download:
            raise FileNotFoundError(
                f"CIFAR-100 not found in {root}: expected the folder {FOLDER_NAME}/ or "
                f"{ARCHIVE_NAME}. Pass download=True to fetch it from {mirror} (sha256-verified), "
                "or put the official file there."
            )
        download_file(mirror, archive, CIFAR100_SHA256)
        downloaded = True
    if verify == "always" and not downloaded and sha256_file(archive) != CIFAR100_SHA256:
        raise ValueError(
            f"{archive} does not have the official sha256 {CIFAR100_SHA256}: it is corrupt or a "
            "re-packed copy. Download it again, or pass verify='download' to accept it."
        )
    wanted = {f"{FOLDER_NAME}/{name}": name for name in PARTS}
    raw: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:  # one pass over the compressed stream
                if member.name in wanted and member.isfile():
                    handle = tar.extractfile(member)
                    if handle is not None:
                        raw[wanted[member.name]] = handle.read()
    except (tarfile.TarError, OSError, EOFError) as error:
        raise ValueError(
            f"cannot read {archive} ({type(error).__name__}: {error}). The archive is corrupt or "
            "truncated: delete it and download it again (download=True)."
        ) from error
    missing = [name for name in PARTS if name not in raw]
    if missing:
        raise ValueError(
            f"{archive} has no {[f'{FOLDER_NAME}/{m}' for m in missing]}; it is not the official "
            f"{ARCHIVE_NAME}. Delete it and download it again."
        )
    return {name: load_data_pickle_bytes(raw[name], f"{archive}:{FOLDER_NAME}/{name}")
            for name in PARTS}


def _images_and_labels(part: object, where: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(part, dict) or "data" not in part or "fine_labels" not in part:
        raise ValueError(
            f"{where} is not a CIFAR-100 python batch (expected a dict with 'data' and "
            "'fine_labels'); use the official cifar-100-python files."
        )
    data, labels = part["data"], np.asarray(part["fine_labels"], dtype=np.int64)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3 * 32 * 32 and data.shape[0] == labels.shape[0]):
        raise ValueError(
            f"{where}: 'data' must be uint8 [N, 3072] with one fine label per row; the file is "
            "corrupt or not the official one."
        )
    if labels.size and (labels.min() < 0 or labels.max() > 99):
        raise ValueError(f"{where}: fine labels outside 0..99; the file is corrupt.")
    return data.reshape(-1, 3, 32, 32), labels


class CIFARFS(ClassImages):
    """One CIFAR-FS split as uint8 ``images [classes, 600, 3, 32, 32]`` (see module docstring).

    Args:
        root: folder holding ``cifar-100-python/`` or ``cifar-100-python.tar.gz``.
        split: ``"train"`` (64 classes), ``"val"`` (16) or ``"test"`` (20).
        download: fetch the archive from ``mirror`` when absent (sha256-verified).
        verify: ``"download"`` or ``"always"`` (also check a local archive's sha256).
        mirror: URL of the archive.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        download: bool = False,
        verify: str = "download",
        mirror: str = CIFAR100_URL,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is unknown; use one of {SPLITS}.")
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify={verify!r} is unknown; use one of {VERIFY_MODES}.")
        self.root, self.split = Path(root).expanduser(), split
        parts = _read_parts(self.root, download, verify, mirror)
        meta = parts["meta"]
        if not isinstance(meta, dict) or len(meta.get("fine_label_names", [])) != 100:
            raise ValueError(
                f"{FOLDER_NAME}/meta in {self.root} has no list of 100 'fine_label_names'; the "
                "files are not the official CIFAR-100 python version."
            )
        label_of = {name: i for i, name in enumerate(meta["fine_label_names"])}
        missing = [n for n in BERTINETTO_SPLITS[split] if n not in label_of]
        if missing:
            raise ValueError(
                f"CIFAR-100 meta lacks the classes {missing[:5]}; the files are not the official "
                "CIFAR-100 python version."
            )
        pooled = [_images_and_labels(parts[name], f"{FOLDER_NAME}/{name}")
                  for name in ("train", "test")]
        images = np.concatenate([p[0] for p in pooled])
        labels = np.concatenate([p[1] for p in pooled])
        wanted = [label_of[name] for name in BERTINETTO_SPLITS[split]]
        per_class = [np.flatnonzero(labels == label) for label in wanted]
        counts = {rows.size for rows in per_class}
        if len(counts) != 1 or 0 in counts:
            raise ValueError(
                f"CIFAR-100 classes of the {split} split have unequal or zero image counts "
                f"({sorted(counts)}); the official data has 600 per class. Download it again."
            )
        self.class_names: list[str] = list(BERTINETTO_SPLITS[split])
        self.images = np.stack([images[rows] for rows in per_class])


def cifar_fs_tasks(
    root: str | Path,
    ways: int = 5,
    shots: int = 1,
    queries: int = 15,
    split: str = "train",
    seed: int = 0,
    **options: object,
) -> EpisodeSampler:
    """One line from the CIFAR-100 files to a CIFAR-FS episode sampler (5-way 1-shot, 15 queries).

    ``options`` go to :class:`CIFARFS`.
    """
    dataset = CIFARFS(root, split=split, **options)  # type: ignore[arg-type]
    return dataset.sampler(ways, shots, queries, seed=seed)
