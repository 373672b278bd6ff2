"""The benchmark workloads: one model, one meta-batch and one MAML configuration each.

Every implementation receives the same model (built from the same seed), the same tensors and the
same configuration, so their meta-gradients must agree and their timings compare like with like.
The configurations are those of Finn et al. (2017): sinusoid regression (Section 5.1) and
Omniglot few-shot classification with the four-block CNN (Section 5.2).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

try:  # the library's own networks when present; same architecture as the local copy below
    from mamlkit.models import omniglot_cnn as _library_cnn
    from mamlkit.models import sinusoid_mlp as _library_mlp
except ImportError:  # pragma: no cover - only for an older checkout
    _library_cnn = _library_mlp = None


@dataclass(frozen=True)
class Workload:
    """A MAML training step to time: model, task shapes and inner/outer optimisation settings."""

    name: str
    description: str
    model: str  # "mlp" or "cnn"
    tasks: int
    support: int  # examples per task in the support set
    query: int  # examples per task in the query set
    inner_lr: float
    inner_steps: int
    first_order: bool
    ways: int = 1  # classes (classification) or 1 (regression)
    meta_lr: float = 1e-3

    @property
    def loss(self) -> str:
        """``"mse"`` for the regression MLP, ``"cross_entropy"`` for the classifiers."""
        return "mse" if self.model == "mlp" else "cross_entropy"

    def with_tasks(self, tasks: int) -> Workload:
        """The same workload with another meta-batch size (for the scaling runs)."""
        return replace(self, name=f"{self.name}@{tasks}", tasks=tasks,
                       description=f"{self.description}; meta-batch of {tasks} tasks instead")


WORKLOADS: dict[str, Workload] = {
    "W1": Workload("W1", "sinusoid MLP 1-40-40-1, 25 tasks, 10+10 points, 1 step, 2nd order",
                   "mlp", tasks=25, support=10, query=10, inner_lr=0.01, inner_steps=1,
                   first_order=False),
    "W2": Workload("W2", "Omniglot CNN 5-way 1-shot, 32 tasks, 5+5 images, 1 step, 2nd order",
                   "cnn", tasks=32, support=5, query=5, inner_lr=0.4, inner_steps=1,
                   first_order=False, ways=5),
    "W2b": Workload("W2b", "as W2 with 15 query images per class (5+75 images)",
                    "cnn", tasks=32, support=5, query=75, inner_lr=0.4, inner_steps=1,
                    first_order=False, ways=5),
    "W3": Workload("W3", "as W2, first order", "cnn", tasks=32, support=5, query=5,
                   inner_lr=0.4, inner_steps=1, first_order=True, ways=5),
    "W4": Workload("W4", "Omniglot CNN 20-way 1-shot, 16 tasks, 20+20 images, 5 steps, 2nd order",
                   "cnn", tasks=16, support=20, query=20, inner_lr=0.1, inner_steps=5,
                   first_order=False, ways=20),
}
"""The named workloads; ``SCALING`` lists the meta-batch sizes of the scaling runs."""

SCALING = {"W1": (8, 32, 128), "W2": (8, 32, 128)}


def _local_cnn(ways: int) -> nn.Module:
    """MAML's Omniglot CNN (4 x [conv3x3 64, BatchNorm, ReLU, maxpool 2], linear), local copy."""
    layers: list[nn.Module] = []
    channels = 1
    for _ in range(4):
        layers += [nn.Conv2d(channels, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                   nn.MaxPool2d(2)]
        channels = 64
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(64, ways))


def build_model(workload: Workload, seed: int = 0) -> nn.Module:
    """The workload's network, initialised from ``seed`` (identical in every process)."""
    torch.manual_seed(seed)
    if workload.model == "mlp":
        if _library_mlp is not None:
            return _library_mlp()
        return nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(),
                             nn.Linear(40, 1))
    return _library_cnn(workload.ways) if _library_cnn is not None else _local_cnn(workload.ways)


def make_batch(workload: Workload, seed: int = 1) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``support_x, support_y, query_x, query_y`` with the task dimension first.

    The sinusoid tasks are real (amplitude in [0.1, 5], phase in [0, pi], x in [-5, 5]); the image
    tasks use random pixels with balanced labels, which times exactly like real images.
    """
    g = torch.Generator().manual_seed(seed)
    t, s, q = workload.tasks, workload.support, workload.query
    if workload.model == "mlp":
        amplitude = 0.1 + 4.9 * torch.rand(t, 1, 1, generator=g)
        phase = math.pi * torch.rand(t, 1, 1, generator=g)
        x = 10 * torch.rand(t, s + q, 1, generator=g) - 5
        y = amplitude * torch.sin(x - phase)
        return x[:, :s], y[:, :s], x[:, s:], y[:, s:]
    ways = workload.ways
    if s % ways or q % ways:
        raise ValueError(f"{workload.name}: support ({s}) and query ({q}) must be multiples of "
                         f"the {ways} ways.")
    support_x = torch.rand(t, s, 1, 28, 28, generator=g)
    query_x = torch.rand(t, q, 1, 28, 28, generator=g)
    support_y = torch.arange(ways).repeat_interleave(s // ways).expand(t, s).contiguous()
    query_y = torch.arange(ways).repeat_interleave(q // ways).expand(t, q).contiguous()
    return support_x, support_y, query_x, query_y


LossFn = Callable[[Tensor, Tensor], Tensor]


def loss_function(workload: Workload) -> LossFn:
    """The task loss shared by every implementation."""
    return nn.functional.mse_loss if workload.loss == "mse" else nn.functional.cross_entropy
