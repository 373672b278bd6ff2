"""Your own images as few-shot classes: a folder tree ``ROOT/<class>/<image>``.

Every folder that directly holds image files is a class (so ``ROOT/<alphabet>/<character>/`` works
as well), named by its path below ``ROOT``; any format Pillow reads is accepted. Images are
checked when the tree is scanned (each file's bytes hashed and verified by Pillow, so a corrupt
file is named before any training) but decoded only when an episode first needs them, then kept
in an on-disk cache keyed by the file's content and the preprocessing, so memory stays bounded
whatever the dataset's size and a second run decodes nothing. Mixed image modes and sizes are
converted (:func:`preprocess_image`); files Pillow does not know by their suffix are ignored
and counted in :attr:`ImageFolder.summary`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mamlkit.datasets.lazy import ExampleTransform, LazyExamples, _as_numpy

BAD_IMAGE_POLICIES = ("stop", "skip")
"""``stop``: a corrupt image is an error naming the file; ``skip``: it is left out and counted."""
GREY_MODES = {"1", "L", "LA", "I", "I;16", "F", "P;grey"}
"""Pillow modes counted as single-channel when the channel count is chosen automatically."""


@dataclass(frozen=True)
class ImageOptions:
    """How every image is converted before it reaches the network.

    ``size``: side of the square output (resized with a LANCZOS filter, as Omniglot's loader);
    ``channels``: 1 (greyscale) or 3 (RGB); ``invert``: ``255 - x`` (dark ink on white paper,
    such as Omniglot's PNGs, becomes bright on dark, MAML's convention).
    """

    size: int = 28
    channels: int = 1
    invert: bool = False

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"image size must be >= 1, got {self.size}.")
        if self.channels not in (1, 3):
            raise ValueError(f"image channels must be 1 or 3, got {self.channels}.")

    def key(self) -> str:
        """A short tag of these options, part of each cache entry's name."""
        return f"s{self.size}c{self.channels}i{int(self.invert)}"


def preprocess_image(image: Any, options: ImageOptions) -> np.ndarray:
    """A Pillow image as uint8 ``[channels, size, size]``: converted to greyscale or RGB
    (transparency composited on white), resized with LANCZOS, optionally inverted."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    image = image.convert("L" if options.channels == 1 else "RGB")
    if image.size != (options.size, options.size):
        image = image.resize((options.size, options.size), Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.uint8)
    array = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    return np.ascontiguousarray(255 - array if options.invert else array)


def image_suffixes() -> set[str]:
    """File suffixes Pillow can open (lower case, with the dot)."""
    from PIL import Image

    return {s.lower() for s in Image.registered_extensions()}


def default_cache_dir() -> Path:
    """``$MAMLKIT_CACHE/images``, else ``~/.cache/mamlkit/images``."""
    base = os.environ.get("MAMLKIT_CACHE")
    return Path(base) / "images" if base else Path.home() / ".cache" / "mamlkit" / "images"


@dataclass
class ScanSummary:
    """What a scan found: classes, images, and what it ignored or skipped."""

    classes: int = 0
    images: int = 0
    ignored_files: int = 0
    skipped_images: list[str] = field(default_factory=list)
    grey: bool = True

    def __str__(self) -> str:
        text = f"{self.classes} classes, {self.images} images"
        if self.ignored_files:
            text += f", {self.ignored_files} non-image files ignored"
        if self.skipped_images:
            text += (f", {len(self.skipped_images)} unreadable images skipped (e.g. "
                     f"{self.skipped_images[0]})")
        return text


def _index_path(cache_dir: Path, root: Path) -> Path:
    tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return cache_dir / "index" / f"{tag}.json"


def _check_image(path: Path, data: bytes) -> str:
    """The image's mode; raises ``OSError``/``ValueError`` when Pillow cannot read it."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        mode = image.mode
        image.verify()
    return mode


def scan_tree(root: Path, cache_dir: Path, on_bad_image: str = "stop"
              ) -> tuple[dict[str, list[tuple[str, str]]], ScanSummary]:
    """Classes of ``root`` as ``{name: [(path, content key), ...]}`` and the scan's summary.

    Files already hashed and verified by an earlier scan (same size and modification time) are
    not read again; the index lives in ``cache_dir/index``.
    """
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise ValueError(f"on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {on_bad_image!r}.")
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist; pass --data-root pointing at "
                                "a folder laid out <class>/<image>.")
    index_file = _index_path(cache_dir, root)
    try:
        known = json.loads(index_file.read_text())
    except (OSError, ValueError):
        known = {}
    suffixes = image_suffixes()
    summary, classes, index, empty = ScanSummary(), {}, {}, []
    for folder, subdirs, files in sorted(os.walk(root)):
        images = [f for f in sorted(files) if Path(f).suffix.lower() in suffixes]
        summary.ignored_files += len(files) - len(images)
        if not images:
            if not subdirs and Path(folder) != root:
                empty.append(str(Path(folder).relative_to(root)))
            continue
        if Path(folder) == root:
            summary.ignored_files += len(images)  # images must sit in a class folder
            continue
        members = []
        for name in images:
            path = Path(folder) / name
            stat = path.stat()
            rel = str(path.relative_to(root))
            entry = known.get(rel)
            if entry and entry[0] == stat.st_size and entry[1] == stat.st_mtime_ns:
                key, mode = entry[2], entry[3]
            else:
                data = path.read_bytes()
                try:
                    mode = _check_image(path, data)
                except (OSError, ValueError, SyntaxError) as error:
                    if on_bad_image == "stop":
                        raise ValueError(
                            f"cannot read image {path} ({type(error).__name__}: {error}); delete "
                            "or replace it, or pass --on-bad-image skip to leave such files "
                            "out.") from None
                    summary.skipped_images.append(str(path))
                    continue
                key = hashlib.sha256(data).hexdigest()
            index[rel] = [stat.st_size, stat.st_mtime_ns, key, mode]
            summary.grey &= mode in GREY_MODES
            members.append((str(path), key))
        if members:
            classes[str(Path(folder).relative_to(root))] = members
        else:
            empty.append(str(Path(folder).relative_to(root)))
    if empty:
        raise ValueError(f"{len(empty)} class folder(s) of {root} hold no readable image (e.g. "
                         f"{', '.join(empty[:3])}); add images or remove those folders.")
    if not classes:
        raise ValueError(f"no images found under {root}: expected {root}/<class>/<image> "
                         f"(suffixes such as .png, .jpg).")
    summary.classes, summary.images = len(classes), sum(len(m) for m in classes.values())
    if index != known:
        index_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = index_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(index))
        tmp.replace(index_file)
    return classes, summary


