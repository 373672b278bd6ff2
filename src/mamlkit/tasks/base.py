"""The one container every domain hands to the engine: a batch of tasks."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor


@dataclass
class TaskBatch:
    """A meta-batch of tasks, each with a support set (to adapt on) and a query set (to score on).

    Every tensor has the task dimension first: ``support_x`` is ``[tasks, n_support, ...]``,
    ``support_y`` is ``[tasks, n_support, ...]``, likewise for the query set. ``info`` carries
    per-task metadata (for example the sinusoid's amplitude and phase, ``[tasks]`` each) that the
    engine never reads but plots and evaluations may.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_task_batch(self)

    @property
    def num_tasks(self) -> int:
        """Number of tasks in the meta-batch."""
        return int(self.support_x.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TaskBatch:
        """The same batch with every tensor moved to ``device``."""

        def move(v: Any) -> Any:
            return v.to(device, non_blocking=non_blocking) if isinstance(v, Tensor) else v

        return TaskBatch(
            **{f.name: move(getattr(self, f.name)) for f in fields(self) if f.name != "info"},
            info={k: move(v) for k, v in self.info.items()},
        )

    def task(self, i: int) -> TaskBatch:
        """Task ``i`` alone, as a batch of one."""
        sl = slice(i, i + 1)
        return self.slice(sl)

    def slice(self, sl: slice) -> TaskBatch:
        """The tasks selected by ``sl``, as a smaller batch (views, no copies)."""
        info = {
            k: v[sl] if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == self.num_tasks else v
            for k, v in self.info.items()
        }
        return TaskBatch(self.support_x[sl], self.support_y[sl], self.query_x[sl],
                         self.query_y[sl], info)


def validate_task_batch(batch: TaskBatch) -> None:
    """Raise ``ValueError`` naming the problem when a batch's shapes do not fit together."""
    names = ("support_x", "support_y", "query_x", "query_y")
    for name in names:
        value = getattr(batch, name)
        if not isinstance(value, Tensor):
            raise TypeError(f"TaskBatch.{name} must be a torch.Tensor, got {type(value).__name__}")
        if value.dim() < 2:
            raise ValueError(
                f"TaskBatch.{name} has shape {tuple(value.shape)}; expected [tasks, examples, ...]. "
                "Add the task dimension first (e.g. x.unsqueeze(0) for a single task)."
            )
    tasks = {name: getattr(batch, name).shape[0] for name in names}
    if len(set(tasks.values())) != 1:
        raise ValueError(f"TaskBatch tensors disagree on the number of tasks: {tasks}")
    for split in ("support", "query"):
        x, y = getattr(batch, f"{split}_x"), getattr(batch, f"{split}_y")
        if x.shape[1] != y.shape[1]:
            raise ValueError(
                f"{split}_x has {x.shape[1]} examples per task but {split}_y has {y.shape[1]}: "
                f"shapes {tuple(x.shape)} and {tuple(y.shape)}. Each input needs exactly one target."
            )
    if batch.support_x.shape[2:] != batch.query_x.shape[2:]:
        raise ValueError(
            f"support_x examples have shape {tuple(batch.support_x.shape[2:])} but query_x examples "
            f"have shape {tuple(batch.query_x.shape[2:])}: support and query must come from the "
            "same input space."
        )
    if batch.support_y.shape[2:] != batch.query_y.shape[2:]:
        raise ValueError(
            f"support_y targets have shape {tuple(batch.support_y.shape[2:])} but query_y targets "
            f"have shape {tuple(batch.query_y.shape[2:])}: support and query targets must match."
        )
