"""Omniglot (Lake, Salakhutdinov & Tenenbaum 2015) for few-shot classification.

1,623 handwritten characters from 50 alphabets, 20 drawings each (105x105, 1-bit), published as
``images_background.zip`` (30 alphabets, 964 characters) and ``images_evaluation.zip`` (20
alphabets, 659 characters), laid out ``images_<set>/<Alphabet>/characterNN/XXXX_YY.png``.

Two class splits are provided:

* the official one: ``split="background"`` (964 classes) / ``"evaluation"`` (659 classes);
* MAML's (Finn et al. 2017, following Santoro et al. 2016): all 1,623 characters shuffled with a
  fixed seed, the first 1,200 for meta-training and the remaining 423 for meta-testing
  (``"test"``). As in MAML's released code, 100 of the 1,200 are held out for meta-validation:
  ``"train"`` is 1,100 classes, ``"val"`` 100, ``"trainval"`` all 1,200. Each character rotated
  by 0/90/180/270 degrees counts as its own class (Santoro et al. 2016), so these splits have 4x
  the classes (4,400 / 400 / 4,800 / 1,692); a rotated copy always stays in its base
  character's split. MAML's shuffle depended on ``os.listdir`` order, so its exact assignment
  cannot be reproduced; ours permutes the characters in canonical order (background then
  evaluation, alphabets and characters sorted) with ``numpy.random.default_rng(split_seed)``.

Images are resized once to 28x28 and cached as a uint8 ``.npy`` (memory-mapped when read back),
keyed by a checksum of the source files, so later runs start in well under a second. Pixel values
follow MAML's loader (``1 - pixel/255``): ink is 255 (1.0 once the sampler scales it), background
0. MAML's ``resize_images.py`` asks PIL for LANCZOS, but PIL resizes 1-bit images with nearest
neighbour whatever filter is asked for, so the paper's inputs were binary; ``resample="nearest"``
reproduces that, the default ``"lanczos"`` resizes the greyscale image with a real LANCZOS filter.

Checksums: ``download=True`` fetches the official zips and always verifies their sha256 (a
mismatch deletes the file and raises). Files already on disk are, by default
(``verify="download"``), accepted after structural checks (a readable zip or folder in the
official layout, the same number of drawings for every character, decodable PNGs), so re-packed
copies with the same images work; ``verify="always"`` additionally requires the official sha256.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import warnings
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from mamlkit.datasets._files import (
    default_cache_dir,
    download_file,
    save_npy_atomic,
    sha256_file,
    write_text_atomic,
)
from mamlkit.datasets.class_images import ClassImages
from mamlkit.datasets.episodic import EpisodeSampler

OMNIGLOT_URL = "https://github.com/brendenlake/omniglot/raw/master/python"
"""The official source of ``images_background.zip`` and ``images_evaluation.zip``."""

OMNIGLOT_SHA256 = {
    "images_background": "ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640",
    "images_evaluation": "1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee",
}
"""sha256 of the official zips (9,464,212 and 6,462,886 bytes), as recorded in TensorFlow
Datasets' ``url_checksums/omniglot.txt``; their md5s (torchvision) are
68d2efa1b9178cc56df9314c21c6e718 and 6b91aef0f799c5bb55b94e3f2daec811."""

OMNIGLOT_SETS = ("images_background", "images_evaluation")
OFFICIAL_SPLITS = {"background": "images_background", "evaluation": "images_evaluation"}
PAPER_SPLITS = ("train", "val", "trainval", "test")
SPLITS = (*OFFICIAL_SPLITS, *PAPER_SPLITS)
PAPER_ROTATIONS = (0, 90, 180, 270)
RESAMPLE_FILTERS = ("lanczos", "nearest")
VERIFY_MODES = ("download", "always")
_CACHE_VERSION = 1

_MEMBER = re.compile(
    r"(?:^|/)(images_background|images_evaluation)/([^/]+)/character(\d+)/([^/]+\.png)$"
)


@dataclass(frozen=True)
class _Decoded:
    """One official set, decoded: ``images [characters, drawings, size, size]`` and names."""

    images: np.ndarray
    names: list[str]


# ---------------------------------------------------------------------------- locating sources
def _source_path(root: Path, set_name: str) -> Path | None:
    """The zip or extracted folder for ``set_name`` under ``root``, if present."""
    archive = root / f"{set_name}.zip"
    if archive.is_file():
        return archive
    folder = root / set_name
    if folder.is_dir():
        return folder
    return None


def _ensure_source(root: Path, set_name: str, download: bool, mirror: str) -> tuple[Path, bool]:
    """Path of the set's source and whether it was downloaded now; raises if absent."""
    found = _source_path(root, set_name)
    if found is not None:
        return found, False
    url = f"{mirror.rstrip('/')}/{set_name}.zip"
    if not download:
        raise FileNotFoundError(
            f"Omniglot file {set_name}.zip (or its extracted folder {set_name}/) not found in "
            f"{root}. Pass download=True to fetch it from {url} (sha256-verified), or put the "
            "official file there."
        )
    return download_file(url, root / f"{set_name}.zip", OMNIGLOT_SHA256[set_name]), True


