"""higher (Grefenstette et al. 2019): ``innerloop_ctx`` per task, its documented MAML pattern."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from benchmarks._peers.workloads import Workload, loss_function

Batch = tuple[Tensor, Tensor, Tensor, Tensor]


def probe() -> tuple[str | None, str]:
    """higher's version, or None with the import error."""
    try:
        import higher  # noqa: F401
    except Exception as error:  # noqa: BLE001 - any import failure means "not available"
        return None, f"not importable: {error}"
    from importlib.metadata import version

    return version("higher"), "innerloop_ctx + differentiable SGD"


def prepare(model: nn.Module, workload: Workload) -> Callable[[Batch], None]:
    """Per task a functional copy of the model and a differentiable SGD; first order detaches the
    inner gradients through ``grad_callback`` (higher's way to drop the second-order term)."""
    import higher

    loss_fn = loss_function(workload)
    inner_opt = torch.optim.SGD(model.parameters(), lr=workload.inner_lr)
    detach = (lambda grads: [g.detach() for g in grads]) if workload.first_order else None

    def meta_gradient(batch: Batch) -> None:
        support_x, support_y, query_x, query_y = batch
        tasks = support_x.shape[0]
        for t in range(tasks):
            with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fmodel, diffopt):
                for _ in range(workload.inner_steps):
                    diffopt.step(loss_fn(fmodel(support_x[t]), support_y[t]), grad_callback=detach)
                (loss_fn(fmodel(query_x[t]), query_y[t]) / tasks).backward()

    return meta_gradient
