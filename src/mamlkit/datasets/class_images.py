"""What every image loader here produces: uint8 images grouped by class, with class names."""

from __future__ import annotations

import numpy as np

from mamlkit.datasets.episodic import EpisodeSampler, Transform
from mamlkit.datasets.lazy import LazyExamples


class ClassImages:
    """Base of the dataset loaders: ``images`` grouped by class plus ``class_names``.

    ``images`` is uint8 ``[classes, examples_per_class, channels, height, width]`` (or a list of
    per-class ``[n_c, channels, height, width]`` arrays when classes differ in size), the layout
    :class:`~mamlkit.datasets.EpisodeSampler` and the convolutional models take directly.
    """

    images: np.ndarray | list[np.ndarray] | LazyExamples
    class_names: list[str]
    split: str
    transform: Transform | None = None
    """Applied to every batch of inputs drawn from this split (e.g. normalisation)."""

    def __len__(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    def __repr__(self) -> str:
        shape = (tuple(self.images.shape) if isinstance(self.images, np.ndarray)
                 else f"{len(self)} classes of {sorted(set(self.class_sizes().tolist()))[:5]} "
                      "images")
        return f"{type(self).__name__}(split={self.split!r}, classes={len(self)}, images={shape})"

    def sampler(
        self, ways: int, shots: int, queries: int, seed: int = 0, transform: Transform | None = None
    ) -> EpisodeSampler:
        """An :class:`~mamlkit.datasets.EpisodeSampler` over this split's classes (with the
        split's own :attr:`transform` unless another is given)."""
        return EpisodeSampler(self.images, ways, shots, queries, seed=seed,
                              transform=transform or self.transform)

    def class_sizes(self) -> np.ndarray:
        """Images per class."""
        if isinstance(self.images, LazyExamples):
            return self.images.counts
        if isinstance(self.images, list):
            return np.array([len(c) for c in self.images], dtype=np.int64)
        return np.full(self.images.shape[0], self.images.shape[1], dtype=np.int64)


class LazyClassImages(ClassImages):
    """A split whose images are read on demand (:class:`~mamlkit.datasets.lazy.LazyExamples`)."""

    def __init__(self, images: LazyExamples, split: str, transform: Transform | None = None
                 ) -> None:
        self.images, self.class_names = images, list(images.class_names)
        self.split, self.transform = split, transform
