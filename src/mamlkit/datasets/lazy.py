"""Class-grouped examples read on demand, so a dataset never has to sit in memory.

:class:`LazyExamples` is what :class:`~mamlkit.datasets.EpisodeSampler` takes besides in-memory
arrays: examples stored class after class (``counts[c]`` examples of class ``c``, starting at
``offsets[c]``), of which only the ones an episode needs are loaded, by :meth:`LazyExamples.take`
(the same call numpy arrays answer, so the sampler treats both alike). Two sources are provided:

- :class:`DatasetClasses`: any map-style ``torch.utils.data.Dataset`` (``dataset[i]`` returning
  ``(input, label)`` or a dict), with labels read from a ``targets`` attribute, a function, a
  sequence, or one indexing pass;
- :class:`HFClasses`: a Hugging Face ``datasets.Dataset`` (the ``datasets`` package, an optional
  extra), labels read from its label column without decoding any example.

Per-example transforms (augmentation, resizing) are applied as each example is loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

ExampleTransform = Callable[[Any], Any]
"""A per-example transform: the loaded input -> a tensor or array (e.g. torchvision's)."""


class LazyExamples:
    """Examples grouped by class, loaded one at a time by :meth:`load`.

    Subclasses set ``counts`` (examples per class, int64), ``class_names`` and implement
    :meth:`load` (flat index -> one example as a numpy array). ``take`` gathers several into one
    array, as ``numpy.ndarray.take(indices, axis=0)`` does, so an
    :class:`~mamlkit.datasets.EpisodeSampler` draws episodes from either without a copy of the
    dataset in memory.
    """

    counts: np.ndarray
    class_names: list[str]

    def load(self, index: int) -> np.ndarray:
        """Example ``index`` (0 .. total-1, classes in order) as a numpy array."""
        raise NotImplementedError

    @property
    def offsets(self) -> np.ndarray:
        """Flat index of each class's first example."""
        return np.cumsum(self.counts) - self.counts

    def __len__(self) -> int:
        return int(self.counts.sum())

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return int(self.counts.shape[0])

    def _probe(self) -> np.ndarray:
        if not hasattr(self, "_first"):
            self._first = self.load(0)
        return self._first

    @property
    def shape(self) -> tuple[int, ...]:
        """``(total examples, *example shape)``, like an array's."""
        return (len(self), *self._probe().shape)

    @property
    def ndim(self) -> int:
        """Dimensions of :attr:`shape`."""
        return len(self.shape)

    @property
    def dtype(self) -> np.dtype:
        """The examples' dtype (uint8 images are scaled to [0, 1] by the sampler)."""
        return self._probe().dtype

    def take(self, indices: np.ndarray, axis: int = 0) -> np.ndarray:
        """The examples at flat ``indices`` stacked into ``[len(indices), ...]``."""
        if axis != 0:
            raise ValueError("LazyExamples.take gathers whole examples: axis must be 0.")
        flat = np.asarray(indices).reshape(-1)
        out = np.empty((flat.size, *self._probe().shape), dtype=self.dtype)
        for row, index in enumerate(flat.tolist()):
            example = self.load(index)
            if example.shape != out.shape[1:]:
                raise ValueError(f"example {index} has shape {example.shape} but the first has "
                                 f"{out.shape[1:]}; resize every example to one shape (a "
                                 "per-example transform).")
            out[row] = example
        return out

    def labels(self) -> np.ndarray:
        """The class of every flat index."""
        return np.repeat(np.arange(self.num_classes), self.counts)


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    if hasattr(value, "mode") and hasattr(value, "size"):  # a PIL image without a transform
        array = np.asarray(value)
        return array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    return np.asarray(value)


def _group(labels: Sequence[Any], class_names: Sequence[str] | None
           ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Stable class-contiguous order of dataset indices, counts per class and class names."""
    values = np.asarray([int(v) if isinstance(v, Tensor) else v for v in labels])
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"expected one label per example, got labels of shape {values.shape}.")
    classes, inverse = np.unique(values, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse, minlength=len(classes)).astype(np.int64)
    if class_names is not None and len(class_names) >= len(classes) \
            and np.issubdtype(classes.dtype, np.integer):
        names = [str(class_names[int(c)]) for c in classes]
    else:
        names = [str(c) for c in classes]
    return order.astype(np.int64), counts, names


class DatasetClasses(LazyExamples):
    """The examples of a map-style torch ``Dataset``, grouped by label and loaded on demand.

    Args:
        dataset: ``dataset[i]`` returns ``(input, label, ...)``, a dict, or (with ``input_key``)
            anything indexable; only the examples episodes use are ever loaded.
        labels: where the labels come from: ``None`` reads ``dataset.targets`` when it exists
            and otherwise makes one indexing pass (``dataset[i][label_key]`` for every ``i``); a
            sequence gives them directly; a function ``i -> label`` is called for every index.
        transform: per-example transform (augmentation), applied to each loaded input.
        input_key, label_key: where input and label sit in ``dataset[i]`` (0 and 1 for tuples,
            column names for dicts).
        class_names: optional names indexed by label (e.g. ``dataset.classes``).
    """

    def __init__(self, dataset: Any, labels: Sequence[Any] | Callable[[int], Any] | None = None,
                 transform: ExampleTransform | None = None, input_key: Any = 0,
                 label_key: Any = 1, class_names: Sequence[str] | None = None) -> None:
        self.dataset, self.transform = dataset, transform
        self.input_key = input_key
        size = len(dataset)
        if labels is None:
            targets = getattr(dataset, "targets", None)
            labels = targets if targets is not None else [dataset[i][label_key]
                                                          for i in range(size)]
        elif callable(labels):
            labels = [labels(i) for i in range(size)]
        if len(labels) != size:
            raise ValueError(f"{len(labels)} labels for a dataset of {size} examples; give one "
                             "label per example.")
        names = class_names if class_names is not None else getattr(dataset, "classes", None)
        self.order, self.counts, self.class_names = _group(labels, names)

    def load(self, index: int) -> np.ndarray:
        """Example ``index`` (classes in label order), transformed, as a numpy array."""
        item = self.dataset[int(self.order[index])]
        value = item[self.input_key]
        if self.transform is not None:
            value = self.transform(value)
        return _as_numpy(value)


class HFClasses(DatasetClasses):
    """A Hugging Face ``datasets.Dataset`` as classes: labels come from ``label_column`` (read as
    one column, no example is decoded), inputs from ``input_column`` when an episode needs them.
    """

    def __init__(self, dataset: Any, input_column: str = "image", label_column: str = "label",
                 transform: ExampleTransform | None = None) -> None:
        for column in (input_column, label_column):
            if column not in dataset.column_names:
                raise ValueError(f"the dataset has no column {column!r}; its columns are "
                                 f"{', '.join(dataset.column_names)}. Pass input_column= and "
                                 "label_column=.")
        feature = dataset.features.get(label_column)
        names = getattr(feature, "names", None)
        super().__init__(dataset, labels=list(dataset[label_column]), transform=transform,
                         input_key=input_column, label_key=label_column, class_names=names)


def to_float_tensor(value: Any) -> Tensor:
    """A per-example transform turning a PIL image or array into float32 ``[C, H, W]`` in [0, 1]."""
    array = _as_numpy(value)
    if array.ndim == 2:
        array = array[None]
    scale = 255.0 if array.dtype == np.uint8 else 1.0
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32) / scale)
