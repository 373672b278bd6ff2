"""Regression task families: the MAML paper's sinusoids and the introductory family of lines."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

from mamlkit.tasks.base import TaskBatch


class RegressionTasks(ABC):
    """A seeded distribution over 1-D regression tasks ``y = f_task(x)``.

    ``sample(num_tasks)`` draws a whole meta-batch at once as tensors ``[tasks, K, 1]``; the
    generator state can be saved and restored (``state_dict``) so that training resumes exactly.
    """

    def __init__(self, shots: int = 10, queries: int | None = None,
                 x_range: tuple[float, float] = (-5.0, 5.0), noise_std: float = 0.0,
                 seed: int = 0, device: torch.device | str = "cpu") -> None:
        if shots < 1:
            raise ValueError(f"shots must be >= 1 (points in each support set), got {shots}.")
        queries = shots if queries is None else queries
        if queries < 1:
            raise ValueError(f"queries must be >= 1 (points in each query set), got {queries}.")
        if not x_range[0] < x_range[1]:
            raise ValueError(f"x_range must be (low, high) with low < high, got {x_range}.")
        self.shots, self.queries = shots, queries
        self.x_range = x_range
        self.noise_std = noise_std
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)

    @abstractmethod
    def sample_parameters(self, num_tasks: int, generator: torch.Generator) -> dict[str, Tensor]:
        """Draw the parameters of ``num_tasks`` tasks (each a ``[tasks]`` tensor)."""

    @staticmethod
    @abstractmethod
    def function(x: Tensor, params: dict[str, Tensor]) -> Tensor:
        """The tasks' functions at ``x`` (``[tasks, n, 1]``), parameters broadcast per task."""

    def _uniform(self, shape: tuple[int, ...], low: float, high: float,
                 generator: torch.Generator) -> Tensor:
        return torch.rand(shape, generator=generator) * (high - low) + low

    def sample(self, num_tasks: int, generator: torch.Generator | None = None) -> TaskBatch:
        """A meta-batch of ``num_tasks`` tasks with ``shots`` support and ``queries`` query points."""
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}.")
        gen = self.generator if generator is None else generator
        params = self.sample_parameters(num_tasks, gen)
        n = self.shots + self.queries
        x = self._uniform((num_tasks, n, 1), *self.x_range, gen)
        y = self.function(x, params)
        if self.noise_std > 0:
            y = y + self.noise_std * torch.randn(y.shape, generator=gen)
        dev = self.device
        return TaskBatch(x[:, :self.shots].to(dev), y[:, :self.shots].to(dev),
                         x[:, self.shots:].to(dev), y[:, self.shots:].to(dev),
                         info={k: v.to(dev) for k, v in params.items()})

    def fixed_tasks(self, num_tasks: int, seed: int) -> TaskBatch:
        """The same ``num_tasks`` tasks for a given ``seed``, every time (held-out test sets)."""
        return self.sample(num_tasks, torch.Generator().manual_seed(seed))

    def state_dict(self) -> dict[str, Any]:
        """The sampler's random state, for exact resumption."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state saved by :meth:`state_dict`."""
        self.generator.set_state(state["generator"])


class Sinusoid(RegressionTasks):
    """Sinusoid regression (Finn et al. 2017, Section 5.1).

    ``y = A sin(x - phase)`` with amplitude ``A ~ U[0.1, 5.0]``, phase ``~ U[0, pi]`` and inputs
    ``x ~ U[-5, 5]``; K-shot support and query sets.
    """

    def __init__(self, shots: int = 10, queries: int | None = None,
                 amplitude: tuple[float, float] = (0.1, 5.0),
                 phase: tuple[float, float] = (0.0, math.pi), **kwargs: Any) -> None:
        super().__init__(shots, queries, **kwargs)
        self.amplitude, self.phase = amplitude, phase

    def sample_parameters(self, num_tasks: int, generator: torch.Generator) -> dict[str, Tensor]:
        """Amplitudes and phases, ``[tasks]`` each."""
        return {"amplitude": self._uniform((num_tasks,), *self.amplitude, generator),
                "phase": self._uniform((num_tasks,), *self.phase, generator)}

    @staticmethod
    def function(x: Tensor, params: dict[str, Tensor]) -> Tensor:
        """``A sin(x - phase)``."""
        return params["amplitude"].view(-1, 1, 1) * torch.sin(x - params["phase"].view(-1, 1, 1))


class Linear(RegressionTasks):
    """Lines ``y = slope * x + intercept``: meta-learn an initialisation that fits a new line from
    one or two points (the introductory example of meta-learning)."""

    def __init__(self, shots: int = 2, queries: int | None = 10,
                 slope: tuple[float, float] = (-3.0, 3.0),
                 intercept: tuple[float, float] = (-3.0, 3.0), **kwargs: Any) -> None:
        super().__init__(shots, queries, **kwargs)
        self.slope, self.intercept = slope, intercept

    def sample_parameters(self, num_tasks: int, generator: torch.Generator) -> dict[str, Tensor]:
        """Slopes and intercepts, ``[tasks]`` each."""
        return {"slope": self._uniform((num_tasks,), *self.slope, generator),
                "intercept": self._uniform((num_tasks,), *self.intercept, generator)}

    @staticmethod
    def function(x: Tensor, params: dict[str, Tensor]) -> Tensor:
        """``slope * x + intercept``."""
        return params["slope"].view(-1, 1, 1) * x + params["intercept"].view(-1, 1, 1)
