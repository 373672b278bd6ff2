"""Task batches through a ``torch.utils.data.DataLoader``.

A training framework moves what a ``DataLoader`` yields to the device and shards it over
processes. :class:`TaskDataset` is a map-style dataset of single tasks and :func:`collate_tasks`
stacks them into one :class:`~mamlkit.tasks.base.TaskBatch`, so ``DataLoader(TaskDataset(...),
batch_size=meta_batch, collate_fn=collate_tasks)`` yields meta-batches that Lightning moves with
``TaskBatch.to`` and that ``accelerator.prepare(loader)`` shards by index (each process collates
its own tasks; no batch size has to be found inside a ``TaskBatch``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

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
