"""Few-shot classification on your own images: ``mamlkit train images --data-root DIR``.

``DIR`` is a tree ``DIR/<class>/<image>`` (or ``DIR/{train,val,test}/<class>/<image>`` for an
explicit class split) of any format Pillow reads; see :mod:`mamlkit.datasets.image_folder` for
the scan, the checks and the on-disk cache, and :mod:`mamlkit.datasets.class_split` for the
split forms (``--class-split 0.6,0.2,0.2``, ``64,16,20``, class-list files or ``folders``).
Images are resized to ``--image-size`` (28), converted to ``--channels`` (1 or 3; by default 1
when every image is greyscale) and optionally inverted (``--invert``) and normalised
(``--normalize``); MAML's four-block ConvNet is built to fit. The settings default to MAML's
Omniglot ones (5-way 1-shot, meta-batch 32, one inner step of 0.4, Adam 1e-3) and are all
overridable; training, evaluation and the baselines are those of :mod:`.vision`.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

from mamlkit.config import TrainConfig
from mamlkit.datasets.class_images import ClassImages, LazyClassImages
from mamlkit.datasets.class_split import check_split, split_classes
from mamlkit.datasets.image_folder import (
    ImageFolder,
    ImageOptions,
    channel_stats,
    default_cache_dir,
    parse_normalize,
)
from mamlkit.experiments import Experiment
from mamlkit.experiments.vision import _COMMON, OMNIGLOT_BY_WAYS, omniglot_defaults, train
from mamlkit.experiments.vision_data import ImageDataset, data_folder, load_all
from mamlkit.experiments.vision_eval import evaluate, maml_learner

DEFAULT_IMAGE_SIZE = 28
"""Side of the images when ``--image-size`` is not given (MAML's Omniglot size)."""
HIDDEN = 64
"""Filters per convolution (MAML's Omniglot network)."""


@functools.lru_cache(maxsize=4)
def _scan(root: str, cache_dir: str, on_bad_image: str) -> ImageFolder:
    return ImageFolder(root, cache_dir=cache_dir, on_bad_image=on_bad_image)


def image_folder(config: TrainConfig) -> ImageFolder:
    """The scanned tree at ``--data-root`` (scanned once per process)."""
    cache = Path(config.cache_dir) / "images" if config.cache_dir else default_cache_dir()
    return _scan(str(data_folder(config)), str(cache), config.on_bad_image)


def image_options(config: TrainConfig) -> ImageOptions:
    """Size, channels and inversion from the configuration (channels 0 = read from the data)."""
    channels = config.channels or (1 if image_folder(config).summary.grey else 3)
    return ImageOptions(config.image_size or DEFAULT_IMAGE_SIZE, channels, config.invert)


def class_parts(config: TrainConfig) -> dict[str, list[str]]:
    """The class names of each role under ``--class-split`` (seeded with ``--seed``)."""
    return split_classes(image_folder(config).class_names, config.class_split, config.seed)


def _load(config: TrainConfig, folder: Path, role: str) -> ClassImages:
    parts = class_parts(config)
    check_split(parts, config.ways, (role,))
    options = image_options(config)
    examples = image_folder(config).examples(parts[role], options)
    return LazyClassImages(examples, role, parse_normalize(config.normalize, options.channels))


def resolve(config: TrainConfig) -> TrainConfig:
    """Channels read from the images and ``--normalize dataset`` turned into the meta-training
    images' per-channel mean and std, so the saved configuration rebuilds the same inputs."""
    options = image_options(config)
    changes: dict[str, object] = {"channels": options.channels}
    if config.normalize == "dataset":
        parts = class_parts(config)
        mean, std = channel_stats(image_folder(config).examples(parts["train"], options),
                                  seed=config.seed)
        changes["normalize"] = f"{','.join(map(str, mean))}:{','.join(map(str, std))}"
    return dataclasses.replace(config, **changes)


def images_spec(config: TrainConfig) -> ImageDataset:
    """The :class:`ImageDataset` of the tree at ``--data-root`` with the configured options."""
    channels = config.channels or 1  # resolved configurations name it (see resolve)
    return ImageDataset("image folder", "", "<class>/<image> folders", channels,
                        config.image_size or DEFAULT_IMAGE_SIZE, HIDDEN, (), _load, resolve)


def check(config: TrainConfig) -> None:
    """Scan the tree, split its classes and check the episodes fit, printing what was found."""
    config = resolve(config)
    data = load_all(config)
    sizes = "/".join(str(len(data[r])) for r in ("train", "val", "test"))
    print(f"images: {image_folder(config).summary} in {config.data_root}; classes train/val/test "
          f"{sizes}; {config.channels} channel(s), {config.image_size or DEFAULT_IMAGE_SIZE} px")


IMAGES = Experiment(
    name="images",
    algorithm_arguments=True,
    summary="Your own images: a folder tree DIR/<class>/<image> (--data-root DIR).",
    defaults={**_COMMON, "task": "images", "queries": 1, **OMNIGLOT_BY_WAYS[5]},
    train=train,
    evaluate=evaluate,
    derived_defaults=omniglot_defaults,
    check=check,
    load=maml_learner,
)