def _source_digest(source: Path) -> str:
    """Cache key of a source: sha256 of a zip; of (path, size, mtime) of a folder's PNGs."""
    if source.is_file():
        return sha256_file(source)
    digest = hashlib.sha256()
    for png in sorted(source.rglob("*.png")):
        stat = png.stat()
        digest.update(f"{png.relative_to(source)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


# ---------------------------------------------------------------------------- decoding
def _group_members(paths: Iterable[str], set_name: str, where: Path) -> list[tuple[str, list[str]]]:
    """(``Alphabet/characterNN``, sorted drawing paths) for every character, in canonical order."""
    groups: dict[tuple[str, int], list[str]] = {}
    for path in paths:
        match = _MEMBER.search(path)
        if match and match.group(1) == set_name:
            groups.setdefault((match.group(2), int(match.group(3))), []).append(path)
    if not groups:
        raise ValueError(
            f"no images found in {where} under {set_name}/<Alphabet>/characterNN/*.png; it is not "
            "the official Omniglot archive (or it was extracted elsewhere). Re-download it with "
            "download=True after deleting it."
        )
    ordered = [(f"{a}/character{n:02d}", sorted(groups[(a, n)])) for a, n in sorted(groups)]
    counts = {len(files) for _, files in ordered}
    if len(counts) != 1:
        odd = [(name, len(files)) for name, files in ordered if len(files) != max(counts)]
        raise ValueError(
            f"{where}: characters have different numbers of drawings ({sorted(counts)}; e.g. "
            f"{odd[:3]}); the official archive has 20 for every character. The file is "
            "incomplete: delete it and download it again."
        )
    return ordered


def _pil_image() -> ModuleType:
    """PIL's ``Image`` module, imported only when PNGs are decoded (a cached run needs none)."""
    try:
        from PIL import Image
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "decoding the Omniglot PNGs needs Pillow; install it with `pip install pillow`."
        ) from error
    return Image


def preprocess_omniglot(data: bytes, size: int = 28, resample: str = "lanczos") -> np.ndarray:
    """An Omniglot PNG's bytes as the loader's ``[size, size]`` uint8 image with ink = 255
    (greyscale, resized with ``resample``, inverted; see the module docstring)."""
    Image = _pil_image()
    with Image.open(io.BytesIO(data)) as image:
        if resample == "lanczos":
            small = image.convert("L").resize((size, size), Image.Resampling.LANCZOS)
        else:
            small = image.resize((size, size), Image.Resampling.NEAREST).convert("L")
    return 255 - np.asarray(small, dtype=np.uint8)


