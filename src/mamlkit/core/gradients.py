"""The inner loop's gradients: ``torch.func.grad`` under transforms, plain autograd outside."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import grad_and_value

from mamlkit.core.params import Params


def functorch_grad_and_value(loss_fn: Callable[[Params], Tensor], params: Params
                              ) -> tuple[Params, Tensor]:
    """Gradient of ``loss_fn`` at ``params`` (differentiable if grad mode is on), and the loss."""
    return grad_and_value(loss_fn)(params)


def autograd_grad_and_value(loss_fn: Callable[[Params], Tensor], params: Params
                             ) -> tuple[Params, Tensor]:
    """``functorch_grad_and_value`` with ``torch.autograd.grad`` (outside functorch transforms).

    The gradient keeps its graph to ``params`` when grad mode is on and a parameter requires grad
    (as ``torch.func.grad`` does); parameters that do not are differentiated as fresh leaves, and
    unused parameters get zero gradients.
    """
    create_graph = torch.is_grad_enabled() and any(p.requires_grad for p in params.values())
    with torch.enable_grad():
        inputs = {n: p if (create_graph and p.requires_grad) else p.detach().requires_grad_()
                  for n, p in params.items()}
        loss = loss_fn(inputs)
        grads = torch.autograd.grad(loss, list(inputs.values()), create_graph=create_graph,
                                    allow_unused=True, materialize_grads=True)
    return dict(zip(inputs, grads)), (loss if create_graph else loss.detach())
