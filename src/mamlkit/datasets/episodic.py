"""N-way K-shot episode sampling from data grouped by class.

An *episode* (Vinyals et al. 2016, "Matching Networks for One Shot Learning"; the protocol MAML,
Finn et al. 2017, trains and tests on) picks ``ways`` distinct classes at random, relabels them
``0 .. ways-1`` in random order, and draws ``shots`` support and ``queries`` query examples from
each, without replacement. :class:`EpisodeSampler` draws whole meta-batches of episodes at once:
the class and example choices are made with one random draw each and the images are fetched with
a single gather, so the cost per batch does not grow with a Python loop over examples.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mamlkit.datasets.lazy import LazyExamples
from mamlkit.datasets.stream import EpisodeStream
from mamlkit.tasks.base import TaskBatch

Transform = Callable[[Tensor], Tensor]


def _as_array(array: Tensor | np.ndarray) -> np.ndarray:
    """A numpy view of CPU data (no copy; memory maps stay lazy and are never written)."""
    if isinstance(array, Tensor):
        if array.device.type != "cpu":
            raise ValueError(
                f"class data is on {array.device}; keep it on the CPU (episodes are gathered "
                "there) and move each batch with batch.to(device)."
            )
        return array.detach().numpy()
    if isinstance(array, np.ndarray):
        return array
    raise TypeError(
        f"class data must be a torch.Tensor or numpy.ndarray, got {type(array).__name__}; "
        "convert it with numpy.asarray(...) first."
    )


def _check_dtype(data: np.ndarray) -> None:
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise TypeError(
            f"class data has dtype {data.dtype}; EpisodeSampler expects uint8 images (scaled to "
            "[0, 1] per batch), other integer data such as token ids (passed through unchanged) "
            "or floating-point features. Convert with .to(torch.uint8), .long() or .float()."
        )


@dataclass(frozen=True)
class _Storage:
    """All examples in one ``[total, ...]`` array plus where each class starts and its size.

    Kept as numpy: gathering and scaling a batch are then single-threaded memory copies, which
    stay fast when the CPUs are busy (torch's intra-op threads can stall on a loaded machine).
    """

    flat: np.ndarray | LazyExamples  # both answer ``take(indices, axis=0)``
    offsets: np.ndarray  # [classes] int64: index of each class's first example in ``flat``
    counts: np.ndarray  # [classes] int64: number of examples of each class

    @property
    def num_classes(self) -> int:
        return int(self.counts.shape[0])

    @property
    def uniform(self) -> bool:
        return bool((self.counts == self.counts[0]).all())


def _storage_from(class_data: Any) -> _Storage:
    """Flatten ``class_data`` (dense ``[C, E, ...]``, a list of ``[n_c, ...]`` or
    :class:`~mamlkit.datasets.lazy.LazyExamples`, read on demand) into storage."""
    if isinstance(class_data, LazyExamples):
        if class_data.num_classes == 0 or (class_data.counts == 0).any():
            raise ValueError("lazy class data has a class without examples; drop empty classes.")
        _check_dtype(np.empty(0, dtype=class_data.dtype))
        return _Storage(class_data, class_data.offsets, class_data.counts)
    if isinstance(class_data, (Tensor, np.ndarray)):
        data = _as_array(class_data)
        if data.ndim < 2:
            raise ValueError(
                f"class data has shape {tuple(data.shape)}; expected [classes, "
                "examples_per_class, ...]. Group the examples by class first."
            )
        _check_dtype(data)
        classes, per_class = int(data.shape[0]), int(data.shape[1])
        if classes == 0 or per_class == 0:
            raise ValueError(f"class data of shape {tuple(data.shape)} holds no examples.")
        flat = data.reshape(classes * per_class, *data.shape[2:])
        counts = np.full(classes, per_class, dtype=np.int64)
        return _Storage(flat, np.arange(classes, dtype=np.int64) * per_class, counts)
    if isinstance(class_data, Sequence) and not isinstance(class_data, (str, bytes)):
        if len(class_data) == 0:
            raise ValueError("class data is an empty list; pass at least one class.")
        parts = [_as_array(part) for part in class_data]
        shapes = {tuple(p.shape[1:]) for p in parts}
        dtypes = {p.dtype for p in parts}
        if any(p.ndim < 1 for p in parts) or len(shapes) != 1 or len(dtypes) != 1:
            raise ValueError(
                "every class in the list must be a [n_examples, ...] tensor with the same "
                f"example shape and dtype; got shapes {sorted(shapes)} and dtypes "
                f"{sorted(map(str, dtypes))}."
            )
        _check_dtype(parts[0])
        counts = np.array([p.shape[0] for p in parts], dtype=np.int64)
        empty = np.flatnonzero(counts == 0).tolist()
        if empty:
            raise ValueError(f"classes {empty[:10]} have no examples; remove them from the list.")
        offsets = np.cumsum(counts) - counts
        return _Storage(np.concatenate(parts, axis=0), offsets, counts)
    raise TypeError(
        f"class data must be a tensor/ndarray [classes, examples, ...] or a list of per-class "
        f"tensors, got {type(class_data).__name__}."
    )


def _validate_episode_shape(storage: _Storage, ways: int, shots: int, queries: int) -> None:
    for name, value, minimum in (("ways", ways, 1), ("shots", shots, 1), ("queries", queries, 1)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < minimum:
            raise ValueError(
                f"{name}={value} but an episode needs {name} >= {minimum}"
                + (" (MAML scores the adapted model on the query set)" if name == "queries" else "")
                + f"; pass {name}={minimum} or more."
            )
    if ways > storage.num_classes:
        raise ValueError(
            f"ways={ways} but the data has only {storage.num_classes} classes; use ways <= "
            f"{storage.num_classes} or a split with more classes."
        )
    needed = shots + queries
    too_small = np.flatnonzero(storage.counts < needed)
    if too_small.size:
        smallest = int(storage.counts.min())
        raise ValueError(
            f"shots + queries = {shots} + {queries} = {needed} examples per class are needed but "
            f"{too_small.size} classes have fewer (the smallest has {smallest}; e.g. class "
            f"{int(too_small[0])}); lower shots/queries so that shots + queries <= {smallest}, or "
            "drop the small classes."
        )


def _top_k(keys: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest keys along the last axis, largest first."""
    part = np.argpartition(-keys, k - 1, axis=-1)[..., :k]
    order = np.argsort(-np.take_along_axis(keys, part, axis=-1), axis=-1, kind="stable")
    return np.take_along_axis(part, order, axis=-1)


def _to_tensor(x: np.ndarray) -> Tensor:
    """A fresh batch array as a tensor: uint8 images become float32 in [0, 1]; other integer data
    (token ids) and floats keep their dtype and values."""
    if x.dtype == np.uint8:
        x = np.divide(x, np.float32(255.0), dtype=np.float32)
    return torch.from_numpy(x)


@dataclass(frozen=True)
class EpisodeIndices:
    """Which examples make up a set of episodes: original class ids and flat example indices.

    ``classes`` is ``[tasks, ways]`` (class ``classes[t, j]`` gets label ``j`` in task ``t``) and
    ``examples`` is ``[tasks, ways, shots + queries]`` indices into the sampler's flat storage
    (the first ``shots`` of each row are the support examples, the rest the query examples).
    """

    classes: Tensor
    examples: Tensor

    def __len__(self) -> int:
        return int(self.classes.shape[0])

    def slice(self, sl: slice) -> EpisodeIndices:
        """The episodes selected by ``sl``."""
        return EpisodeIndices(self.classes[sl], self.examples[sl])


class EpisodeSampler:
    """Draws meta-batches of N-way K-shot classification episodes from class-grouped data.

    ``class_data`` is a :class:`~mamlkit.datasets.lazy.LazyExamples` (image folders, any torch or
    Hugging Face dataset: only the examples an episode uses are loaded), or a dense CPU
    tensor/ndarray ``[classes, examples_per_class, ...]``
    (uint8 images, other integer data such as token ids, or float features; memory maps work and
    are read lazily) or a list of per-class tensors ``[n_c, ...]`` of varying length.
    :meth:`sample` returns a :class:`mamlkit.TaskBatch` with ``support_x [tasks, ways*shots,
    ...]``, ``support_y [tasks, ways*shots]`` (int64 labels ``0 .. ways-1``, classes in random
    order, examples grouped by label), and the query set likewise with ``ways*queries`` examples.
    uint8 data arrives as float32 in ``[0, 1]``; any other integer dtype (int64 token ids, say)
    arrives unchanged; ``transform``, if given, is applied to each whole ``x`` batch
    ``[tasks, n, ...]`` after that.
    ``info["classes"]`` holds the original class index of each label, ``[tasks, ways]``.

    Randomness comes only from the sampler's own ``torch.Generator`` seeded with ``seed``: the same
    seed gives the same episodes, and :meth:`state_dict` / :meth:`load_state_dict` resume a run
    exactly. Episode protocol: Vinyals et al. 2016; used by MAML (Finn et al. 2017).
    """

    def __init__(
        self,
        class_data: Tensor | np.ndarray | Sequence[Tensor | np.ndarray],
        ways: int,
        shots: int,
        queries: int,
        seed: int = 0,
        transform: Transform | None = None,
    ) -> None:
        self._storage = _storage_from(class_data)
        _validate_episode_shape(self._storage, ways, shots, queries)
        self.ways, self.shots, self.queries = int(ways), int(shots), int(queries)
        self.transform = transform
        self.seed = int(seed)
        self._generator = torch.Generator().manual_seed(self.seed)
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # picklable for DataLoader workers started by spawn/forkserver (a lock is not)
        state = {k: v for k, v in self.__dict__.items() if k != "_lock"}
        state["_generator"] = self._generator.get_state()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        generator = torch.Generator()
        generator.set_state(state.pop("_generator"))
        self.__dict__.update(state, _generator=generator, _lock=threading.Lock())

    @property
    def class_sizes(self) -> np.ndarray:
        """Examples per class."""
        return self._storage.counts

    # ------------------------------------------------------------------ properties
    @property
    def num_classes(self) -> int:
        """Number of classes episodes are drawn from."""
        return self._storage.num_classes

    @property
    def example_shape(self) -> tuple[int, ...]:
        """Shape of one example (e.g. ``(1, 28, 28)`` for Omniglot)."""
        return tuple(self._storage.flat.shape[1:])

    # ------------------------------------------------------------------ drawing indices
    def draw_indices(
        self, num_tasks: int, generator: torch.Generator | None = None
    ) -> EpisodeIndices:
        """Choose classes and examples for ``num_tasks`` episodes (no data is touched).

        Classes: the ``ways`` largest of ``classes`` uniform keys per task, a uniformly random
        ordered subset. Examples: likewise among each chosen class's examples; keys of positions
        past a class's size are pushed to -1 so they are never chosen.
        """
        if not isinstance(num_tasks, (int, np.integer)) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive int, got {num_tasks!r}; pass e.g. 32.")
        gen = self._generator if generator is None else generator
        storage, k = self._storage, self.shots + self.queries
        class_keys = torch.rand(num_tasks, storage.num_classes, generator=gen).numpy()
        classes = _top_k(class_keys, self.ways)  # [tasks, ways]
        max_count = int(storage.counts.max())
        example_keys = torch.rand(num_tasks, self.ways, max_count, generator=gen).numpy()
        if not storage.uniform:
            beyond = np.arange(max_count) >= storage.counts[classes][..., None]
            example_keys[beyond] = -1.0
        within = _top_k(example_keys, k)  # [tasks, ways, k]
        examples = storage.offsets[classes][..., None] + within
        return EpisodeIndices(torch.from_numpy(classes), torch.from_numpy(examples))

    # ------------------------------------------------------------------ gathering data
    def gather(self, indices: EpisodeIndices) -> TaskBatch:
        """The :class:`TaskBatch` for pre-drawn episode indices (one gather for all images)."""
        tasks = len(indices)
        shape = self.example_shape
        x = self._storage.flat.take(indices.examples.numpy().reshape(-1), axis=0)
        x = x.reshape(tasks, self.ways, self.shots + self.queries, *shape)
        # scaling a strided view writes a fresh contiguous array: no extra uint8 copy
        support_x = _to_tensor(x[:, :, : self.shots]).reshape(tasks, self.ways * self.shots, *shape)
        query_x = _to_tensor(x[:, :, self.shots :]).reshape(tasks, self.ways * self.queries, *shape)
        if self.transform is not None:
            support_x, query_x = self.transform(support_x), self.transform(query_x)
        labels = torch.arange(self.ways, dtype=torch.int64)
        support_y = labels.repeat_interleave(self.shots).expand(tasks, -1).contiguous()
        query_y = labels.repeat_interleave(self.queries).expand(tasks, -1).contiguous()
        return TaskBatch(support_x, support_y, query_x, query_y, info={"classes": indices.classes})

    def sample(self, num_tasks: int) -> TaskBatch:
        """A meta-batch of ``num_tasks`` fresh episodes; advances the sampler's random state."""
        with self._lock:
            indices = self.draw_indices(num_tasks)
        return self.gather(indices)

    # ------------------------------------------------------------------ determinism
    def state_dict(self) -> dict[str, Any]:
        """The random state, so that :meth:`load_state_dict` continues with the same episodes."""
        with self._lock:
            return {"seed": self.seed, "generator": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the next episodes are those that followed it."""
        if "generator" not in state:
            raise KeyError(
                "state has no 'generator' entry; pass the dict returned by "
                "EpisodeSampler.state_dict()."
            )
        with self._lock:
            self._generator.set_state(state["generator"])
            self.seed = int(state.get("seed", self.seed))

    def fixed_episodes(self, n: int, seed: int = 0, meta_batch_size: int = 32) -> FixedEpisodes:
        """The same ``n`` episodes every time for ``seed`` (a test set), in batches.

        Drawn with a private generator, so the sampler's own random state is untouched; only the
        indices are kept and batches are gathered as they are iterated, so 600 large episodes do
        not have to fit in memory at once.
        """
        generator = torch.Generator().manual_seed(int(seed))
        return FixedEpisodes(self, self.draw_indices(n, generator), meta_batch_size)

    def stream(
        self, num_tasks: int, prefetch: int = 2, num_batches: int | None = None
    ) -> EpisodeStream:
        """Iterator of meta-batches built by a background thread, ``prefetch`` batches ahead.

        Yields exactly the batches that repeated :meth:`sample` calls would; after each yielded
        batch the sampler's state is that of having sampled it, so :meth:`state_dict` resumes
        exactly even though the thread has already drawn further batches. Do not call
        :meth:`sample` on the same sampler while a stream is open (the stream would overwrite
        that state); ``num_batches=None`` streams until :meth:`EpisodeStream.close`.
        """
        return EpisodeStream(self, num_tasks, prefetch, num_batches)


class FixedEpisodes:
    """A deterministic, re-iterable set of episodes (see :meth:`EpisodeSampler.fixed_episodes`)."""

    def __init__(self, sampler: EpisodeSampler, indices: EpisodeIndices, meta_batch_size: int):
        if meta_batch_size < 1:
            raise ValueError(f"meta_batch_size must be >= 1, got {meta_batch_size}.")
        self.sampler, self.indices, self.meta_batch_size = sampler, indices, int(meta_batch_size)

    @property
    def num_episodes(self) -> int:
        """Total number of episodes."""
        return len(self.indices)

    def __len__(self) -> int:
        return -(-self.num_episodes // self.meta_batch_size)

    def batch(self, i: int) -> TaskBatch:
        """The ``i``-th meta-batch (the last one may be smaller)."""
        if not 0 <= i < len(self):
            raise IndexError(f"batch {i} out of range for {len(self)} batches.")
        start = i * self.meta_batch_size
        return self.sampler.gather(self.indices.slice(slice(start, start + self.meta_batch_size)))

    def __iter__(self) -> Iterator[TaskBatch]:
        for i in range(len(self)):
            yield self.batch(i)

    def all(self) -> TaskBatch:
        """All episodes as one batch (mind the memory for large images)."""
        return self.sampler.gather(self.indices)
