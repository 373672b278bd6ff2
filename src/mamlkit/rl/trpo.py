"""Trust-region pieces of TRPO (Schulman et al. 2015) as used by MAML's outer loop.

Conjugate gradient solves ``H x = g`` with only Hessian-vector products of the KL; the step is
scaled so that the quadratic KL model equals ``max_kl``, then a backtracking line search
shrinks it until the surrogate improves and the true KL stays below ``max_kl``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class TRPOSettings:
    """Outer-loop hyperparameters; defaults are the MAML paper's (max KL 0.01) and
    ``pytorch-maml-rl``'s (10 CG iterations, backtracking ratio 0.8, 15 line-search steps)."""

    max_kl: float = 0.01
    cg_iters: int = 10
    cg_damping: float = 0.01
    ls_max_steps: int = 15
    ls_backtrack_ratio: float = 0.8

    def __post_init__(self) -> None:
        if self.max_kl <= 0:
            raise ValueError(f"max_kl must be > 0, got {self.max_kl}")
        if self.cg_iters < 1 or self.ls_max_steps < 1:
            raise ValueError(
                f"cg_iters and ls_max_steps must be >= 1, got {self.cg_iters}, {self.ls_max_steps}"
            )
        if self.cg_damping < 0:
            raise ValueError(f"cg_damping must be >= 0, got {self.cg_damping}")
        if not 0 < self.ls_backtrack_ratio < 1:
            raise ValueError(f"ls_backtrack_ratio must be in (0, 1), got {self.ls_backtrack_ratio}")


def conjugate_gradient(
    hvp: Callable[[Tensor], Tensor], b: Tensor, iters: int = 10, residual_tol: float = 1e-10
) -> tuple[Tensor, Tensor]:
    """Approximate solution ``x`` of ``H x = b`` for symmetric positive-definite ``H`` given as
    ``hvp``, and ``H x`` (``= b - residual``, so TRPO's step scaling needs no extra product)."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = torch.dot(r, r)
    for _ in range(iters):
        hp = hvp(p)
        alpha = rr / torch.dot(p, hp)
        x = x + alpha * p
        r = r - alpha * hp
        new_rr = torch.dot(r, r)
        if new_rr < residual_tol:
            break
        p = r + (new_rr / rr) * p
        rr = new_rr
    return x, b - r


@dataclass
class LineSearchResult:
    """Outcome of :func:`backtracking_line_search`: the accepted parameters (or the old ones),
    the fraction of the full step taken (0 if none was accepted), and the loss and KL there."""

    params: Tensor
    step_fraction: float
    loss: float
    kl: float
    tries: int


def backtracking_line_search(
    evaluate: Callable[[Tensor], tuple[float, float]],
    old_params: Tensor,
    full_step: Tensor,
    old_loss: float,
    settings: TRPOSettings,
) -> LineSearchResult:
    """Try ``old_params - f * full_step`` for ``f = 1, r, r^2, ...``; accept the first ``f``
    that lowers the loss and keeps the KL below ``max_kl``; otherwise keep ``old_params``."""
    fraction = 1.0
    for tries in range(1, settings.ls_max_steps + 1):
        candidate = old_params - fraction * full_step
        loss, kl = evaluate(candidate)
        if loss < old_loss and kl < settings.max_kl:
            return LineSearchResult(candidate, fraction, loss, kl, tries)
        fraction *= settings.ls_backtrack_ratio
    return LineSearchResult(old_params, 0.0, old_loss, 0.0, settings.ls_max_steps)
