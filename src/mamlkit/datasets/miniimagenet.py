"""miniImageNet (Vinyals et al. 2016) with the class split of Ravi & Larochelle (2017).

100 ImageNet classes, 600 images each, 84x84 RGB; 64 classes for meta-training, 16 for
meta-validation, 20 for meta-testing (the split MAML, Finn et al. 2017, reports on). Read from the
pickles commonly distributed for it (learn2learn, Zenodo record 7978538):
``mini-imagenet-cache-{train,val,test}.pkl`` (``-validation.pkl`` is accepted for ``val``), each a
dict with ``image_data`` uint8 ``[N, 84, 84, 3]`` and ``class_dict`` mapping a WordNet id to the
list of its rows in ``image_data``.

The pickles are read with an unpickler that only rebuilds numpy arrays (no code from the file
runs). Classes are ordered by WordNet id; each file's classes must be exactly its Ravi &
Larochelle list below (``check_classes=False`` skips this for re-split copies).

Checksums: no sha256 of these pickles is published that we could find, so ``download=True``
verifies against ``sha256={split: digest}`` when you give one, and otherwise warns that it could
not verify the file.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from mamlkit.datasets._files import download_file, sha256_file
from mamlkit.datasets._safe_pickle import load_data_pickle
from mamlkit.datasets.class_images import ClassImages
from mamlkit.datasets.episodic import EpisodeSampler

MINIIMAGENET_URL = "https://zenodo.org/record/7978538/files"
"""Where learn2learn's copies of the pickles are published."""

_REMOTE_NAMES = {"train": "train", "val": "validation", "test": "test"}

RAVI_SPLITS: dict[str, tuple[str, ...]] = {
    "train": (
        "n01532829", "n01558993", "n01704323", "n01749939", "n01770081", "n01843383",
        "n01910747", "n02074367", "n02089867", "n02091831", "n02101006", "n02105505",
        "n02108089", "n02108551", "n02108915", "n02111277", "n02113712", "n02120079",
        "n02165456", "n02457408", "n02606052", "n02687172", "n02747177", "n02795169",
        "n02823428", "n02966193", "n03017168", "n03047690", "n03062245", "n03207743",
        "n03220513", "n03337140", "n03347037", "n03400231", "n03476684", "n03527444",
        "n03676483", "n03838899", "n03854065", "n03888605", "n03908618", "n03924679",
        "n03998194", "n04067472", "n04243546", "n04251144", "n04258138", "n04275548",
        "n04296562", "n04389033", "n04435653", "n04443257", "n04509417", "n04515003",
        "n04596742", "n04604644", "n04612504", "n06794110", "n07584110", "n07697537",
        "n07747607", "n09246464", "n13054560", "n13133613",
    ),
    "val": (
        "n01855672", "n02091244", "n02114548", "n02138441", "n02174001", "n02950826",
        "n02971356", "n02981792", "n03075370", "n03417042", "n03535780", "n03584254",
        "n03770439", "n03773504", "n03980874", "n09256479",
    ),
    "test": (
        "n01930112", "n01981276", "n02099601", "n02110063", "n02110341", "n02116738",
        "n02129165", "n02219486", "n02443484", "n02871525", "n03127925", "n03146219",
        "n03272010", "n03544143", "n03775546", "n04146614", "n04149813", "n04418357",
        "n04522168", "n07613480",
    ),
}
"""WordNet ids of the Ravi & Larochelle (2017) 64/16/20 class split."""

SPLITS = tuple(RAVI_SPLITS)


def _candidates(root: Path, split: str) -> list[Path]:
    names = [f"mini-imagenet-cache-{split}.pkl"]
    if split == "val":
        names.append("mini-imagenet-cache-validation.pkl")
    return [root / name for name in names]


def _locate(root: Path, split: str, download: bool, sha256: str | None, mirror: str) -> Path:
    for path in _candidates(root, split):
        if path.is_file():
            return path
    url = f"{mirror.rstrip('/')}/mini-imagenet-cache-{_REMOTE_NAMES[split]}.pkl"
    if not download:
        raise FileNotFoundError(
            f"miniImageNet file {_candidates(root, split)[0].name} not found in {root}. Pass "
            f"download=True to fetch it from {url}, or put the pickle there."
        )
    if sha256 is None:
        warnings.warn(
            f"no published sha256 exists for {url}; the download cannot be verified. Pass "
            "sha256={'" + split + "': '<digest>'} to pin it.",
            stacklevel=3,
        )
    return download_file(url, _candidates(root, split)[0], sha256)


