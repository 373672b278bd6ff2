"""Episodes through a ``torch.utils.data.DataLoader``: worker processes, seeding and collation.

:class:`EpisodeDataset` makes episode ``i`` a pure function of ``(seed, i)``: its classes and
examples come from a generator seeded with both, and global random state (used by per-example
augmentation) is set from them while it is built. The episode stream is therefore the same
with 0, 2 or 16 workers, and resuming needs only the number of episodes already consumed.
:class:`EpisodeLoader` is the sampler :func:`mamlkit.meta_train` takes (``sample``,
``state_dict``, ``load_state_dict``) built on such a DataLoader; :func:`collate_tasks` batches
:class:`~mamlkit.TaskBatch` items (``default_collate`` cannot) and :func:`seed_worker` gives
each worker its own numpy and ``random`` seeds.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mamlkit.datasets.episodic import EpisodeSampler
from mamlkit.tasks.base import TaskBatch

TaskTransform = Callable[[TaskBatch], TaskBatch]
"""A task-level transform applied to each episode (e.g. one random rotation per task)."""


def episode_seed(seed: int, index: int) -> int:
    """The 63-bit seed of episode ``index`` of the stream ``seed`` (independent streams)."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class EpisodeDataset(Dataset):
    """Map-style dataset whose item ``i`` is episode ``i`` (a one-task :class:`TaskBatch`).

    ``sampler`` supplies the data and episode shape (an :class:`EpisodeSampler`, over arrays or
    :class:`~mamlkit.datasets.lazy.LazyExamples`); its own random state is not used.
    ``task_transform`` is applied to each episode.
    """

    def __init__(self, sampler: EpisodeSampler, seed: int = 0,
                 task_transform: TaskTransform | None = None) -> None:
        self.sampler, self.seed, self.task_transform = sampler, int(seed), task_transform

    def __len__(self) -> int:
        return 2 ** 62  # endless in practice; items are computed, not stored

    def __getitem__(self, index: int) -> TaskBatch:
        seed = episode_seed(self.seed, index)
        saved = torch.get_rng_state(), np.random.get_state(), random.getstate()
        torch.manual_seed(seed)
        np.random.seed(seed % 2 ** 32)
        random.seed(seed)
        try:
            generator = torch.Generator().manual_seed(seed)
            batch = self.sampler.gather(self.sampler.draw_indices(1, generator))
            return batch if self.task_transform is None else self.task_transform(batch)
        finally:
            torch.set_rng_state(saved[0])
            np.random.set_state(saved[1])
            random.setstate(saved[2])


def collate_tasks(items: Sequence[TaskBatch]) -> TaskBatch:
    """One :class:`TaskBatch` from several (tasks concatenated; tensor ``info`` entries too)."""
    if not items or not all(isinstance(t, TaskBatch) for t in items):
        raise TypeError("collate_tasks batches TaskBatch items; got "
                        f"{sorted({type(t).__name__ for t in items})}.")
    info = {}
    for key, value in items[0].info.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            info[key] = torch.cat([t.info[key] for t in items])
        else:
            info[key] = value
    return TaskBatch(*(torch.cat([getattr(t, name) for t in items])
                       for name in ("support_x", "support_y", "query_x", "query_y")), info=info)


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` seeding numpy and ``random`` from the worker's distinct torch seed."""
    seed = torch.initial_seed()
    np.random.seed(seed % 2 ** 32)
    random.seed(seed)


class _Consecutive:
    """Batches of consecutive episode indices from ``start`` on (endless)."""

    def __init__(self, start: int, size: int) -> None:
        self.start, self.size = start, size

    def __iter__(self) -> Iterator[list[int]]:
        start = self.start
        while True:
            yield list(range(start, start + self.size))
            start += self.size


class EpisodeLoader:
    """Meta-batches of episodes built by DataLoader workers, resumable exactly.

    Args:
        sampler: data and episode shape (see :class:`EpisodeDataset`).
        meta_batch_size: episodes per batch.
        num_workers: DataLoader worker processes (0 = built in this process).
        seed: the episode stream (:func:`episode_seed`).
        pin_memory: pin batches (for fast, asynchronous copies to a GPU; needs CUDA).
        prefetch_factor: batches each worker prepares ahead.
        task_transform: applied to each episode.

    ``sample(n)`` returns the next ``n`` episodes (another ``n`` than the last restarts the
    workers with batches of ``n``); :meth:`state_dict` counts the episodes handed out (not those
    workers prepared ahead), so a resumed loader continues the same stream.
    """

    def __init__(self, sampler: EpisodeSampler, meta_batch_size: int, num_workers: int = 0,
                 seed: int = 0, pin_memory: bool = False, prefetch_factor: int = 2,
                 task_transform: TaskTransform | None = None) -> None:
        if meta_batch_size < 1 or num_workers < 0:
            raise ValueError(f"meta_batch_size must be >= 1 and num_workers >= 0, got "
                             f"{meta_batch_size} and {num_workers}.")
        if pin_memory and not torch.cuda.is_available():
            raise ValueError("pin_memory needs CUDA, which is not available; pass "
                             "pin_memory=False.")
        self.dataset = EpisodeDataset(sampler, seed, task_transform)
        self.meta_batch_size, self.num_workers = int(meta_batch_size), int(num_workers)
        self.pin_memory, self.prefetch_factor = pin_memory, prefetch_factor
        self.consumed = 0
        self._batches: Iterator[TaskBatch] | None = None

    @property
    def seed(self) -> int:
        """The episode stream's seed."""
        return self.dataset.seed

    def _iterator(self) -> Iterator[TaskBatch]:
        extra: dict[str, Any] = {}
        if self.num_workers:
            extra = {"prefetch_factor": self.prefetch_factor, "worker_init_fn": seed_worker,
                     "persistent_workers": False,
                     "generator": torch.Generator().manual_seed(self.seed)}
        loader = DataLoader(self.dataset, batch_sampler=_Consecutive(self.consumed,
                                                                     self.meta_batch_size),
                            num_workers=self.num_workers, collate_fn=collate_tasks,
                            pin_memory=False, **extra)
        return iter(loader)

    def sample(self, num_tasks: int) -> TaskBatch:
        """The next ``num_tasks`` episodes of the stream."""
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}.")
        if num_tasks != self.meta_batch_size:  # e.g. a rank's share of the meta-batch
            self.close()
            self.meta_batch_size = int(num_tasks)
        if self._batches is None:
            self._batches = self._iterator()
        batch = next(self._batches)
        self.consumed += num_tasks
        if self.pin_memory:
            from mamlkit.train import pin_batch

            batch = pin_batch(batch)
        return batch

    def __iter__(self) -> Iterator[TaskBatch]:
        while True:
            yield self.sample(self.meta_batch_size)

    def state_dict(self) -> dict[str, Any]:
        """Seed and episodes consumed: all a resumed loader needs."""
        return {"seed": self.seed, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the stream of a :meth:`state_dict` (workers restart from there)."""
        if "consumed" not in state:
            raise KeyError("state has no 'consumed' entry; pass EpisodeLoader.state_dict().")
        self.close()
        self.dataset.seed = int(state.get("seed", self.seed))
        self.consumed = int(state["consumed"])

    def reseed(self, seed: int) -> None:
        """A new episode stream from its start (one per process in distributed training)."""
        self.close()
        self.dataset.seed, self.consumed = int(seed), 0

    def close(self) -> None:
        """Stop the workers (a later :meth:`sample` starts them again)."""
        self._batches = None
