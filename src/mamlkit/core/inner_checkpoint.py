"""Checkpointing through the inner loop: the exact second-order meta-gradient in flat memory.

MAML's second-order meta-gradient backpropagates through every inner step
``θ_{k+1} = θ_k − α_k ∇L_support(θ_k)``. Kept as one autograd graph, each step holds its
forward activations and the graph of its inner backward pass, so memory grows linearly with the
number of inner steps (Finn et al. 2017; the limit users of every MAML library hit).
``torch.utils.checkpoint`` cannot cut that graph here: it does not work under ``torch.func``
transforms, and the inner gradient itself is a backward pass.

:func:`checkpointed_inner_loop` runs the inner steps as custom autograd functions that keep only
their inputs: the adapted parameters before each step (plus the learning rates and the
non-adapted parameters, which exist anyway). The forward of a segment of steps computes the
inner gradients with ``torch.func.grad`` and drops their graphs; the backward recomputes the
segment from its saved parameters and returns the vector-Jacobian product
``v ↦ (∂θ_{k+1}/∂θ_k)ᵀ v`` (a Hessian-vector product: ``v − α ∇²L(θ_k) v``) for the adapted
parameters, the learning rates (Meta-SGD, MAML++'s per-step rates) and the non-adapted
parameters the support loss uses. The result is the exact second-order meta-gradient (the same
arithmetic as backpropagating through the kept graph, in another order), for the price of one more
forward and inner backward pass per step; the memory held between the inner loop and the outer
backward is one parameter set per segment, and the outer backward holds one segment's graph at
a time.

Forward and backward are written with ``torch.func`` (``grad``, ``vjp``) and the function declares
``generate_vmap_rule``, so the same code gives the exact meta-gradient in the per-task loop (plain
autograd), under ``vmap`` over tasks and under ``torch.func.grad`` of the meta-loss (also inside
``torch.compile``). The memory saving holds in both forms: an outer autograd backward
(``benchmarks/inner_memory.py``) and ``torch.func.grad`` of the meta-loss
(``benchmarks/inner_checkpoint_transforms.py``). The backward pass is not itself differentiable
(the meta-gradient is; a derivative of the meta-gradient is not supported).

The support loss is evaluated twice per step (forward and recomputation), so it must be a pure
function of the parameters: no running-statistics updates (batch statistics, as transductive
BatchNorm, are fine) and no fresh random draws unless ``preserve_rng_state`` restores them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.func import grad_and_value, vjp

Params = dict[str, Tensor]
LearningRate = float | Tensor | Mapping[str, float | Tensor]
"""One step's learning rates: one for all adapted parameters, or one per parameter name (a
float, or a tensor broadcastable to the parameter, such as Meta-SGD's)."""
LearningRates = LearningRate | Sequence[LearningRate] | Callable[[int], LearningRate]
"""The learning rates of every step: the same for all, a sequence with one per step, or a
function of the step index (such as an inner optimizer's rates, :mod:`mamlkit.core.inner_optim`)."""


@dataclass(frozen=True, eq=False)
class _Segment:
    """What a checkpointed segment needs besides its tensors (not differentiated)."""

    loss_fn: Callable[..., Tensor]
    fast_names: tuple[str, ...]
    frozen_names: tuple[str, ...]
    num_data: int
    lr_slots: tuple[tuple[Any, ...], ...]  # per step, per fast name: ("t", index) or ("f", value)
    rng_state: tuple[Tensor, ...] = ()  # CPU generator, then the CUDA devices' (rng_devices)

    def split(self, tensors: Sequence[Tensor]) -> tuple[Params, Params, list[Tensor], list[Tensor]]:
        """``tensors`` (fast, frozen, data, learning-rate tensors) back into their four groups."""
        n_fast, n_frozen = len(self.fast_names), len(self.frozen_names)
        n_known = n_fast + n_frozen + self.num_data
        fast = dict(zip(self.fast_names, tensors[:n_fast]))
        frozen = dict(zip(self.frozen_names, tensors[n_fast:n_fast + n_frozen]))
        return fast, frozen, list(tensors[n_fast + n_frozen:n_known]), list(tensors[n_known:])

    def run(self, tensors: Sequence[Tensor]) -> tuple[tuple[Tensor, ...], Tensor]:
        """The segment's steps on ``tensors``: the adapted parameters after it, and the support
        losses before each step, stacked (differentiable wherever the inputs are)."""
        fast, frozen, data, lr_tensors = self.split(tensors)
        losses = []
        for slots in self.lr_slots:
            grads, loss = grad_and_value(lambda f: self.loss_fn({**frozen, **f}, *data))(fast)
            fast = {name: value - _lr(slot, lr_tensors) * grads[name]
                    for (name, value), slot in zip(fast.items(), slots)}
            losses.append(loss)
        return tuple(fast[n] for n in self.fast_names), torch.stack(losses)