MEMORY_CACHE_MIB = 64.0
"""Default bound of the in-memory copies of recently read images, per process."""


class FolderExamples(LazyExamples):
    """Images of some classes of a folder tree, decoded on demand through the on-disk cache.

    Recently read images are also kept in memory, up to ``memory_cache_mib`` (least recently
    used dropped first), so a dataset that fits is read from disk once per process and a larger
    one stays within that bound.
    """

    def __init__(self, classes: dict[str, list[tuple[str, str]]], options: ImageOptions,
                 cache_dir: Path, transform: ExampleTransform | None = None,
                 memory_cache_mib: float = MEMORY_CACHE_MIB) -> None:
        self.class_names = list(classes)
        self.counts = np.array([len(m) for m in classes.values()], dtype=np.int64)
        members = [m for c in classes.values() for m in c]
        self.paths = [p for p, _ in members]
        self.keys = [k for _, k in members]
        self.options, self.cache_dir, self.transform = options, Path(cache_dir), transform
        shape = (options.channels, options.size, options.size)
        self._shape, self._bytes = shape, int(np.prod(shape))
        self._capacity = int(memory_cache_mib * 2 ** 20) // self._bytes
        self._recent: OrderedDict[int, np.ndarray] = OrderedDict()

    def _entry(self, index: int) -> Path:
        key = self.keys[index]
        return self.cache_dir / key[:2] / f"{key}-{self.options.key()}.u8"

    def _decode(self, index: int) -> np.ndarray:
        from PIL import Image

        path = self.paths[index]
        try:
            with Image.open(path) as image:
                array = preprocess_image(image, self.options)
        except (OSError, ValueError, SyntaxError) as error:
            raise ValueError(f"cannot decode image {path} ({type(error).__name__}: {error}); "
                             "delete or replace it.") from None
        entry = self._entry(index)
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f"{entry.name}.{os.getpid()}.tmp")
        tmp.write_bytes(array.tobytes())
        tmp.replace(entry)  # atomic: workers never read a half-written entry
        return array

    def cached(self, index: int) -> np.ndarray:
        """Image ``index`` preprocessed (uint8 ``[C, S, S]``): from memory, else from the cache
        entry named by the file's sha256 and :meth:`ImageOptions.key`, else decoded (once)."""
        array = self._recent.get(index)
        if array is not None:
            self._recent.move_to_end(index)
            return array
        try:
            data = self._entry(index).read_bytes()
        except OSError:
            data = b""
        if len(data) == self._bytes:
            array = np.frombuffer(data, dtype=np.uint8).reshape(self._shape)
        else:  # absent (or cut short by a crash): decode again
            array = self._decode(index)
        if self._capacity:
            self._recent[index] = array
            if len(self._recent) > self._capacity:
                self._recent.popitem(last=False)
        return array

    def load(self, index: int) -> np.ndarray:
        """Image ``index``, with the per-example ``transform`` applied when one is given."""
        array = self.cached(index).copy() if self.transform is not None else self.cached(index)
        return array if self.transform is None else _as_numpy(self.transform(array))


