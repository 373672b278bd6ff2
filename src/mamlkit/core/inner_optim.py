"""Inner-loop optimizers as values: ``init(params) -> state``, ``update(grads, state, params, step)
-> (params, state)``.

The update rule of the inner loop is an object the learner holds, not a method it overrides (the
idea of optax and TorchOpt, written here for parameter dicts). Every rule is plain tensor
arithmetic on ``{name: tensor}`` dicts, so it runs under ``torch.func`` transforms and
``torch.compile`` and, when the caller keeps the graph, is differentiable: learned rates get their
meta-gradient through the update itself.

Rates come from a :data:`RateFn`, ``step -> {name: rate}``, called at every step (small objects
rather than closures, so that a deep copy of a learner rates with its own tables). A rate may be a
float, a 0-dim tensor or a tensor shaped like its parameter; learned rates are looked up in the
learner's own ``nn.Parameter`` containers at call time, so ``functional_call`` over the learner
(the compiled meta-gradient) sees the values it substitutes.

- :class:`SGD`: ``phi - rate * grad`` (MAML; Meta-SGD with per-element learned rates, Li et al.
  2017; MAML++'s per-layer per-step rates, LSLR, Antoniou et al. 2019; see :class:`FixedRates`,
  :class:`LearnedRates`, :class:`PerStepRates`).
- :class:`Adam`: Adam with fresh state per task (Kingma & Ba 2015; Reptile's and iMAML's inner
  solver).
- :class:`Proximal`: adds ``strength * (phi - phi_0)`` to the gradients before another optimizer,
  the gradient of ``strength / 2 ||phi - phi_0||^2`` (iMAML's regularised inner problem,
  Rajeswaran et al. 2019); ``phi_0`` is the starting point, kept in the state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from mamlkit.core.params import Params

Rate = float | Tensor
RateFn = Callable[[int], Mapping[str, Rate]]
"""``step -> {adapted name: rate}``: the learning rate of every adapted parameter at a step."""


class InnerOptimizer(Protocol):
    """What the inner loop (:mod:`mamlkit.core.inner_loop`) needs of an update rule."""

    stateless: bool
    """True when :meth:`init` returns no state (each update depends only on its step)."""

    def init(self, params: Params) -> Any:
        """The optimizer's state for a task starting at ``params``."""

    def update(self, grads: Params, state: Any, params: Params, step: int) -> tuple[Params, Any]:
        """The parameters after one step from ``params`` (0-based ``step``), and the new state."""


def parameter_key(name: str) -> str:
    """A parameter name usable as an ``nn.ParameterDict`` key (dots are not allowed there)."""
    return name.replace(".", "__")


class FixedRates:
    """The same given rates at every step (``{name: float or tensor}``)."""

    def __init__(self, rates: Mapping[str, Rate]) -> None:
        self.rates = rates

    def __call__(self, step: int) -> Mapping[str, Rate]:
        return self.rates


class LearnedRates:
    """One learned rate tensor per parameter, the same at every step (Meta-SGD): ``table`` holds
    them under :func:`parameter_key` names, shaped like their parameters."""

    def __init__(self, table: nn.ParameterDict, names: tuple[str, ...]) -> None:
        self.table = table
        self.names = names

    def __call__(self, step: int) -> dict[str, Tensor]:
        return {name: self.table[parameter_key(name)] for name in self.names}


class PerStepRates(LearnedRates):
    """One learned rate per parameter tensor and step (MAML++ LSLR): ``table`` holds a vector of
    ``steps`` rates per parameter; steps beyond it reuse the last rate."""

    def __init__(self, table: nn.ParameterDict, names: tuple[str, ...], steps: int) -> None:
        super().__init__(table, names)
        self.steps = steps

    def __call__(self, step: int) -> dict[str, Tensor]:
        index = min(step, self.steps - 1)
        return {name: self.table[parameter_key(name)][index] for name in self.names}


def learned_rate_table(params: Params, names: tuple[str, ...], initial: Mapping[str, float],
                       steps: int | None = None) -> nn.ParameterDict:
    """Learnable rates initialised to ``initial``: shaped like each parameter (``steps=None``,
    Meta-SGD) or one per step (``steps`` entries, LSLR)."""
    def start(name: str) -> Tensor:
        value = params[name].detach()
        if steps is None:
            return torch.full_like(value, float(initial[name]))
        return value.new_full((steps,), float(initial[name]))

    return nn.ParameterDict({parameter_key(n): nn.Parameter(start(n)) for n in names})


