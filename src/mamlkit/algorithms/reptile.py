"""Reptile: move the initialisation towards the weights that training on each task reaches.

Nichol, Achiam & Schulman, "On First-Order Meta-Learning Algorithms", arXiv:1803.02999, 2018.
For each task, start from ``theta``, take ``k`` optimizer steps on the task's data to reach
``phi``; the meta-update is ``theta <- theta + eps * mean_tasks(phi - theta)``.

We deliver ``mean(theta - phi)`` as the *gradient* of a surrogate loss, so that the driver's
backward and any torch optimizer apply it: with ``torch.optim.SGD(lr=eps)`` one optimizer step is
exactly the paper's (serial or batched) update, and Adam etc. give the usual variants. The inner
loop runs without a graph (Reptile needs no derivative through it), so memory does not grow with
``inner_steps``.

Which data the inner loop trains on: ``inner_data="support+query"`` (default) concatenates the
support and query sets, since Reptile has no separate outer evaluation and the paper trains on
all of a task's samples; ``inner_data="support"`` uses the support set only. At test time
(:meth:`~mamlkit.core.learner.MetaLearner.adapt`) adaptation always uses the support set alone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mamlkit.core.inner_optim import FixedRates, check_inner_optimizer, named_optimizer
from mamlkit.core.learner import MetaLearner, TaskOutput
from mamlkit.core.model_io import concat
from mamlkit.core.params import Params

INNER_DATA = ("support+query", "support")
"""What :class:`Reptile` trains on in the inner loop during meta-training."""


class Reptile(MetaLearner):
    """Reptile (Nichol et al., 2018) with an SGD or Adam inner loop, batched over tasks.

    Args:
        model: any ``nn.Module``.
        inner_optimizer: ``"sgd"`` (plain steps of ``inner_lr``) or ``"adam"`` (the paper's
            choice; its state starts fresh for every task).
        adam_betas: Adam's ``(beta1, beta2)``; the paper's code uses ``beta1 = 0``.
        adam_eps: Adam's epsilon.
        inner_data: see :data:`INNER_DATA` and the module docstring.
        **kwargs: the driver's arguments (:class:`~mamlkit.core.learner.MetaLearner`);
            ``first_order`` does not apply (Reptile has no derivative through the inner loop).

    The outer loss returned per task has the value of the adapted parameters' query loss and the
    gradient ``theta - phi``; use an outer SGD with ``lr = eps`` (the paper's outer step size)
    for the published update.
    """

    inner_checkpointable = False  # its inner problem is its own

    def __init__(self, model: nn.Module, *, inner_optimizer: str = "sgd",
                 adam_betas: tuple[float, float] = (0.0, 0.999), adam_eps: float = 1e-8,
                 inner_data: str = "support+query", **kwargs: Any) -> None:
        check_inner_optimizer(inner_optimizer, adam_betas, adam_eps)
        if inner_data not in INNER_DATA:
            raise ValueError(f"Unknown inner_data {inner_data!r}; choose one of {INNER_DATA}.")
        if kwargs.get("first_order"):
            raise ValueError("Reptile never differentiates through the inner loop; drop first_order.")
        super().__init__(model, **kwargs)
        self.inner_optimizer = named_optimizer(inner_optimizer, FixedRates(self.inner_lr),
                                               adam_betas, adam_eps)
        self.inner_data = inner_data

    def task_objective(self, params: Params, support_x: Any, support_y: Tensor, query_x: Any,
                       query_y: Tensor) -> TaskOutput:
        """Surrogate whose gradient w.r.t. ``theta`` is ``theta - phi`` and whose value is the
        adapted parameters' query loss."""
        if self.inner_data == "support+query":
            train_x, train_y = concat(support_x, query_x), concat(support_y, query_y)
        else:
            train_x, train_y = support_x, support_y
        start = {n: p.detach() for n, p in params.items()}
        trajectory, support_losses = self.inner_loop(start, train_x, train_y, self.inner_steps,
                                                     first_order=True)
        adapted = trajectory[-1]
        with torch.no_grad():
            query_loss, outputs = self.task_loss(adapted, query_x, query_y)
        surrogate = query_loss.detach()
        for name, theta in params.items():
            # theta - phi for adapted parameters; exactly zero for the others (phi = theta there).
            step = (start[name] - adapted[name]).detach()
            surrogate = surrogate + ((theta - theta.detach()) * step).sum()
        return surrogate, {}, self.query_metrics(query_loss, outputs, query_y, support_losses)
