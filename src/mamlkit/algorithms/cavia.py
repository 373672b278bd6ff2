"""CAVIA: Fast Context Adaptation via Meta-Learning.

Zintgraf, Shiarlis, Kurin, Hofmann & Whiteson, ICML 2019. The inner loop adapts only a small
context vector that is not one of the model's parameters: it starts at zero for every task, is
fed to the model as an extra input, and takes ``inner_steps`` gradient steps on the support loss.
The model's own parameters are shared by all tasks and meta-learned in the outer loop only,
through the adapted context (second order unless ``first_order``).

How the context reaches the model:

- by default it is concatenated to the input along dimension 1, broadcast over the other
  dimensions: ``[examples, features]`` becomes ``[examples, features + context_dim]`` (the
  paper's regression network), ``[examples, channels, H, W]`` gains ``context_dim`` constant
  channels. Build the model with that many extra inputs.
- ``context_forward(model, x, context) -> outputs`` calls the model any other way, e.g. FiLM
  layers computed from the context (the paper's image classifier); it runs with the meta-learned
  (or adapted) parameters swapped into ``model``.

Within the learner's parameter dicts (the trajectory of :meth:`CAVIA.inner_loop`, what
:meth:`~mamlkit.core.learner.MetaLearner.adapt` returns) the context is the entry
:data:`CONTEXT`; ``predict(params, x)`` feeds it to the model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mamlkit.core.inner_loop import InnerProblem
from mamlkit.core.inner_optim import SGD, FixedRates
from mamlkit.core.learner import MetaLearner
from mamlkit.core.params import Params

CONTEXT = "context"
"""The key of the context vector in CAVIA's parameter dicts (never a model parameter's name)."""

ContextForward = Callable[[nn.Module, Any, Tensor], Any]
"""``context_forward(model, x, context) -> outputs`` for one task's inputs and its context."""


def concat_context(x: Tensor, context: Tensor) -> Tensor:
    """``x`` ``[examples, features, ...]`` with ``context`` appended along dimension 1 (the same
    for every example and position)."""
    if not isinstance(x, Tensor) or x.dim() < 2 or not x.is_floating_point():
        got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"CAVIA concatenates the context to floating-point inputs [examples, "
                         f"features, ...], got {got}; pass context_forward=(model, x, context) -> "
                         "outputs for other inputs (token ids, dicts).")
    shape = (x.shape[0], context.shape[0], *x.shape[2:])
    extra = context.to(x.dtype).reshape(1, -1, *([1] * (x.dim() - 2))).expand(shape)
    return torch.cat([x, extra], dim=1)


class CAVIA(MetaLearner):
    """CAVIA (Zintgraf et al., ICML 2019): adapt a per-task context input, not the model.

    Args:
        model: any ``nn.Module`` that takes the context (see the module docstring).
        context_dim: size of the context vector (the paper: 5 for regression, 100 for images).
        context_forward: how the model receives the context; default: concatenated to the
            input along dimension 1.
        inner_lr: the context's inner learning rate (a float; the paper uses 1.0).
        **kwargs: the driver's arguments (:class:`~mamlkit.core.learner.MetaLearner`), except
            ``adapt`` (only the context adapts).
    """

    inner_checkpointable = False  # its inner problem is its own

    adapts_model = False  # only the context adapts; the model is meta-learned in the outer loop

    default_context_dim: int = 5
    """The context size when none is given (the paper's for regression): the number of extra
    inputs a network built for CAVIA by an experiment takes."""

    def __init__(self, model: nn.Module, *, context_dim: int = default_context_dim,
                 context_forward: ContextForward | None = None, inner_lr: float = 1.0,
                 **kwargs: Any) -> None:
        if "adapt" in kwargs:
            raise ValueError("CAVIA adapts only its context vector; the model's parameters are "
                             "meta-learned in the outer loop. Drop adapt=.")
        if not isinstance(context_dim, int) or isinstance(context_dim, bool) or context_dim < 1:
            raise ValueError(f"context_dim must be a positive integer, got {context_dim!r}.")
        if isinstance(inner_lr, Mapping):
            raise ValueError("CAVIA has one inner learning rate, the context's; pass a float.")
        if context_forward is not None and kwargs.get("forward") is not None:
            raise ValueError("Pass either forward= or context_forward= to CAVIA, not both: "
                             "context_forward(model, x, context) calls the model.")
        if context_forward is not None:
            kwargs["forward"] = lambda module, packed: context_forward(module, *packed)
        super().__init__(model, inner_lr=inner_lr, **kwargs)
        self.context_dim = context_dim
        self.context_lr = float(inner_lr)
        self.context_forward = context_forward
        self.inner_optimizer = SGD(FixedRates({CONTEXT: self.context_lr}))

    def initial_context(self, like: Params) -> Tensor:
        """The context every task starts from: zeros, in the dtype and device of the model."""
        reference = next(iter(like.values()))
        return torch.zeros(self.context_dim, dtype=reference.dtype, device=reference.device)

    def functional_forward(self, params: Params, x: Any, buffers: Params | None = None) -> Any:
        """The model on ``x`` with ``params``, fed their :data:`CONTEXT` (zeros if absent)."""
        model_params = {n: p for n, p in params.items() if n != CONTEXT}
        context = params[CONTEXT] if CONTEXT in params else self.initial_context(model_params)
        inputs = concat_context(x, context) if self.context_forward is None else (x, context)
        return super().functional_forward(model_params, inputs, buffers)

    def inner_problem(self, params: Params, support_x: Any, support_y: Tensor,
                      first_order: bool) -> InnerProblem:
        """Adapt the context (from zeros, or from ``params[CONTEXT]``) on the support loss; the
        model's parameters stay as given (detached inside the inner loss under first order)."""
        model_params = {n: p for n, p in params.items() if n != CONTEXT}
        context = params[CONTEXT] if CONTEXT in params else self.initial_context(model_params)
        fixed = {n: p.detach() for n, p in model_params.items()} if first_order else model_params
        weights = self.start_weights({**model_params, CONTEXT: context}, support_x, support_y,
                                     first_order)

        def loss(fast: Params, step: int) -> tuple[Tensor, dict]:
            return self.support_loss({**fixed, **fast}, support_x, support_y, weights), {}

        return InnerProblem(start={CONTEXT: context}, loss=loss,
                            assemble=lambda fast, step: {**model_params, **fast})
