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
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mamlkit.rl.advantages import compute_advantages
from mamlkit.rl.episodes import Episodes
from mamlkit.rl.meta_objective import (
    InnerStep,
    MetaObjective,
    flat_inputs,
    inner_update,
    step_weights,
)
from mamlkit.rl.mlp_curvature import InnerLossCurvature, mlp_layers
from mamlkit.rl.policy import Params, expand_params
from mamlkit.rl.sampler import TaskSampler
from mamlkit.rl.trpo import TRPOSettings, backtracking_line_search, conjugate_gradient

__all__ = ["HVP_MODES", "MAMLTRPO", "InnerStep", "MetaObjective", "flat_inputs", "inner_update",
           "step_weights"]

HVP_MODES = ("auto", "closed_form", "structured", "autograd")


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
