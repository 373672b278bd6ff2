"""The inner loop: gradient steps of an inner optimizer on a task's loss, the one implementation
every algorithm (and MAML-TRPO's policy adaptation) runs.

Two fast paths apply to every caller:

- outside any ``torch.func`` transform (the per-task loop, test-time adaptation, RL) the
  gradients come from ``torch.autograd.grad``, which skips functorch's wrapping of every tensor
  (same values);
- first order (FOMAML, Reptile, evaluation) differentiates detached parameters, so no graph of the
  inner backward pass is recorded at all (the same constants as detaching the gradients after a
  differentiable step, at the cost of a plain backward pass).

Otherwise the steps keep the graph back to the starting parameters (and to learned rates), so
the outer loss differentiates through them (second-order MAML).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.func import grad_and_value

from mamlkit.core.inner_optim import InnerOptimizer
from mamlkit.core.params import Params
from mamlkit.core.transforms import plain_autograd_available

StepLoss = Callable[[Params, int], tuple[Tensor, Any]]
"""``(adapted parameters, step) -> (loss, auxiliary)``: the inner loss at a step; the auxiliary
value (a pytree of tensors, ``{}`` for none) travels back untouched, e.g. batch statistics of
that forward pass."""

Update = Callable[[Params, Any, Params, int], tuple[Params, Any]]
"""``(grads, state, params, step) -> (params, state)``, an :class:`InnerOptimizer`'s update."""


def loss_gradient(loss_fn: Callable[[Params], tuple[Tensor, Any]], params: Params,
                  create_graph: bool) -> tuple[Params, Tensor, Any]:
    """Gradient of ``loss_fn(params)[0]`` at ``params``, the loss and the auxiliary value.

    ``create_graph``: keep the graph of the gradient (to ``params`` and to whatever else the
    loss depends on, such as meta-parameters outside ``params``). Under a ``torch.func``
    transform or while compiling this is ``torch.func.grad_and_value`` (which follows its
    inputs); otherwise ``torch.autograd.grad``, where parameters without a graph are
    differentiated as fresh leaves, the others through a view of their own (partial
    derivatives, as under the transform), and unused ones get zeros.
    """
    if not plain_autograd_available():
        grads, (loss, aux) = grad_and_value(loss_fn, has_aux=True)(params)
        return grads, loss, aux
    with torch.enable_grad():
        # A differentiable input enters as a view of its own, so its gradient is the partial
        # derivative (the other inputs held fixed) even when another input was computed from it
        # (ProtoMAML's head from the body), as torch.func.grad_and_value gives under transforms.
        inputs = {n: p.view_as(p) if (create_graph and p.requires_grad)
                  else p.detach().requires_grad_() for n, p in params.items()}
        loss, aux = loss_fn(inputs)
        grads = torch.autograd.grad(loss, list(inputs.values()), create_graph=create_graph,
                                    allow_unused=True, materialize_grads=True)
    return dict(zip(inputs, grads)), (loss if create_graph else loss.detach()), aux


@dataclass
class InnerProblem:
    """One task's inner problem, as an algorithm states it (:meth:`MetaLearner.inner_problem`).

    ``start``: the adapted state at step 0 (the adapted meta-parameters, a head initialised from
    prototypes, fresh context parameters...); ``loss(fast, step) -> (loss, aux)``: the support
    loss of an adapted state; ``assemble(fast, step)``: every parameter the model runs with after
    ``step`` updates (default: ``fast`` alone).
    """

    start: Params
    loss: StepLoss
    assemble: Callable[[Params, int], Params] = lambda fast, step: fast


@dataclass
class InnerResult:
    """What :func:`inner_loop` returns: the assembled parameters after 0, 1, ..., ``steps``
    updates (only the first and the last without ``keep_all``), the loss before each update,
    and each step's auxiliary value."""

    trajectory: list[Params]
    losses: list[Tensor] = field(default_factory=list)
    aux: list[Any] = field(default_factory=list)


def inner_step(loss_fn: Callable[[Params], tuple[Tensor, Any]], fast: Params, state: Any,
               update: Update, step: int, first_order: bool
               ) -> tuple[Params, Any, Params, Tensor, Any]:
    """One update: gradient of ``loss_fn`` at ``fast`` (constants under ``first_order``; else
    differentiable while grad mode is on), then ``update``. Returns the new parameters and
    state, the gradients, the loss and its aux."""
    at = {n: p.detach() for n, p in fast.items()} if first_order else fast
    grads, loss, aux = loss_gradient(loss_fn, at, not first_order and torch.is_grad_enabled())
    fast, state = update(grads, state, fast, step)
    return fast, state, grads, loss, aux


def inner_loop(problem: InnerProblem, optimizer: InnerOptimizer, steps: int, first_order: bool,
               update: Update | None = None, keep_all: bool = True) -> InnerResult:
    """Adapt ``problem.start`` by ``steps`` updates of ``optimizer`` (its state fresh).

    ``first_order``: the gradients are constants (computed on detached parameters, no graph of
    the inner backward pass). ``update`` replaces ``optimizer.update`` (the learner routes a
    stateless rule through its ``inner_update`` method).
    """
    update = optimizer.update if update is None else update
    fast = problem.start
    state = optimizer.init(fast)
    result = InnerResult([problem.assemble(fast, 0)])
    for step in range(steps):
        fast, state, _, loss, aux = inner_step(lambda p, step=step: problem.loss(p, step), fast,
                                               state, update, step, first_order)
        if keep_all or step == steps - 1:
            result.trajectory.append(problem.assemble(fast, step + 1))
        result.losses.append(loss)
        result.aux.append(aux)
    return result