def _lr(slot: tuple[Any, ...], lr_tensors: list[Tensor]) -> float | Tensor:
    kind, value = slot
    return lr_tensors[value] if kind == "t" else value


def _rng_devices(tensors: Sequence[Tensor]) -> list[int]:
    return sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})


class _CheckpointedSegment(torch.autograd.Function):
    """Inner steps that save only their inputs and recompute their graph in the backward pass."""

    generate_vmap_rule = True

    @staticmethod
    def forward(segment: _Segment, *tensors: Tensor) -> tuple[Tensor, ...]:
        """The segment's adapted parameters and support losses, without keeping a graph."""
        fast, losses = segment.run(tensors)
        return (*(f.detach() for f in fast), losses.detach())

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        """Save the inputs (the only tensors kept) and the segment description."""
        segment, *tensors = inputs
        ctx.segment = segment
        ctx.save_for_backward(*tensors)
        ctx.mark_non_differentiable(output[-1])

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Tensor) -> tuple[Tensor | None, ...]:
        """Recompute the segment from its saved inputs; the VJP for each input that needs one."""
        segment: _Segment = ctx.segment
        tensors = ctx.saved_tensors
        wanted = [i for i, need in enumerate(ctx.needs_input_grad[1:]) if need]
        cotangents = tuple(grad_outputs[:len(segment.fast_names)])

        def step(*selected: Tensor) -> tuple[Tensor, ...]:
            full = list(tensors)
            for i, t in zip(wanted, selected):
                full[i] = t
            return segment.run(full)[0]

        # no_grad: the recomputation is not recorded for a higher derivative. The autograd
        # engine runs backward without a graph anyway; torch.func.grad differentiates with a
        # graph, which would keep every step's recomputed graph alive until the end.
        with _restored_rng(segment.rng_state, tensors), torch.no_grad():
            _, vjp_fn = vjp(step, *(tensors[i] for i in wanted))
            grads = vjp_fn(cotangents)
        out: list[Tensor | None] = [None] * len(tensors)
        for i, g in zip(wanted, grads):
            out[i] = g
        return (None, *out)


@contextmanager
def _restored_rng(states: tuple[Tensor, ...], tensors: Sequence[Tensor]) -> Iterator[None]:
    """Run the body with the generators as the forward found them (``states``; nothing to do if
    empty), and put the current states back afterwards."""
    if not states:
        yield
        return
    devices = _rng_devices(tensors)
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(states[0])
        for device, state in zip(devices, states[1:]):
            torch.cuda.set_rng_state(state, device)
        yield


def _step_lrs(lrs: LearningRates, step: int, steps: int) -> LearningRate:
    if callable(lrs):
        return lrs(step)
    if isinstance(lrs, Sequence) and not isinstance(lrs, (str, Tensor)):
        if len(lrs) != steps:
            raise ValueError(f"lrs has {len(lrs)} entries but steps={steps}; give one learning "
                             "rate (or mapping) per inner step, or a single one for all steps.")
        return lrs[step]
    return lrs


