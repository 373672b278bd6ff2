"""Task batches through a ``torch.utils.data.DataLoader``.

A training framework moves what a ``DataLoader`` yields to the device and shards it over
processes. :class:`TaskDataset` is a map-style dataset of single tasks and :func:`collate_tasks`
stacks them into one :class:`~mamlkit.tasks.base.TaskBatch`, so ``DataLoader(TaskDataset(...),
batch_size=meta_batch, collate_fn=collate_tasks)`` yields meta-batches that Lightning moves with
``TaskBatch.to`` and that ``accelerator.prepare(loader)`` shards by index (each process collates
its own tasks; no batch size has to be found inside a ``TaskBatch``). For one stream of tasks
split over processes (Accelerate's dispatching loader for an ``IterableDataset``: the main process
draws, every process gets a slice), :class:`TaskStream` yields plain dicts of tensors, which such
a loader can measure, broadcast and slice; :func:`as_task_batch` turns them back.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset

from mamlkit.tasks.base import TaskBatch


class TaskDataset(Dataset):
    """A fixed list of tasks, one :class:`TaskBatch` of one task per index.

    Build it from any batch (``TaskDataset(Sinusoid().fixed_tasks(1000, seed=0))``); a
    framework's sampler then decides which process sees which task, and the meta-batch is the
    loader's ``batch_size``.
    """

    def __init__(self, tasks: TaskBatch) -> None:
        if not isinstance(tasks, TaskBatch):
            raise TypeError(f"TaskDataset needs a mamlkit.TaskBatch, got {type(tasks).__name__}.")
        self.tasks = tasks

    def __len__(self) -> int:
        return self.tasks.num_tasks

    def __getitem__(self, index: int) -> TaskBatch:
        return self.tasks.task(int(index))


def collate_tasks(items: Sequence[TaskBatch]) -> TaskBatch:
    """One :class:`TaskBatch` from batches of tasks (concatenated along the task dimension).

    ``info`` entries that have one value per task are concatenated too; others are taken from
    the first item.
    """
    if not items:
        raise ValueError("collate_tasks got no tasks; use a DataLoader with batch_size >= 1.")
    for item in items:
        if not isinstance(item, TaskBatch):
            raise TypeError(f"collate_tasks needs mamlkit.TaskBatch items, got "
                            f"{type(item).__name__}; use TaskDataset or return TaskBatch tasks.")
    first = items[0]
    tensors = [torch.cat([getattr(i, name) for i in items])
               for name in ("support_x", "support_y", "query_x", "query_y")]
    info: dict[str, Any] = {}
    for key, value in first.info.items():
        per_task = all(isinstance(i.info.get(key), torch.Tensor) and i.info[key].dim() > 0
                       and i.info[key].shape[0] == i.num_tasks for i in items)
        info[key] = torch.cat([i.info[key] for i in items]) if per_task else value
    return TaskBatch(*tensors, info=info)


TENSOR_FIELDS = ("support_x", "support_y", "query_x", "query_y")


class TaskStream(IterableDataset):
    """Meta-batches of ``tasks_per_batch`` tasks drawn from ``sampler`` (anything with
    ``sample(n) -> TaskBatch``), each as a dict of the four tensors; ``batches`` of them, or
    endless when None. Use it with ``DataLoader(stream, batch_size=None)``."""

    def __init__(self, sampler: Any, tasks_per_batch: int, batches: int | None = None) -> None:
        if tasks_per_batch < 1:
            raise ValueError(f"tasks_per_batch must be >= 1, got {tasks_per_batch}.")
        self.sampler, self.tasks_per_batch, self.batches = sampler, tasks_per_batch, batches

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        counter = itertools.count() if self.batches is None else range(self.batches)
        for _ in counter:
            batch = self.sampler.sample(self.tasks_per_batch)
            yield {name: getattr(batch, name) for name in TENSOR_FIELDS}


def as_task_batch(batch: TaskBatch | Mapping[str, Tensor]) -> TaskBatch:
    """``batch`` as a :class:`TaskBatch` (a dict from :class:`TaskStream` is converted)."""
    if isinstance(batch, TaskBatch):
        return batch
    if isinstance(batch, Mapping) and all(name in batch for name in TENSOR_FIELDS):
        return TaskBatch(*(batch[name] for name in TENSOR_FIELDS))
    raise TypeError(f"Expected a TaskBatch or a dict with {', '.join(TENSOR_FIELDS)}, got "
                    f"{type(batch).__name__}.")
