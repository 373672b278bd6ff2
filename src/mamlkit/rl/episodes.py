"""Batched trajectories of a meta-batch: every tensor is ``[tasks, trajectories, horizon, ...]``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class Episodes:
    """Rollouts of one policy per task, padded to the horizon.

    ``masks[t, n, h]`` is 1 where step ``h`` of trajectory ``n`` of task ``t`` happened (0 after
    the episode terminated). ``log_probs`` are the sampling policy's log-probabilities of the
    actions. ``tasks`` holds the task dicts, one per leading index.
    """

    observations: Tensor
    actions: Tensor
    rewards: Tensor
    masks: Tensor
    log_probs: Tensor
    tasks: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        lead = tuple(self.rewards.shape)
        if len(lead) != 3:
            raise ValueError(f"rewards must be [tasks, trajectories, horizon], got {lead}")
        for name in ("observations", "actions"):
            shape = tuple(getattr(self, name).shape)
            if shape[:3] != lead or len(shape) != 4:
                raise ValueError(f"{name} must be [{lead}, dim], got {shape}")
        for name in ("masks", "log_probs"):
            if tuple(getattr(self, name).shape) != lead:
                raise ValueError(f"{name} must have shape {lead}, got {tuple(getattr(self, name).shape)}")
        if self.tasks and len(self.tasks) != lead[0]:
            raise ValueError(f"got {len(self.tasks)} task dicts for {lead[0]} tasks")

    @property
    def num_tasks(self) -> int:
        """Number of tasks (leading dim)."""
        return int(self.rewards.shape[0])

    @property
    def trajectories(self) -> int:
        """Trajectories per task."""
        return int(self.rewards.shape[1])

    @property
    def horizon(self) -> int:
        """Padded episode length."""
        return int(self.rewards.shape[2])

    def returns(self) -> Tensor:
        """Undiscounted return of each trajectory, ``[tasks, trajectories]``."""
        return (self.rewards * self.masks).sum(-1)

    def to(self, device: torch.device | str) -> Episodes:
        """The same episodes on ``device``."""
        return Episodes(
            self.observations.to(device),
            self.actions.to(device),
            self.rewards.to(device),
            self.masks.to(device),
            self.log_probs.to(device),
            list(self.tasks),
        )
