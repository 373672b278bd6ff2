"""The reference: a per-task loop with ``torch.autograd.grad`` and ``functional_call``, no library."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call

from benchmarks._peers.workloads import Workload, loss_function

Batch = tuple[Tensor, Tensor, Tensor, Tensor]


def probe() -> tuple[str | None, str]:
    """Always available (plain PyTorch)."""
    return torch.__version__, "torch.autograd.grad per task"


def prepare(model: nn.Module, workload: Workload) -> Callable[[Batch], None]:
    """Per task: inner SGD steps on the support set (graph kept unless first order), then the
    query loss divided by the number of tasks is backpropagated at once (frees the task's graph)."""
    loss_fn = loss_function(workload)

    def meta_gradient(batch: Batch) -> None:
        support_x, support_y, query_x, query_y = batch
        tasks = support_x.shape[0]
        for t in range(tasks):
            fast = dict(model.named_parameters())
            for _ in range(workload.inner_steps):
                loss = loss_fn(functional_call(model, fast, (support_x[t],)), support_y[t])
                grads = torch.autograd.grad(loss, list(fast.values()),
                                            create_graph=not workload.first_order)
                fast = {n: p - workload.inner_lr * g for (n, p), g in zip(fast.items(), grads)}
            query_loss = loss_fn(functional_call(model, fast, (query_x[t],)), query_y[t])
            (query_loss / tasks).backward()

    return meta_gradient
