"""What every image loader here produces: uint8 images grouped by class, with class names."""

from __future__ import annotations

import numpy as np

from mamlkit.datasets.episodic import EpisodeSampler, Transform


class ClassImages:
    """Base of the dataset loaders: ``images`` grouped by class plus ``class_names``.

    ``images`` is uint8 ``[classes, examples_per_class, channels, height, width]`` (or a list of
    per-class ``[n_c, channels, height, width]`` arrays when classes differ in size), the layout
    :class:`~mamlkit.datasets.EpisodeSampler` and the convolutional models take directly.
    """

    images: np.ndarray | list[np.ndarray]
    class_names: list[str]
    split: str

    def __len__(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    def __repr__(self) -> str:
        shape = (tuple(self.images.shape) if isinstance(self.images, np.ndarray)
                 else f"{len(self.images)} ragged classes")
        return f"{type(self).__name__}(split={self.split!r}, classes={len(self)}, images={shape})"

    def sampler(
        self, ways: int, shots: int, queries: int, seed: int = 0, transform: Transform | None = None
    ) -> EpisodeSampler:
        """An :class:`~mamlkit.datasets.EpisodeSampler` over this split's classes."""
        return EpisodeSampler(self.images, ways, shots, queries, seed=seed, transform=transform)
