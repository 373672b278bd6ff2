"""Kernels whose double backward is wrong or missing, routed to exact ones in the inner loop.

Second-order MAML differentiates the inner loop's gradients, so every kernel on the path needs a
correct double backward. A few fused PyTorch kernels do not have one (found by
``tests/core/test_gradgradcheck_audit.py``; table in ``docs/models.md``):

- ``torch._weight_norm`` (called by ``torch.nn.utils.parametrizations.weight_norm`` and the older
  ``torch.nn.utils.weight_norm``): its fused double backward is wrong
  (``torch.autograd.gradgradcheck`` fails on it); we compute ``v * g / ||v||`` from ordinary ops.
- scaled-dot-product attention (``F.scaled_dot_product_attention``, which ``nn.MultiheadAttention``,
  ``nn.Transformer*`` and Hugging Face models call): the fused CPU flash kernel has no double
  backward, nor do the CUDA flash and memory-efficient kernels; we select PyTorch's math backend
  (:func:`torch.nn.attention.sdpa_kernel`), built from matmul and softmax.
- cuDNN RNNs on CUDA have no double backward; we turn cuDNN off for the call, so ``nn.RNN``,
  ``nn.GRU`` and ``nn.LSTM`` use PyTorch's native kernels.

:class:`DifferentiableKernels` applies what a model needs (see :func:`kernel_needs`), the same
mechanism as :mod:`mamlkit.core.norms`: a context around every forward pass, the user's modules
untouched. Models that need none of it run without any context (no per-operation overhead).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode


def weight_norm(v: Tensor, g: Tensor, dim: int = 0) -> Tensor:
    """``torch._weight_norm(v, g, dim)`` from composable ops: ``v * g / ||v||``, the norm over
    every dimension but ``dim`` (over all of them for ``dim=-1``); exact to any order."""
    if dim == -1:
        return v * (g / v.pow(2).sum().sqrt())
    dim = dim % v.dim()
    others = [d for d in range(v.dim()) if d != dim]
    return v * (g / v.pow(2).sum(dim=others, keepdim=True).sqrt())


class _WeightNormRoute(TorchFunctionMode):
    """Replaces ``torch._weight_norm`` by :func:`weight_norm` for the calls made under it."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None):
        if func is torch._weight_norm:
            return weight_norm(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


@dataclass(frozen=True)
class KernelNeeds:
    """Which routes a model needs: composable weight norm, math attention, no cuDNN RNNs."""

    weight_norm: bool = False
    attention: bool = False
    rnn: bool = False

    def __bool__(self) -> bool:
        return self.weight_norm or self.attention or self.rnn


def kernel_needs(model: nn.Module) -> KernelNeeds:
    """The routes ``model`` needs, from its layers' types: weight norm (the parametrization or the
    old hook), attention (``nn.MultiheadAttention``, ``nn.Transformer*`` or any module whose class
    name contains "Attention" or "Attn", as Hugging Face's do) and RNNs (``nn.RNNBase``). A model
    calling ``F.scaled_dot_product_attention`` from a module named otherwise is not detected;
    its second order then fails with :func:`explain_kernel_error`'s message."""
    modules = list(model.modules())
    weight_norm_used = any(
        type(p).__name__ == "_WeightNorm" for m in modules
        for plist in getattr(m, "parametrizations", {}).values() for p in plist
    ) or any(type(hook).__name__ == "WeightNorm" for m in modules
             for hook in m._forward_pre_hooks.values())
    attention = any(isinstance(m, (nn.MultiheadAttention, nn.TransformerEncoderLayer,
                                   nn.TransformerDecoderLayer))
                    or any(word in type(m).__name__.lower() for word in ("attention", "attn"))
                    for m in modules)
    rnn = any(isinstance(m, (nn.RNNBase, nn.RNNCellBase)) for m in modules)
    return KernelNeeds(weight_norm_used, attention, rnn)


class DifferentiableKernels:
    """Context that routes the kernels ``needs`` names to exactly differentiable ones (see the
    module docstring); reusable and re-entrant (each entry keeps its own stack)."""

    def __init__(self, needs: KernelNeeds) -> None:
        self.needs = needs
        self._stacks: list[ExitStack] = []

    def __enter__(self) -> DifferentiableKernels:
        stack = ExitStack()
        if self.needs.attention:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        if self.needs.rnn and torch.backends.cudnn.is_available():
            stack.enter_context(torch.backends.cudnn.flags(enabled=False))
        if self.needs.weight_norm:
            stack.enter_context(_WeightNormRoute())
        self._stacks.append(stack)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stacks.pop().__exit__(*exc)


def explain_kernel_error(error: Exception) -> RuntimeError | None:
    """A clear error for a missing double backward of a fused attention kernel (the model's
    attention was not detected by :func:`kernel_needs`), or None for any other error."""
    text = str(error)
    if "scaled_dot_product" not in text or "not implemented" not in text:
        return None
    return RuntimeError(
        f"second-order MAML needs the double backward of scaled-dot-product attention, which "
        f"this fused kernel does not have ({text}). Name the attention module's class "
        "...Attention (mamlkit then selects the math backend), call meta_backward under "
        "torch.nn.attention.sdpa_kernel(SDPBackend.MATH), or pass first_order=True.")