def _decode(
    members: list[tuple[str, list[str]]], read: Callable[[str], bytes], where: Path,
    size: int, resample: str,
) -> np.ndarray:
    drawings = len(members[0][1])
    out = np.empty((len(members), drawings, size, size), dtype=np.uint8)
    for c, (_, files) in enumerate(members):
        for d, member in enumerate(files):
            try:
                out[c, d] = preprocess_omniglot(read(member), size, resample)
            except (zipfile.BadZipFile, OSError, ValueError) as error:  # PIL's are OSError
                raise ValueError(
                    f"{where}: cannot read {member} ({type(error).__name__}: {error}). The file is "
                    "corrupt: delete it and download it again (download=True)."
                ) from error
    return out


def _decode_source(source: Path, set_name: str, size: int, resample: str) -> _Decoded:
    """Decode and resize every drawing of one official set (zip or extracted folder)."""
    if source.is_file():
        try:
            archive = zipfile.ZipFile(source)
        except (zipfile.BadZipFile, OSError) as error:
            raise ValueError(
                f"{source} is not a valid zip archive ({error}). The file is corrupt or truncated: "
                "delete it and download it again (download=True), or replace it with the official "
                f"{set_name}.zip."
            ) from error
        with archive:
            members = _group_members(archive.namelist(), set_name, source)
            images = _decode(members, archive.read, source, size, resample)
    else:
        relative = [str(p.relative_to(source.parent).as_posix()) for p in source.rglob("*.png")]
        members = _group_members(relative, set_name, source)
        parent = source.parent
        images = _decode(members, lambda m: (parent / m).read_bytes(), source, size, resample)
    return _Decoded(images, [f"{set_name}/{name}" for name, _ in members])


