"""Few-shot classification data: an episodic sampler and loaders for the standard benchmarks."""

from mamlkit.datasets.cifar_fs import CIFARFS, cifar_fs_tasks
from mamlkit.datasets.class_images import ClassImages
from mamlkit.datasets.episodic import EpisodeIndices, EpisodeSampler, EpisodeStream, FixedEpisodes
from mamlkit.datasets.miniimagenet import MiniImageNet, miniimagenet_tasks
from mamlkit.datasets.omniglot import Omniglot, omniglot_tasks

__all__ = [
    "CIFARFS",
    "ClassImages",
    "EpisodeIndices",
    "EpisodeSampler",
    "EpisodeStream",
    "FixedEpisodes",
    "MiniImageNet",
    "Omniglot",
    "cifar_fs_tasks",
    "miniimagenet_tasks",
    "omniglot_tasks",
]