class SGD:
    """Plain gradient steps, ``phi - rate * grad``, with the rates of ``rates`` (a
    :data:`RateFn`)."""

    stateless = True

    def __init__(self, rates: RateFn) -> None:
        self.rates = rates

    def init(self, params: Params) -> tuple:
        """No state."""
        return ()

    def update(self, grads: Params, state: tuple, params: Params, step: int
               ) -> tuple[Params, tuple]:
        """One gradient step of every parameter of ``params``."""
        lrs = self.rates(step)
        return {name: value - lrs[name] * grads[name] for name, value in params.items()}, state


AdamMoments = tuple[Params, Params]
"""First and second moment estimates, one tensor per parameter."""


def check_adam(betas: tuple[float, float], eps: float) -> tuple[float, float]:
    """The betas as floats; ``ValueError`` for settings outside Adam's range."""
    beta1, beta2 = betas
    if not (0 <= beta1 < 1 and 0 <= beta2 < 1) or not eps > 0:
        raise ValueError(f"adam_betas must lie in [0, 1) and adam_eps be > 0, got {betas}, {eps}.")
    return float(beta1), float(beta2)


class Adam:
    """Adam (Kingma & Ba, ICLR 2015) with fresh zero moments per task and the rates of ``rates``
    (the step size of each parameter); the 0-based ``step`` drives the bias correction."""

    stateless = False

    def __init__(self, rates: RateFn, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.rates = rates
        self.betas = check_adam(betas, eps)
        self.eps = float(eps)

    def init(self, params: Params) -> AdamMoments:
        """Zero moment estimates for ``params``."""
        return ({n: torch.zeros_like(p) for n, p in params.items()},
                {n: torch.zeros_like(p) for n, p in params.items()})

    def update(self, grads: Params, state: AdamMoments, params: Params, step: int
               ) -> tuple[Params, AdamMoments]:
        """One Adam step of every parameter of ``params``."""
        beta1, beta2 = self.betas
        lrs = self.rates(step)
        first = {n: beta1 * state[0][n] + (1 - beta1) * g for n, g in grads.items()}
        second = {n: beta2 * state[1][n] + (1 - beta2) * g * g for n, g in grads.items()}
        correction1, correction2 = 1 - beta1 ** (step + 1), 1 - beta2 ** (step + 1)
        updated = {n: v - lrs[n] * (first[n] / correction1)
                   / ((second[n] / correction2).sqrt() + self.eps) for n, v in params.items()}
        return updated, (first, second)


class Proximal:
    """``inner`` on the proximally regularised loss ``L(phi) + strength / 2 ||phi - phi_0||^2``,
    ``phi_0`` the task's starting point: the gradients get ``strength * (phi - phi_0)`` added.
    The anchor stays in the state with its graph, so an unrolled meta-gradient sees it."""

    def __init__(self, inner: InnerOptimizer, strength: float) -> None:
        self.inner = inner
        self.strength = float(strength)
        self.stateless = False

    def init(self, params: Params) -> tuple[Params, Any]:
        """The anchor ``phi_0 = params`` and the inner optimizer's state."""
        return dict(params), self.inner.init(params)

    def update(self, grads: Params, state: tuple[Params, Any], params: Params, step: int
               ) -> tuple[Params, tuple[Params, Any]]:
        """One step of ``inner`` on the regularised gradients."""
        anchor, inner_state = state
        pulled = {n: g + self.strength * (params[n] - anchor[n]) for n, g in grads.items()}
        params, inner_state = self.inner.update(pulled, inner_state, params, step)
        return params, (anchor, inner_state)


INNER_OPTIMIZERS = ("sgd", "adam")
"""Names of the rules an algorithm's ``inner_optimizer=`` argument accepts."""


def check_inner_optimizer(name: str, betas: tuple[float, float], eps: float) -> None:
    """``ValueError`` for a name outside :data:`INNER_OPTIMIZERS` or invalid Adam settings
    (checked whichever rule is named)."""
    if name not in INNER_OPTIMIZERS:
        raise ValueError(f"Unknown inner_optimizer {name!r}; choose one of {INNER_OPTIMIZERS}.")
    check_adam(betas, eps)


def named_optimizer(name: str, rates: RateFn, betas: tuple[float, float], eps: float
                    ) -> InnerOptimizer:
    """The rule called ``name`` (:data:`INNER_OPTIMIZERS`): ``SGD(rates)`` or ``Adam(rates, betas,
    eps)``, after :func:`check_inner_optimizer`."""
    check_inner_optimizer(name, betas, eps)
    return SGD(rates) if name == "sgd" else Adam(rates, betas, eps)
