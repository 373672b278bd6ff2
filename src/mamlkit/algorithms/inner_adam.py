"""Adam as a functional inner-loop optimizer, its state fresh for every task.

Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015. Used by the algorithms
whose inner problem is solved by more than plain gradient steps (Reptile, iMAML). The update is
written with ordinary tensor operations on parameter dicts, so it runs under ``torch.func``
transforms and, where the caller keeps the graph, is differentiable.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from mamlkit.core.params import Params

INNER_OPTIMIZERS = ("sgd", "adam")
"""Inner-loop optimizers: plain gradient steps of ``inner_lr``, or Adam with fresh state."""

AdamMoments = tuple[Params, Params]
"""First and second moment estimates, one tensor per parameter."""


def check_inner_optimizer(name: str, betas: tuple[float, float], eps: float
                          ) -> tuple[float, float]:
    """Raise ``ValueError`` for an unknown optimizer name or invalid Adam settings; return the
    betas as floats."""
    if name not in INNER_OPTIMIZERS:
        raise ValueError(f"Unknown inner_optimizer {name!r}; choose one of {INNER_OPTIMIZERS}.")
    beta1, beta2 = betas
    if not (0 <= beta1 < 1 and 0 <= beta2 < 1) or not eps > 0:
        raise ValueError(f"adam_betas must lie in [0, 1) and adam_eps be > 0, got {betas}, {eps}.")
    return float(beta1), float(beta2)


def adam_moments(params: Params) -> AdamMoments:
    """Zero moment estimates for ``params`` (a task's fresh Adam state)."""
    return ({n: torch.zeros_like(p) for n, p in params.items()},
            {n: torch.zeros_like(p) for n, p in params.items()})


def adam_update(params: Params, grads: Params, moments: AdamMoments, step: int,
                lrs: Mapping[str, float | Tensor], betas: tuple[float, float], eps: float
                ) -> tuple[Params, AdamMoments]:
    """One Adam step (0-based ``step`` for the bias correction) on every parameter of ``params``;
    returns the new parameters and moment estimates."""
    beta1, beta2 = betas
    first = {n: beta1 * moments[0][n] + (1 - beta1) * g for n, g in grads.items()}
    second = {n: beta2 * moments[1][n] + (1 - beta2) * g * g for n, g in grads.items()}
    correction1, correction2 = 1 - beta1 ** (step + 1), 1 - beta2 ** (step + 1)
    updated = {n: v - lrs[n] * (first[n] / correction1) / ((second[n] / correction2).sqrt() + eps)
               for n, v in params.items()}
    return updated, (first, second)
