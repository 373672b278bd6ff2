"""TorchOpt (Ren et al. 2023): ``MetaSGD`` per task with state extraction/recovery, its MAML example's
pattern; first order uses TorchOpt's functional SGD on detached gradients (``MetaSGD`` always keeps
the second-order graph)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call

from benchmarks._peers.workloads import Workload, loss_function

Batch = tuple[Tensor, Tensor, Tensor, Tensor]


def probe() -> tuple[str | None, str]:
    """TorchOpt's version, or None with the import error."""
    try:
        import torchopt
    except Exception as error:  # noqa: BLE001
        return None, f"not importable: {error}"
    return torchopt.__version__, "MetaSGD + extract/recover_state_dict"


def prepare(model: nn.Module, workload: Workload) -> Callable[[Batch], None]:
    """Second order: ``MetaSGD`` steps the module in place, restored after each task. First order:
    ``torchopt.sgd`` + ``apply_updates`` on gradients computed without a graph."""
    import torchopt

    loss_fn = loss_function(workload)
    if workload.first_order:
        sgd = torchopt.sgd(lr=workload.inner_lr)

        def first_order(batch: Batch) -> None:
            support_x, support_y, query_x, query_y = batch
            tasks = support_x.shape[0]
            names = [n for n, _ in model.named_parameters()]
            for t in range(tasks):
                params = tuple(model.parameters())
                state = sgd.init(params)
                for _ in range(workload.inner_steps):
                    out = functional_call(model, dict(zip(names, params)), (support_x[t],))
                    grads = torch.autograd.grad(loss_fn(out, support_y[t]), params)
                    updates, state = sgd.update(grads, state, inplace=False)
                    params = torchopt.apply_updates(params, updates, inplace=False)
                out = functional_call(model, dict(zip(names, params)), (query_x[t],))
                (loss_fn(out, query_y[t]) / tasks).backward()

        return first_order

    inner_opt = torchopt.MetaSGD(model, lr=workload.inner_lr)

    def second_order(batch: Batch) -> None:
        support_x, support_y, query_x, query_y = batch
        tasks = support_x.shape[0]
        net_state = torchopt.extract_state_dict(model, by="reference", detach_buffers=True)
        opt_state = torchopt.extract_state_dict(inner_opt, by="reference")
        for t in range(tasks):
            for _ in range(workload.inner_steps):
                inner_opt.step(loss_fn(model(support_x[t]), support_y[t]))
            (loss_fn(model(query_x[t]), query_y[t]) / tasks).backward()
            torchopt.recover_state_dict(model, net_state)
            torchopt.recover_state_dict(inner_opt, opt_state)

    return second_order