class ImageFolder:
    """A scanned folder tree of class folders (see the module docstring).

    Args:
        root: ``root/<class>/<image>``.
        options: size, channels and inversion of the images (:class:`ImageOptions`).
        cache_dir: where decoded images and the scan index are kept (default
            :func:`default_cache_dir`).
        on_bad_image: ``"stop"`` (default) or ``"skip"`` for files Pillow cannot read.
        transform: per-example transform applied to each loaded uint8 ``[C, S, S]`` array.
    """

    def __init__(self, root: str | Path, options: ImageOptions | None = None,
                 cache_dir: str | Path | None = None, on_bad_image: str = "stop",
                 transform: ExampleTransform | None = None) -> None:
        self.root = Path(root).expanduser()
        self.options = options or ImageOptions()
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.transform = transform
        self.classes, self.summary = scan_tree(self.root, self.cache_dir, on_bad_image)

    @property
    def class_names(self) -> list[str]:
        """Every class, in sorted path order."""
        return list(self.classes)

    def examples(self, names: list[str] | None = None, options: ImageOptions | None = None
                 ) -> FolderExamples:
        """The images of the classes ``names`` (all when ``None``), read on demand, converted
        with ``options`` (default: the folder's)."""
        chosen = self.class_names if names is None else names
        return FolderExamples({n: self.classes[n] for n in chosen}, options or self.options,
                              self.cache_dir, self.transform)


IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
"""The per-channel mean and standard deviation of ImageNet (torchvision's convention)."""


class Normalize:
    """``(x - mean) / std`` per channel, for batches ``[..., channels, height, width]`` in [0, 1]."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        if any(s <= 0 for s in std):
            raise ValueError(f"normalisation std must be > 0, got {std}.")
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, x: Any) -> Any:
        import torch

        shape = (len(self.mean), 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype).view(shape)
        return (x - mean) / std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


def parse_normalize(text: str, channels: int) -> Normalize | None:
    """The :class:`Normalize` that ``--normalize`` names: ``none``, ``imagenet`` (3 channels) or
    ``MEAN:STD`` with one value, or one per channel, on each side."""
    if text in ("", "none"):
        return None
    if text == "imagenet":
        if channels != 3:
            raise ValueError("--normalize imagenet needs 3 channels (--channels 3); use "
                             "dataset or MEAN:STD for greyscale images.")
        return Normalize(*IMAGENET_MEAN_STD)
    try:
        mean_text, std_text = text.split(":")
        mean = [float(v) for v in mean_text.split(",")]
        std = [float(v) for v in std_text.split(",")]
    except ValueError:
        raise ValueError(f"--normalize {text!r} is not understood: use none, imagenet, dataset "
                         "or MEAN:STD (e.g. 0.5:0.25, or 0.5,0.4,0.3:0.2,0.2,0.2).") from None
    mean, std = (v * channels if len(v) == 1 else v for v in (mean, std))
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"--normalize {text!r} gives {len(mean)} means and {len(std)} stds for "
                         f"{channels}-channel images; give 1 or {channels} of each.")
    return Normalize(tuple(mean), tuple(std))


def channel_stats(examples: LazyExamples, limit: int = 1000, seed: int = 0
                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (in [0, 1] units) of up to ``limit`` images chosen with ``seed``."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(examples), size=min(limit, len(examples)), replace=False))
    x = examples.take(rows).astype(np.float64) / 255.0
    axes = (0, *range(2, x.ndim))
    std = np.maximum(x.std(axis=axes), 1e-6)
    return tuple(round(float(v), 6) for v in x.mean(axis=axes)), tuple(round(float(v), 6)
                                                                      for v in std)