def checkpointed_inner_loop(
    loss_fn: Callable[..., Tensor],
    fast: Mapping[str, Tensor],
    frozen: Mapping[str, Tensor],
    lrs: LearningRates,
    steps: int,
    *,
    data: Sequence[Tensor] = (),
    every: int = 1,
    preserve_rng_state: bool = False,
) -> tuple[Params, list[Tensor]]:
    """``steps`` inner SGD steps ``θ ← θ − α ∇ loss_fn(θ)`` on the ``fast`` parameters, with the
    exact second-order graph to ``fast``, ``frozen`` and tensor ``lrs``, checkpointed (module doc).

    Args:
        loss_fn: the support loss of one task, ``loss_fn({**frozen, **fast}, *data) -> scalar``;
            called twice per step (forward and recomputation), so it must be a pure function of
            its arguments (see ``preserve_rng_state`` for random draws).
        fast: the adapted parameters before the first step (``θ_0``, in the meta-graph).
        frozen: the parameters the support loss uses that do not adapt (shared, ANIL's body...);
            they get gradients through every step.
        lrs: learning rates: a float or tensor for all, a ``{name: float | tensor}`` mapping
            (tensors broadcast to their parameter; those requiring grad, such as Meta-SGD's,
            get their meta-gradient), a sequence with one of those per step, or a function of
            the step index returning one.
        steps: number of inner steps (0 returns ``fast`` unchanged).
        data: tensors the loss reads besides the parameters (the support set), passed to
            ``loss_fn`` after the parameters. Under ``torch.func.grad`` of a ``vmap`` over tasks
            the tensors of a task must come in here, not captured by ``loss_fn`` (functorch
            cannot lift a closure's batched tensors into a custom autograd function); in the
            per-task loop and under ``vmap`` with an outer ``backward`` either way works.
        every: steps per checkpointed segment: the parameters are kept every ``every`` steps and
            a segment's graph is rebuilt as a whole in the backward pass (1: the least memory).
        preserve_rng_state: save the random number generators' state before each segment and
            restore it for the recomputation (needed if ``loss_fn`` draws, e.g. dropout; the
            CPU generator and those of the CUDA devices of the inputs).

    Returns:
        The adapted parameters after ``steps`` steps (differentiable as if no checkpointing
        happened) and the support loss before each step (detached scalars).
    """
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}.")
    if not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be a positive int, got {every!r}.")
    fast_names = tuple(fast)
    overlap = set(fast_names) & set(frozen)
    if overlap:
        raise ValueError(f"parameters {sorted(overlap)} are both in fast and frozen; give each "
                         "parameter in one of them.")
    frozen_names = tuple(frozen)
    fast_values = [fast[n] for n in fast_names]
    frozen_values = [frozen[n] for n in frozen_names]
    losses: list[Tensor] = []
    for start in range(0, steps, every):
        lr_tensors: list[Tensor] = []
        lr_slots = []
        for step in range(start, min(start + every, steps)):
            lr_slots.append(_lr_slots(_step_lrs(lrs, step, steps), fast_names, lr_tensors))
        rng_state: tuple[Tensor, ...] = ()
        if preserve_rng_state:
            devices = _rng_devices([*fast_values, *frozen_values])
            rng_state = (torch.get_rng_state(), *(torch.cuda.get_rng_state(d) for d in devices))
        segment = _Segment(loss_fn, fast_names, frozen_names, len(data), tuple(lr_slots), rng_state)
        out = _CheckpointedSegment.apply(segment, *fast_values, *frozen_values, *data, *lr_tensors)
        fast_values = list(out[:len(fast_names)])
        losses.extend(out[len(fast_names)].unbind(0))
    return dict(zip(fast_names, fast_values)), losses


def _lr_slots(step_lrs: LearningRate, fast_names: tuple[str, ...], lr_tensors: list[Tensor]
              ) -> tuple[tuple[Any, ...], ...]:
    """Each fast parameter's learning rate as a float or an index into ``lr_tensors`` (appended)."""
    def slot(value: float | Tensor) -> tuple[Any, ...]:
        if isinstance(value, Tensor):
            for i, t in enumerate(lr_tensors):
                if t is value:
                    return ("t", i)
            lr_tensors.append(value)
            return ("t", len(lr_tensors) - 1)
        return ("f", float(value))

    if isinstance(step_lrs, Mapping):
        missing = [n for n in fast_names if n not in step_lrs]
        if missing:
            raise ValueError(f"no learning rate for the adapted parameters {missing}; give one "
                             "per name or a single learning rate for all.")
        return tuple(slot(step_lrs[n]) for n in fast_names)
    shared = slot(step_lrs)
    return tuple(shared for _ in fast_names)