def _group_by_class(
    path: Path, content: object
) -> tuple[list[str], np.ndarray | list[np.ndarray]]:
    """Class names (sorted WordNet ids) and images ``[C, n, 3, H, W]`` (ragged: a list)."""
    if not (isinstance(content, Mapping) and "image_data" in content and "class_dict" in content):
        keys = sorted(content) if isinstance(content, Mapping) else type(content).__name__
        raise ValueError(
            f"{path} is not a miniImageNet cache pickle: expected a dict with 'image_data' and "
            f"'class_dict', got {keys}. Use the mini-imagenet-cache-<split>.pkl files."
        )
    images, class_dict = content["image_data"], content["class_dict"]
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4
            and images.shape[-1] == 3):
        described = (f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray)
                     else type(images).__name__)
        raise ValueError(
            f"{path}: 'image_data' must be uint8 [N, height, width, 3], got {described}. The file "
            "is not in the published format; download it again."
        )
    names = sorted(class_dict)
    rows = [np.asarray(class_dict[name], dtype=np.int64) for name in names]
    for name, idx in zip(names, rows):
        if idx.ndim != 1 or idx.size == 0 or idx.min() < 0 or idx.max() >= len(images):
            raise ValueError(
                f"{path}: class {name} lists rows outside image_data (N={len(images)}); the file "
                "is corrupt, download it again."
            )
    counts = {idx.size for idx in rows}
    if len(counts) == 1:
        out = np.empty((len(names), counts.pop(), 3, *images.shape[1:3]), dtype=np.uint8)
        for c, idx in enumerate(rows):
            out[c] = images[idx].transpose(0, 3, 1, 2)
        return names, out
    return names, [np.ascontiguousarray(images[idx].transpose(0, 3, 1, 2)) for idx in rows]


class MiniImageNet(ClassImages):
    """One split of miniImageNet as uint8 ``images [classes, 600, 3, 84, 84]``.

    Args:
        root: folder with the ``mini-imagenet-cache-<split>.pkl`` files.
        split: ``"train"`` (64 classes), ``"val"`` (16) or ``"test"`` (20).
        download: fetch a missing pickle from ``mirror``.
        sha256: optional ``{split: hex digest}`` to verify downloads against.
        check_classes: require the file's classes to be the Ravi & Larochelle list for ``split``.
        mirror: base URL of the pickles.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        download: bool = False,
        sha256: Mapping[str, str] | None = None,
        check_classes: bool = True,
        mirror: str = MINIIMAGENET_URL,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is unknown; use one of {SPLITS}.")
        self.root, self.split = Path(root).expanduser(), split
        path = _locate(self.root, split, download, (sha256 or {}).get(split), mirror)
        names, images = _group_by_class(path, load_data_pickle(path))
        if check_classes and set(names) != set(RAVI_SPLITS[split]):
            missing = sorted(set(RAVI_SPLITS[split]) - set(names))
            extra = sorted(set(names) - set(RAVI_SPLITS[split]))
            raise ValueError(
                f"{path} does not hold the Ravi & Larochelle {split} classes (missing "
                f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
                f"{extra[:5]}{'...' if len(extra) > 5 else ''}). Check that the file is the "
                f"{split} pickle, or pass check_classes=False for a custom split."
            )
        self.path = path
        self.class_names: list[str] = names
        self.images = images

    def file_sha256(self) -> str:
        """sha256 of the pickle this split was read from (to pin future downloads)."""
        return sha256_file(self.path)


def miniimagenet_tasks(
    root: str | Path,
    ways: int = 5,
    shots: int = 1,
    queries: int = 15,
    split: str = "train",
    seed: int = 0,
    **options: object,
) -> EpisodeSampler:
    """One line from the pickles to an episode sampler with the literature's defaults.

    5-way 1-shot episodes with 15 queries per class, as in MAML's miniImageNet experiments
    (Finn et al. 2017). ``options`` go to :class:`MiniImageNet`.
    """
    dataset = MiniImageNet(root, split=split, **options)  # type: ignore[arg-type]
    return dataset.sampler(ways, shots, queries, seed=seed)
