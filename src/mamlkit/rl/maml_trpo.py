"""MAML-TRPO: model-agnostic meta-learning for policies (Finn et al. 2017, Sec. 3.2, 5.3).

Inner loop: per task, ``inner_steps`` vanilla policy-gradient steps (REINFORCE with the linear
baseline, ``-mean(log pi * A)``) on trajectories sampled with the current parameters. Outer
loop: TRPO on the post-adaptation surrogate, with the KL between the policies adapted from the
old and the new meta-parameters, differentiated through the inner steps (second order) or not
(first order).

Speed. At the current meta-parameters the KL is zero and so is its gradient with respect to
the adapted parameters; its Hessian with respect to the meta-parameters is therefore exactly
``J^T F J``, with ``F`` the Fisher (the KL Hessian at the adapted parameters) and
``J = d theta' / d theta = prod_k (I - lr H_k)``, ``H_k`` the Hessian of the k-th inner loss
(symmetric). So each CG product needs only second-order work on graphs built once per
meta-batch: a Hessian-vector product of each inner loss (reverse over the stored inner-gradient
graph) on the way in and out, and one of the KL at the adapted parameters. No third-order pass
through the inner step is ever taken, and nothing is recomputed between CG iterations. All
tasks run together: per-task parameters are ``[tasks, ...]`` and the policy is ``vmap``-ed.
For the paper's policy (a Linear/ReLU :class:`~mamlkit.rl.policy.GaussianMLPPolicy`) both
products are evaluated in closed form on cached activations (:mod:`mamlkit.rl.mlp_curvature`),
the default; any other policy uses the autograd graphs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mamlkit.core.inner_loop import inner_step
from mamlkit.core.inner_optim import SGD, FixedRates
from mamlkit.rl.advantages import compute_advantages
from mamlkit.rl.episodes import Episodes
from mamlkit.rl.losses import episode_distribution, reinforce_loss, surrogate_and_kl, surrogate_terms
from mamlkit.rl.mlp_curvature import (
    GaussianFisher,
    InnerLossCurvature,
    Layers,
    mlp_layers,
)
from mamlkit.rl.policy import Params, expand_params
from mamlkit.rl.sampler import TaskSampler
from mamlkit.rl.trpo import TRPOSettings, backtracking_line_search, conjugate_gradient

Grads = tuple[Tensor, ...]
HVP_MODES = ("auto", "closed_form", "structured", "autograd")


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


class MAMLTRPO:
    """Meta-trains ``policy`` on a task family with MAML's inner policy gradient and outer TRPO.

    ``inner_steps=0`` turns it into plain multi-task TRPO (the paper's "pretrained" baseline).
    ``first_order=True`` drops the inner steps' Hessians (first-order MAML). ``hvp_mode``
    picks how CG's KL-Hessian-vector products are computed: ``"structured"`` (``J^T F J`` on
    autograd graphs built once, see the module docstring), ``"closed_form"`` (the same
    products in closed form for a Linear/ReLU :class:`GaussianMLPPolicy`, see
    :mod:`mamlkit.rl.mlp_curvature`), ``"autograd"`` (the straightforward double
    differentiation of the KL through the inner step, kept as the reference), or ``"auto"``
    (closed form when the policy allows it, else structured).
    """

    def __init__(
        self,
        policy: nn.Module,
        sampler: TaskSampler,
        inner_lr: float = 0.1,
        inner_steps: int = 1,
        first_order: bool = False,
        trajectories: int = 20,
        gamma: float = 0.99,
        gae_lambda: float = 1.0,
        trpo: TRPOSettings | None = None,
        hvp_mode: str = "auto",
    ) -> None:
        if hvp_mode not in HVP_MODES:
            raise ValueError(f"hvp_mode must be one of {HVP_MODES}, got {hvp_mode!r}")
        if inner_lr <= 0:
            raise ValueError(f"inner_lr must be > 0, got {inner_lr}")
        if inner_steps < 0:
            raise ValueError(f"inner_steps must be >= 0, got {inner_steps}")
        if trajectories < 1:
            raise ValueError(f"trajectories must be >= 1, got {trajectories}")
        sampler.check_policy(policy)
        self.policy = policy
        self.sampler = sampler
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.first_order = first_order
        self.trajectories = trajectories
        self.gamma = gamma
        self.gae_lambda = gae_lambda
        self.trpo = trpo or TRPOSettings()
        layers = mlp_layers(policy)
        if hvp_mode == "closed_form" and layers is None:
            raise ValueError(
                "hvp_mode='closed_form' needs a GaussianMLPPolicy whose mean is Linear/ReLU "
                "layers; use hvp_mode='structured' (any policy) or 'auto'"
            )
        if hvp_mode == "auto":
            hvp_mode = "closed_form" if layers is not None else "structured"
        self.hvp_mode = hvp_mode
        self.layers = layers if hvp_mode == "closed_form" else None

    def meta_parameters(self) -> Params:
        """Current meta-parameters (detached)."""
        return {n: p.detach() for n, p in self.policy.named_parameters()}

    def advantages(self, episodes: Episodes) -> Tensor:
        """Normalised per-task GAE advantages with the linear baseline."""
        return compute_advantages(episodes, self.gamma, self.gae_lambda)

    def collect(
        self, tasks: list[dict[str, Any]], seed: int, timings: dict[str, float] | None = None
    ) -> MetaObjective:
        """Sample, adapt (keeping the graphs needed later) and sample again after adaptation."""
        timings = timings if timings is not None else {}
        seeds = np.random.SeedSequence(seed).generate_state(self.inner_steps + 1)
        theta = self.meta_parameters()
        params = expand_params(theta, len(tasks))
        second_order = not self.first_order
        inner: list[InnerStep] = []
        for k in range(self.inner_steps):
            start = time.perf_counter()
            episodes = self.sampler.sample(
                self.policy, params, tasks, self.trajectories, int(seeds[k])
            )
            timings["sampling"] = timings.get("sampling", 0.0) + time.perf_counter() - start
            start = time.perf_counter()
            advantages = self.advantages(episodes)
            leaf = {n: p.detach().requires_grad_() for n, p in params.items()}
            graph = second_order and self.layers is None
            new, grads = inner_update(
                self.policy, leaf, episodes, advantages, self.inner_lr, graph
            )
            curvature = None
            if second_order and self.layers is not None:
                observations, actions = flat_inputs(episodes)
                weights = advantages.reshape(len(tasks), -1) * step_weights(episodes)
                curvature = InnerLossCurvature(
                    self.layers, {n: p.detach() for n, p in leaf.items()}, observations,
                    actions, weights,
                )
            inner.append(InnerStep(episodes, advantages, leaf, grads if graph else (), curvature))
            params = {n: p.detach() for n, p in new.items()}
            timings["inner"] = timings.get("inner", 0.0) + time.perf_counter() - start
        start = time.perf_counter()
        valid = self.sampler.sample(self.policy, params, tasks, self.trajectories, int(seeds[-1]))
        timings["sampling"] = timings.get("sampling", 0.0) + time.perf_counter() - start
        start = time.perf_counter()
        objective = MetaObjective(
            self.policy, theta, inner, valid, self.advantages(valid), self.inner_lr, second_order,
            layers=self.layers, adapted=params,
        )
        timings["outer"] = timings.get("outer", 0.0) + time.perf_counter() - start
        return objective

    def step(self, tasks: list[dict[str, Any]], seed: int) -> dict[str, float]:
        """One meta-iteration on ``tasks``; returns its metrics (returns, surrogate, KL, times)."""
        timings: dict[str, float] = {}
        objective = self.collect(tasks, seed, timings)
        start = time.perf_counter()
        settings = self.trpo

        if self.hvp_mode == "autograd":
            reference = objective.reference_hvp_fn()

            def hvp(v: Tensor) -> Tensor:
                return reference(v, settings.cg_damping)
        else:

            def hvp(v: Tensor) -> Tensor:
                return objective.hvp(v, settings.cg_damping)

        direction, product = conjugate_gradient(hvp, objective.gradient, settings.cg_iters)
        shs = 0.5 * torch.dot(direction, product)
        full_step = direction / torch.sqrt(shs.clamp_min(1e-12) / settings.max_kl)

        def evaluate(flat: Tensor) -> tuple[float, float]:
            loss, kl = objective.evaluate(objective.unflatten(flat))
            return float(loss), float(kl)

        result = backtracking_line_search(
            evaluate, objective.flat_theta(), full_step, objective.loss, settings
        )
        with torch.no_grad():
            for name, value in objective.unflatten(result.params).items():
                dict(self.policy.named_parameters())[name].copy_(value)
        timings["outer"] = timings.get("outer", 0.0) + time.perf_counter() - start
        first = objective.inner[0].episodes if objective.inner else objective.valid
        return {
            "return_before": float(first.returns().mean()),
            "return_after": float(objective.valid.returns().mean()),
            "surrogate_before": objective.loss,
            "surrogate_after": result.loss,
            "kl": result.kl,
            "step_fraction": result.step_fraction,
            "line_search_tries": float(result.tries),
            "sampling_s": timings.get("sampling", 0.0),
            "inner_s": timings.get("inner", 0.0),
            "outer_s": timings.get("outer", 0.0),
        }
