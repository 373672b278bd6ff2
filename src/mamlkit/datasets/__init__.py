"""Few-shot classification data: an episodic sampler, loaders for the standard benchmarks, your
own image folders, any torch or Hugging Face dataset, and DataLoader episodes."""

from mamlkit.datasets.cifar_fs import CIFARFS, cifar_fs_tasks
from mamlkit.datasets.class_images import ClassImages, LazyClassImages
from mamlkit.datasets.class_split import check_split, split_classes
from mamlkit.datasets.episodic import EpisodeIndices, EpisodeSampler, EpisodeStream, FixedEpisodes
from mamlkit.datasets.image_folder import (
    ImageFolder,
    ImageOptions,
    Normalize,
    parse_normalize,
    preprocess_image,
)
from mamlkit.datasets.lazy import DatasetClasses, HFClasses, LazyExamples, to_float_tensor
from mamlkit.datasets.loader import EpisodeDataset, EpisodeLoader, collate_tasks, seed_worker
from mamlkit.datasets.miniimagenet import MiniImageNet, miniimagenet_tasks
from mamlkit.datasets.omniglot import Omniglot, omniglot_tasks, preprocess_omniglot

__all__ = [
    "CIFARFS",
    "ClassImages",
    "DatasetClasses",
    "EpisodeDataset",
    "EpisodeIndices",
    "EpisodeLoader",
    "EpisodeSampler",
    "EpisodeStream",
    "FixedEpisodes",
    "HFClasses",
    "ImageFolder",
    "ImageOptions",
    "LazyClassImages",
    "LazyExamples",
    "MiniImageNet",
    "Normalize",
    "Omniglot",
    "check_split",
    "cifar_fs_tasks",
    "collate_tasks",
    "miniimagenet_tasks",
    "omniglot_tasks",
    "parse_normalize",
    "preprocess_image",
    "preprocess_omniglot",
    "seed_worker",
    "split_classes",
    "to_float_tensor",
]