def _read_cache(array_path: Path, meta_path: Path, size: int) -> _Decoded | None:
    """A cache entry whose array still has the sha256 recorded when it was written; ``None`` for
    a missing, unreadable, damaged or unchecked (older) entry, which is then rebuilt."""
    if not (array_path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        names, recorded = meta["names"], meta.get("array_sha256")
        if sha256_file(array_path) != recorded:
            if recorded is not None:
                warnings.warn(f"the Omniglot cache file {array_path} no longer matches its recorded "
                              "sha256 (it was damaged); decoding the images again.", stacklevel=4)
            return None
        images = np.load(array_path, mmap_mode="r")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if images.shape[0] != len(names) or images.shape[2:] != (size, size):
        return None
    return _Decoded(images, names)


def _load_set(
    root: Path, set_name: str, size: int, resample: str, download: bool, cache_dir: Path | None,
    verify: str, mirror: str,
) -> _Decoded:
    """One official set as uint8 images, from the cache when it holds this exact source."""
    source, downloaded = _ensure_source(root, set_name, download, mirror)
    digest = _source_digest(source)
    if verify == "always" and not downloaded:
        if source.is_dir():
            raise ValueError(
                f"verify='always' needs the official {set_name}.zip to check its sha256, but "
                f"{source} is an extracted folder. Put the zip in {root}, or pass "
                "verify='download' to accept the folder as it is."
            )
        if digest != OMNIGLOT_SHA256[set_name]:
            raise ValueError(
                f"{source} has sha256 {digest}, not the official {OMNIGLOT_SHA256[set_name]}. It "
                "is corrupt or a re-packed copy; pass verify='download' to accept re-packed "
                "copies (their images are still checked as they are decoded), or download again."
            )
    if cache_dir is None:
        return _decode_source(source, set_name, size, resample)
    key = f"{set_name}-{digest[:16]}-{size}px-{resample}-v{_CACHE_VERSION}"
    array_path, meta_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    cached = _read_cache(array_path, meta_path, size)
    if cached is not None:
        return cached
    decoded = _decode_source(source, set_name, size, resample)
    try:
        save_npy_atomic(array_path, decoded.images)
        write_text_atomic(meta_path, json.dumps({"source": str(source), "sha256": digest,
                                                 "array_sha256": sha256_file(array_path),
                                                 "names": decoded.names}))
    except OSError as error:
        warnings.warn(
            f"could not write the Omniglot cache to {cache_dir} ({error}); the next run will "
            "decode the images again. Pass a writable cache_dir (or set MAMLKIT_CACHE).",
            stacklevel=3,
        )
    return decoded


# ---------------------------------------------------------------------------- splits
def paper_split_indices(
    num_characters: int, split: str, split_seed: int = 1, num_train: int = 1200, num_val: int = 100
) -> np.ndarray:
    """Indices (sorted) of MAML's meta-train/val/test characters among all characters.

    Characters in canonical order are permuted with ``numpy.random.default_rng(split_seed)``; the
    first ``num_train`` are meta-training, of which the last ``num_val`` are meta-validation; the
    rest are meta-test. ``"train"``: first ``num_train - num_val``; ``"val"``; ``"trainval"``: all
    ``num_train``; ``"test"``: the remainder.
    """
    if split not in PAPER_SPLITS:
        raise ValueError(f"split={split!r} is not one of MAML's splits {PAPER_SPLITS}.")
    if not 0 < num_val < num_train < num_characters:
        raise ValueError(
            f"need 0 < num_val ({num_val}) < num_train ({num_train}) < number of characters "
            f"({num_characters}); adjust num_train/num_val."
        )
    order = np.random.default_rng(split_seed).permutation(num_characters)
    ranges = {
        "train": order[: num_train - num_val],
        "val": order[num_train - num_val : num_train],
        "trainval": order[:num_train],
        "test": order[num_train:],
    }
    return np.sort(ranges[split])


def _check_rotations(rotations: Sequence[int]) -> tuple[int, ...]:
    values = tuple(int(r) for r in rotations)
    valid = all(r in PAPER_ROTATIONS for r in values) and len(set(values)) == len(values)
    if not values or not valid:
        raise ValueError(
            f"rotations={tuple(rotations)} is invalid; give distinct angles from {PAPER_ROTATIONS} "
            "(e.g. (0,) for none, (0, 90, 180, 270) for MAML's augmentation)."
        )
    return values


class Omniglot(ClassImages):
    """Omniglot characters as classes, resized and cached; see the module docstring for splits.

    ``images`` is uint8 ``[classes, 20, 1, image_size, image_size]`` (ink = 255), ready for
    :class:`~mamlkit.datasets.EpisodeSampler`. ``class_names[i]`` is
    ``images_<set>/<Alphabet>/characterNN`` plus ``@rot<deg>`` for rotated copies;
    ``class_rotation[i]`` its angle and ``class_base[i]`` the index of its unrotated class
    (rotation ``r`` of base class ``b`` is class ``rotations.index(r) * num_base + b``, and its
    images are ``np.rot90(images[b], r // 90, axes=(-2, -1))``).

    Args:
        root: folder holding ``images_background.zip``/``images_evaluation.zip`` or the extracted
            ``images_background/``/``images_evaluation/`` folders.
        split: ``"background"``/``"evaluation"`` (official) or ``"train"``/``"val"``/
            ``"trainval"``/``"test"`` (MAML's; see module docstring).
        rotations: angles whose rotated copies are added as classes; default ``(0, 90, 180,
            270)`` for MAML's splits and ``(0,)`` for the official ones.
        image_size: side of the resized images (28 in MAML).
        resample: ``"lanczos"`` or ``"nearest"`` (what MAML's resize produced; module docstring).
        download: fetch missing zips from ``mirror`` and verify their sha256.
        cache_dir: where the resized arrays are kept; default ``$MAMLKIT_CACHE/omniglot`` or
            ``~/.cache/mamlkit/omniglot``; ``False`` disables caching.
        verify: ``"download"`` or ``"always"`` (also check local zips against the official
            sha256).
        split_seed, num_train, num_val: MAML's split (1,200 train incl. 100 val).
        mirror: base URL of the zips.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "background",
        rotations: Sequence[int] | None = None,
        image_size: int = 28,
        resample: str = "lanczos",
        download: bool = False,
        cache_dir: str | Path | bool | None = None,
        verify: str = "download",
        split_seed: int = 1,
        num_train: int = 1200,
        num_val: int = 100,
        mirror: str = OMNIGLOT_URL,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is unknown; use one of {SPLITS}.")
        if resample not in RESAMPLE_FILTERS:
            raise ValueError(f"resample={resample!r} is unknown; use one of {RESAMPLE_FILTERS}.")
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify={verify!r} is unknown; use one of {VERIFY_MODES}.")
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}.")
        if split in PAPER_SPLITS and not 0 < num_val < num_train:
            raise ValueError(
                f"need 0 < num_val ({num_val}) < num_train ({num_train}); MAML uses "
                "num_train=1200, num_val=100."
            )
        if rotations is None:
            rotations = PAPER_ROTATIONS if split in PAPER_SPLITS else (0,)
        self.rotations = _check_rotations(rotations)
        self.root, self.split, self.image_size = Path(root).expanduser(), split, image_size
        if cache_dir is False:
            self.cache_dir: Path | None = None
        elif cache_dir is None or cache_dir is True:
            self.cache_dir = default_cache_dir() / "omniglot"
        else:
            self.cache_dir = Path(cache_dir).expanduser()
        if not self.root.is_dir() and not download:
            raise FileNotFoundError(
                f"Omniglot root {self.root} does not exist. Point root at the folder holding "
                "images_background.zip and images_evaluation.zip, or pass download=True."
            )
        sets = [OFFICIAL_SPLITS[split]] if split in OFFICIAL_SPLITS else list(OMNIGLOT_SETS)
        # fail on a missing file before decoding anything
        for set_name in sets:
            if _source_path(self.root, set_name) is None and not download:
                _ensure_source(self.root, set_name, False, mirror)
        decoded = [
            _load_set(self.root, s, image_size, resample, download, self.cache_dir, verify, mirror)
            for s in sets
        ]
        if split in OFFICIAL_SPLITS:
            base_images, base_names = decoded[0].images, decoded[0].names
        else:
            names = [n for d in decoded for n in d.names]
            keep = paper_split_indices(len(names), split, split_seed, num_train, num_val)
            offsets = np.cumsum([0] + [len(d.names) for d in decoded])
            parts = [d.images[keep[(keep >= lo) & (keep < hi)] - lo]
                     for d, lo, hi in zip(decoded, offsets[:-1], offsets[1:])]
            base_images = np.concatenate(parts, axis=0)
            base_names = [names[i] for i in keep]
        self._build_classes(np.asarray(base_images), base_names)

    def _build_classes(self, base_images: np.ndarray, base_names: list[str]) -> None:
        num_base = len(base_names)
        blocks, names, rotation = [], [], []
        for angle in self.rotations:
            blocks.append(np.rot90(base_images, angle // 90, axes=(-2, -1)))
            names += [n if angle == 0 else f"{n}@rot{angle}" for n in base_names]
            rotation += [angle] * num_base
        self.images: np.ndarray = np.ascontiguousarray(np.concatenate(blocks, axis=0)[:, :, None])
        self.class_names: list[str] = names
        self.class_rotation = np.asarray(rotation, dtype=np.int64)
        self.class_base = np.tile(np.arange(num_base, dtype=np.int64), len(self.rotations))
        self.num_base_classes = num_base

    def __repr__(self) -> str:
        return (f"Omniglot(split={self.split!r}, classes={len(self)}, "
                f"rotations={self.rotations}, images={tuple(self.images.shape)})")


def omniglot_tasks(
    root: str | Path,
    ways: int = 5,
    shots: int = 1,
    queries: int = 15,
    split: str = "train",
    seed: int = 0,
    **options: object,
) -> EpisodeSampler:
    """One line from the Omniglot files to an episode sampler, with the literature's defaults.

    5-way 1-shot episodes (Finn et al. 2017) with 15 queries per class (Vinyals et al. 2016),
    MAML's split with the four rotations as classes, 28x28 images. ``options`` go to
    :class:`Omniglot` (``download``, ``cache_dir``, ``rotations``, ...).
    """
    dataset = Omniglot(root, split=split, **options)  # type: ignore[arg-type]
    return dataset.sampler(ways, shots, queries, seed=seed)
