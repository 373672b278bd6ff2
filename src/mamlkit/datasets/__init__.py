"""Few-shot classification data: an episodic sampler and loaders for the standard benchmarks."""

from mamlkit.datasets.episodic import EpisodeIndices, EpisodeSampler, EpisodeStream, FixedEpisodes
from mamlkit.datasets.omniglot import Omniglot, omniglot_tasks

__all__ = [
    "EpisodeIndices",
    "EpisodeSampler",
    "EpisodeStream",
    "FixedEpisodes",
    "Omniglot",
    "omniglot_tasks",
]
