"""An SGD inner loop whose gradients are partial derivatives, for algorithms whose adapted
variables are computed from the meta-parameters rather than being them.

CAVIA's context starts as a constant, ProtoMAML's head as a function of the body; each adapted
variable must still be differentiated as a variable of its own (the gradient of the support
loss with respect to the body, the head held fixed). ``torch.func.grad`` gives exactly that, and
keeps the graph to the meta-parameters (second order) under ``vmap``, in a per-task loop and in
evaluation alike; ``torch.autograd.grad`` would add the paths through the other variables.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from mamlkit.core.gradients import functorch_grad_and_value
from mamlkit.core.params import Params


def partial_sgd(learner: Any, shared: Params, fast: Params, support_x: Any, support_y: Any,
                steps: int, first_order: bool) -> tuple[list[Params], list[Tensor]]:
    """``steps`` updates of ``fast`` by ``learner.inner_update`` on the gradients of
    ``learner.support_loss`` with ``shared`` held fixed; returns the parameter dicts
    ``{**shared, **fast}`` after 0..``steps`` updates and the support loss before each (the
    contract of :meth:`~mamlkit.core.learner.MetaLearner.inner_loop`). Under ``first_order`` the
    gradients are constants (computed at detached values)."""
    fixed = {n: p.detach() for n, p in shared.items()} if first_order else shared

    def support_loss(variables: Params) -> Tensor:
        return learner.support_loss({**fixed, **variables}, support_x, support_y)

    trajectory, losses = [{**shared, **fast}], []
    for step in range(steps):
        start = {n: p.detach() for n, p in fast.items()} if first_order else fast
        grads, loss = functorch_grad_and_value(support_loss, start)
        fast = learner.inner_update(fast, grads, step)
        trajectory.append({**shared, **fast})
        losses.append(loss)
    return trajectory, losses
