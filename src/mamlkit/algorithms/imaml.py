"""iMAML: implicit meta-gradients of a proximally regularised inner problem.

Rajeswaran, Finn, Kakade & Levine, "Meta-Learning with Implicit Gradients", NeurIPS 2019.
Each task solves ``phi* = argmin_phi L_support(phi) + lambda/2 ||phi - theta||^2``. At a
stationary point, ``d phi* / d theta = (I + H / lambda)^-1`` with ``H`` the support-loss Hessian at
``phi*``, so the meta-gradient is ``(I + H / lambda)^-1 grad L_query(phi*)``. We solve that linear
system by conjugate gradient on Hessian-vector products (``torch.func.vjp`` of the support-loss
gradient, linearised once per task and reused for every CG iteration), and run the inner
optimisation without a graph: memory does not depend on the number of inner steps.

The implicit gradient ``g`` is handed to the driver through a surrogate whose value is the query
loss at ``phi*`` and whose gradient w.r.t. ``theta`` is ``g`` (``L(phi*) + sum((theta -
stop_grad(theta)) * stop_grad(g))``), so ``meta_loss(...).backward()`` and any optimizer apply it.

Parameters that do not adapt (``adapt=``) are exactly ``theta`` in the inner problem; their
implicit gradient ``dL_q/dw - (1/lambda) (d grad_phi L_s / dw)^T u`` (``u`` the CG solution) is
computed too, so a frozen body is meta-learned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import grad, grad_and_value, vjp

from mamlkit.core.inner_optim import FixedRates, Proximal, check_inner_optimizer, named_optimizer
from mamlkit.core.learner import MetaLearner, TaskOutput
from mamlkit.core.params import Params


def _dot(a: Params, b: Params) -> Tensor:
    return sum((a[n] * b[n]).sum() for n in a)


def conjugate_gradient(apply_a: Callable[[Params], Params], b: Params, steps: int,
                       tiny: float = 1e-30) -> Params:
    """Approximate ``A^-1 b`` for a symmetric positive definite ``A`` by ``steps`` CG iterations.

    A fixed number of iterations and guarded divisions (no data-dependent control flow), so it
    runs under ``torch.func.vmap``; once the residual is exactly zero the iterate stops moving.
    """
    x = {n: torch.zeros_like(v) for n, v in b.items()}
    r = dict(b)
    p = dict(b)
    rs = _dot(r, r)
    for _ in range(steps):
        ap = apply_a(p)
        pap = _dot(p, ap)
        ok = pap.abs() > tiny
        alpha = torch.where(ok, rs / torch.where(ok, pap, torch.ones_like(pap)), torch.zeros_like(pap))
        x = {n: x[n] + alpha * p[n] for n in x}
        r = {n: r[n] - alpha * ap[n] for n in r}
        rs_new = _dot(r, r)
        ok = rs > tiny
        beta = torch.where(ok, rs_new / torch.where(ok, rs, torch.ones_like(rs)), torch.zeros_like(rs))
        p = {n: r[n] + beta * p[n] for n in p}
        rs = rs_new
    return x


def stationarity_residual(support_gradient: Params, adapted: Params, anchor: Params,
                          regularization: float) -> Tensor:
    """How far ``adapted`` is from solving the proximal inner problem, relative to its terms.

    ``||g + lambda (phi - theta)|| / (||g|| + lambda ||phi - theta||)`` with ``g`` the support-loss
    gradient at ``phi``: 0 at the exact solution (where the implicit gradient is exact), 1 at
    ``phi = theta`` (no progress). The implicit meta-gradient assumes a value near 0; if it
    stays large, the inner problem needs more ``inner_steps`` (or a larger ``inner_lr``).
    """
    pulls = {n: regularization * (adapted[n] - anchor[n]) for n in support_gradient}
    residual = _dot({n: g + pulls[n] for n, g in support_gradient.items()},
                    {n: g + pulls[n] for n, g in support_gradient.items()})
    gradient_sq = _dot(support_gradient, support_gradient)
    pull_sq = _dot(pulls, pulls)
    scale = gradient_sq.sqrt() + pull_sq.sqrt()
    return residual.sqrt() / torch.clamp(scale, min=torch.finfo(scale.dtype).tiny)


class IMAML(MetaLearner):
    """Implicit MAML (Rajeswaran et al., NeurIPS 2019).

    Args:
        model: any ``nn.Module``.
        regularization: ``lambda``, the strength of the proximal term tying ``phi`` to ``theta``
            (the paper uses 0.5 to 2 for Omniglot/MiniImageNet); larger keeps ``phi`` closer.
        cg_steps: conjugate-gradient iterations for the implicit gradient (paper: 5).
        inner_optimizer: how the inner problem is solved, ``inner_steps`` steps of size
            ``inner_lr`` (also at test time, with the same proximal term): ``"sgd"`` (gradient
            descent) or ``"adam"`` (Adam with fresh state per task; its step does not grow with
            the support loss's curvature, which meta-training tends to increase until a fixed
            gradient-descent step no longer converges).
        adam_betas: Adam's ``(beta1, beta2)`` for ``inner_optimizer="adam"``.
        adam_eps: Adam's epsilon.
        **kwargs: the driver's arguments (:class:`~mamlkit.core.learner.MetaLearner`);
            ``first_order`` does not apply.

    The metric ``inner_residual`` (:func:`stationarity_residual`) tells how well the inner
    problem was solved; the implicit gradient is exact only where it is 0.
    """

    inner_checkpointable = False  # its inner problem is its own

    def __init__(self, model: nn.Module, *, regularization: float = 1.0, cg_steps: int = 5,
                 inner_optimizer: str = "sgd", adam_betas: tuple[float, float] = (0.9, 0.999),
                 adam_eps: float = 1e-8, **kwargs: Any) -> None:
        if not isinstance(regularization, (int, float)) or not regularization > 0:
            raise ValueError(f"regularization (lambda) must be a positive number, got {regularization!r}; "
                             "the implicit gradient needs a proximal term (e.g. regularization=1.0).")
        if not isinstance(cg_steps, int) or isinstance(cg_steps, bool) or cg_steps < 1:
            raise ValueError(f"cg_steps must be a positive integer, got {cg_steps!r} (the paper uses 5).")
        if kwargs.get("first_order"):
            raise ValueError("iMAML's meta-gradient is implicit, never unrolled; drop first_order.")
        check_inner_optimizer(inner_optimizer, adam_betas, adam_eps)
        super().__init__(model, **kwargs)
        if getattr(self.support_objective, "at_start", False):
            raise ValueError("iMAML's implicit gradient sees the inner solution only through its "
                             "proximal term, not through weights taken at the initialisation; use "
                             "support_weights='prototype' with iMAML.")
        self.regularization = float(regularization)
        self.cg_steps = cg_steps
        self.inner_optimizer = Proximal(named_optimizer(inner_optimizer, FixedRates(self.inner_lr),
                                                        adam_betas, adam_eps), regularization)

    # ------------------------------------------------------------------ the inner problem
    def _proximal_steps(self, params: Params, support_x: Any, support_y: Tensor, steps: int,
                        keep: bool) -> tuple[list[Params], list[Tensor]]:
        """The inner loop on the proximal problem; only the first and last step unless ``keep``;
        differentiable where ``params`` carry a graph (no graph is built for detached ones)."""
        unrolled = any(p.requires_grad for p in params.values())
        result = self.run_inner_loop(params, support_x, support_y, steps,
                                     first_order=not unrolled, keep_all=keep)
        return result.trajectory, result.losses

    def inner_loop(self, params: Params, support_x: Any, support_y: Tensor, steps: int,
                   first_order: bool) -> tuple[list[Params], list[Tensor]]:
        """``inner_optimizer`` on the proximally regularised support loss (anchored at ``params``,
        :class:`~mamlkit.core.inner_optim.Proximal`).

        The returned losses are the plain support losses (without the proximal term).
        """
        if first_order:
            params = {n: p.detach() for n, p in params.items()}
        return self._proximal_steps(params, support_x, support_y, steps, keep=True)

    # ------------------------------------------------------------------ the implicit gradient
    def implicit_gradient(self, adapted: Params, support_x: Any, support_y: Tensor, query_x: Any,
                          query_y: Tensor, anchor: Params | None = None
                          ) -> tuple[Params, Tensor, Tensor, Tensor]:
        """Implicit meta-gradient of the query loss at the inner solution ``adapted`` (no graph).

        Returns the gradient for every parameter, the query loss, the model outputs and the
        relative stationarity residual of the inner problem (:func:`stationarity_residual`, with
        ``anchor`` the meta-parameters ``theta``; NaN when ``anchor`` is not given).
        """
        fast = {n: adapted[n].detach() for n in self.adapted_names}
        frozen = {n: p.detach() for n, p in adapted.items() if n not in self.adapted_names}
        lam = self.regularization

        def query_loss(fast_params: Params, frozen_params: Params) -> tuple[Tensor, Tensor]:
            loss, outputs = self.task_loss({**frozen_params, **fast_params}, query_x, query_y)
            return loss, outputs

        (grad_fast, grad_frozen), (loss, outputs) = grad_and_value(
            query_loss, argnums=(0, 1), has_aux=True)(fast, frozen)

        def support_grad(fast_params: Params, frozen_params: Params) -> Params:
            return grad(lambda f: self.support_loss({**frozen_params, **f}, support_x, support_y))(
                fast_params)

        support_gradient, hessian_vjp = vjp(lambda f: support_grad(f, frozen), fast)
        if anchor is None:
            residual = torch.full((), float("nan"))
        else:
            residual = stationarity_residual(support_gradient, fast,
                                             {n: anchor[n].detach() for n in fast}, lam)

        def apply_a(v: Params) -> Params:
            hv = hessian_vjp(v)[0]
            return {n: v[n] + hv[n] / lam for n in v}

        solution = conjugate_gradient(apply_a, grad_fast, self.cg_steps)
        gradient = {n: solution[n].detach() for n in solution}
        if frozen:
            _, mixed_vjp = vjp(lambda w: support_grad(fast, w), frozen)
            mixed = mixed_vjp(solution)[0]
            gradient.update({n: (grad_frozen[n] - mixed[n] / lam).detach() for n in frozen})
        return gradient, loss.detach(), outputs.detach(), residual.detach()

    def task_objective(self, params: Params, support_x: Any, support_y: Tensor, query_x: Any,
                       query_y: Tensor) -> TaskOutput:
        """Surrogate with the query loss's value and the implicit meta-gradient."""
        start = {n: p.detach() for n, p in params.items()}
        trajectory, support_losses = self._proximal_steps(start, support_x, support_y, self.inner_steps,
                                                          keep=False)
        gradient, loss, outputs, residual = self.implicit_gradient(
            trajectory[-1], support_x, support_y, query_x, query_y, anchor=start)
        surrogate = loss
        for name, theta in params.items():
            surrogate = surrogate + ((theta - theta.detach()) * gradient[name]).sum()
        metrics = self.query_metrics(loss, outputs, query_y, support_losses)
        metrics["inner_residual"] = residual
        return surrogate, {}, metrics
