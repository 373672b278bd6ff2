"""The outer TRPO problem of one MAML-TRPO meta-batch: the inner policy-gradient steps with what
later products need, and :class:`MetaObjective`, the surrogate's gradient and the
KL-Hessian-vector products ``J^T F J v`` through the inner steps (see :mod:`mamlkit.rl.maml_trpo`
for why these products are exact and cheap).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mamlkit.core.inner_loop import inner_step
from mamlkit.core.inner_optim import SGD, FixedRates
from mamlkit.rl.episodes import Episodes
from mamlkit.rl.losses import episode_distribution, reinforce_loss, surrogate_and_kl, surrogate_terms
from mamlkit.rl.mlp_curvature import GaussianFisher, InnerLossCurvature, Layers
from mamlkit.rl.policy import Params, expand_params

Grads = tuple[Tensor, ...]


def flat_inputs(episodes: Episodes) -> tuple[Tensor, Tensor]:
    """Observations and actions as ``[tasks, trajectories * horizon, dim]``."""
    tasks = episodes.num_tasks
    return (episodes.observations.reshape(tasks, -1, episodes.observations.shape[-1]),
            episodes.actions.reshape(tasks, -1, episodes.actions.shape[-1]))


def step_weights(episodes: Episodes) -> Tensor:
    """``mask / count`` per step, ``[tasks, trajectories * horizon]`` (a per-task masked mean)."""
    masks = episodes.masks.reshape(episodes.num_tasks, -1)
    return masks / masks.sum(1, keepdim=True).clamp_min(1.0)


@dataclass
class InnerStep:
    """One inner policy-gradient step of a meta-batch: the data it used and, when second order,
    the leaf per-task parameters and the inner gradients with their graph (for ``H_k v``), or
    the closed-form curvature of the inner loss when the policy is a plain ReLU MLP."""

    episodes: Episodes
    advantages: Tensor
    leaf: Params
    grads: Grads
    curvature: InnerLossCurvature | None = None


def _grad(outputs: Tensor | Grads, inputs: list[Tensor], **kwargs: Any) -> Grads:
    grads = torch.autograd.grad(outputs, inputs, allow_unused=True, **kwargs)
    return tuple(torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads))


def inner_update(
    policy: nn.Module,
    params: Params,
    episodes: Episodes,
    advantages: Tensor,
    inner_lr: float,
    create_graph: bool,
) -> tuple[Params, Grads]:
    """One per-task policy-gradient step ``params - inner_lr * grad`` (a step of the package's
    inner loop, :func:`mamlkit.core.inner_loop.inner_step`, with SGD); returns the new params
    and the gradients. With ``create_graph`` the result stays differentiable in ``params``;
    without, the gradient is a constant and no graph of its backward pass is recorded."""

    def loss(p: Params) -> tuple[Tensor, dict]:
        return reinforce_loss(policy, p, episodes, advantages).sum(), {}

    sgd = SGD(FixedRates(dict.fromkeys(params, inner_lr)))
    new, _, grads, _, _ = inner_step(loss, params, (), sgd.update, 0, first_order=not create_graph)
    return new, tuple(grads[name] for name in params)


class MetaObjective:
    """The outer TRPO problem of one sampled meta-batch around meta-parameters ``theta``.

    Built from the inner steps (with their graphs or closed-form curvature; ``layers`` selects
    the closed-form Fisher too) and the post-adaptation ``valid`` episodes (sampled with
    ``adapted``, recomputed when not given);
    gives the surrogate's value and gradient, KL-Hessian-vector products through the inner
    steps, and the surrogate/KL of any other meta-parameters (re-adapted on the same data).
    """

    def __init__(
        self,
        policy: nn.Module,
        theta: Params,
        inner: list[InnerStep],
        valid: Episodes,
        valid_advantages: Tensor,
        inner_lr: float,
        second_order: bool,
        layers: Layers | None = None,
        adapted: Params | None = None,
    ) -> None:
        self.policy = policy
        self.layers = layers
        self.names = list(theta)
        self.shapes = [theta[n].shape for n in self.names]
        self.theta = {n: theta[n].detach() for n in self.names}
        self.inner = inner
        self.valid = valid
        self.valid_advantages = valid_advantages
        self.inner_lr = inner_lr
        self.second_order = second_order
        self.num_tasks = valid.num_tasks
        if adapted is None:
            adapted = self._adapt_without_graph(self.theta)
        self.adapted = {n: adapted[n].detach().requires_grad_() for n in self.names}
        mean, log_std = episode_distribution(policy, self.adapted, valid)
        self.old_mean, self.old_log_std = mean.detach(), log_std.detach()
        surrogate, _ = surrogate_terms(
            mean, log_std, self.old_mean, self.old_log_std, valid, valid_advantages
        )
        self.loss = float(surrogate.mean().detach())
        # Fisher of the diagonal Gaussian: KL(old || new) has Hessian 1/sigma^2 in the mean and
        # 2 in the log std (no cross term) per valid step; weights average over steps and tasks.
        weights = step_weights(valid) / self.num_tasks
        if layers is not None:
            observations, _ = flat_inputs(valid)
            self._fisher = GaussianFisher(layers, self._detached_adapted(), observations, weights)
        else:
            self._fisher = None
            shaped = weights.view(valid.masks.shape).unsqueeze(-1)
            self._mean_weights = shaped * torch.exp(-2.0 * self.old_log_std)
            self._log_std_weights = 2.0 * shaped
            self._outputs_at = lambda p: episode_distribution(policy, p, valid)
            _, self._outputs_vjp = torch.func.vjp(self._outputs_at, self._detached_adapted())
        outer_grads = _grad(surrogate.mean(), list(self.adapted.values()))
        self.gradient = self._to_flat(self._jacobian_transpose(outer_grads))

    def _detached_adapted(self) -> Params:
        return {n: p.detach() for n, p in self.adapted.items()}

    def fisher_vector_product(self, vectors: Grads) -> Grads:
        """Per-task ``F w``: the KL Hessian at the adapted parameters times per-task ``w``."""
        tangents = dict(zip(self.names, vectors))
        if self._fisher is not None:
            products = self._fisher.fvp(tangents)
            return tuple(products[n] for n in self.names)
        _, (d_mean, d_log_std) = torch.func.jvp(
            self._outputs_at, (self._detached_adapted(),), (tangents,)
        )
        (products,) = self._outputs_vjp((d_mean * self._mean_weights, d_log_std * self._log_std_weights))
        return tuple(products[n] for n in self.names)

    # --- flat <-> per-task -----------------------------------------------------------------
    def _to_flat(self, per_task: Grads) -> Tensor:
        return torch.cat([g.sum(0).reshape(-1) for g in per_task])

    def _to_per_task(self, flat: Tensor) -> Grads:
        out, start = [], 0
        for shape in self.shapes:
            size = int(np.prod(shape)) if len(shape) else 1
            piece = flat[start : start + size].view(shape)
            out.append(piece.unsqueeze(0).expand(self.num_tasks, *shape))
            start += size
        return tuple(out)

    def flat_theta(self) -> Tensor:
        """The meta-parameters as one flat vector (the space CG and the line search work in)."""
        return torch.cat([self.theta[n].reshape(-1) for n in self.names])

    def unflatten(self, flat: Tensor) -> Params:
        """A flat vector back to a name -> tensor dict shaped like the meta-parameters."""
        out, start = {}, 0
        for name, shape in zip(self.names, self.shapes):
            size = int(np.prod(shape)) if len(shape) else 1
            out[name] = flat[start : start + size].view(shape)
            start += size
        return out

    # --- products through the inner steps ----------------------------------------------------
    def _inner_hvp(self, step: InnerStep, vectors: Grads) -> Grads:
        if step.curvature is not None:
            products = step.curvature.hvp(dict(zip(self.names, vectors)))
            return tuple(products[n] for n in self.names)
        return _grad(step.grads, list(step.leaf.values()), grad_outputs=vectors, retain_graph=True)

    def _through_step(self, step: InnerStep, vectors: Grads) -> Grads:
        hv = self._inner_hvp(step, vectors)
        return tuple(v - self.inner_lr * h for v, h in zip(vectors, hv))

    def _jacobian(self, vectors: Grads) -> Grads:
        if self.second_order:
            for step in self.inner:
                vectors = self._through_step(step, vectors)
        return vectors

    def _jacobian_transpose(self, vectors: Grads) -> Grads:
        if self.second_order:
            for step in reversed(self.inner):
                vectors = self._through_step(step, vectors)
        return vectors

    def hvp(self, vector: Tensor, damping: float = 0.0) -> Tensor:
        """``(d^2 KL / d theta^2) v + damping * v`` for a flat ``v`` (``J^T F J v``, exact here)."""
        jv = self._jacobian(self._to_per_task(vector))
        fjv = self.fisher_vector_product(jv)
        return self._to_flat(self._jacobian_transpose(fjv)) + damping * vector

    def reference_hvp_fn(self) -> Callable[[Tensor, float], Tensor]:
        """The straightforward HVP, for checks and speed comparison: build the KL as a function
        of ``theta`` through the differentiable inner steps once, keep its gradient's graph, and
        differentiate ``grad KL . v`` again for each ``v`` (third order through the inner step)."""
        theta = {n: p.detach().clone().requires_grad_() for n, p in self.theta.items()}
        adapted = self.adapt_with_graph(theta)
        mean, log_std = episode_distribution(self.policy, adapted, self.valid)
        _, kl = surrogate_terms(
            mean, log_std, self.old_mean, self.old_log_std, self.valid, self.valid_advantages
        )
        leaves = list(theta.values())
        kl_grads = _grad(kl.mean(), leaves, create_graph=True)

        def product(vector: Tensor, damping: float = 0.0) -> Tensor:
            pieces = self.unflatten(vector)
            dot = sum((g * pieces[n]).sum() for g, n in zip(kl_grads, self.names))
            hv = _grad(dot, leaves, retain_graph=True)
            return torch.cat([h.reshape(-1) for h in hv]) + damping * vector

        return product

    # --- other meta-parameters ------------------------------------------------------------
    def _adapt_without_graph(self, theta: Params) -> Params:
        params = expand_params(theta, self.num_tasks)
        for step in self.inner:
            with torch.enable_grad():
                leaf = {n: p.detach().requires_grad_() for n, p in params.items()}
                params, _ = inner_update(
                    self.policy, leaf, step.episodes, step.advantages, self.inner_lr, False
                )
            params = {n: p.detach() for n, p in params.items()}
        return params

    def adapt_with_graph(self, theta: Params) -> Params:
        """Per-task adapted parameters, differentiable in ``theta`` to any order (for checks)."""
        params = {n: p.unsqueeze(0).expand(self.num_tasks, *p.shape) for n, p in theta.items()}
        for step in self.inner:
            params, _ = inner_update(
                self.policy, params, step.episodes, step.advantages, self.inner_lr, True
            )
        return params

    def evaluate(self, theta: Params) -> tuple[Tensor, Tensor]:
        """Mean surrogate and mean KL (to the old adapted policies) after adapting ``theta``."""
        adapted = self._adapt_without_graph(theta)
        with torch.no_grad():
            surrogate, kl = surrogate_and_kl(
                self.policy, adapted, self.valid, self.valid_advantages,
                self.old_mean, self.old_log_std,
            )
        return surrogate.mean(), kl.mean()
