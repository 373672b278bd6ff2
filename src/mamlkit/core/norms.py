"""Normalisation layers inside the inner loop: the BatchNorm policy and exact second order.

MAML's published code normalises every forward pass with the statistics of the batch at hand
("transductive" batch normalisation): running statistics are never used and never updated, so
nothing leaks across tasks or into the meta-parameters. That is the default policy here.

We implement it without touching the user's modules: a :class:`~torch.overrides.TorchFunctionMode`
intercepts ``torch.nn.functional.batch_norm`` (which every ``nn.BatchNorm*`` layer calls) and
computes the normalisation from ordinary tensor operations. The same mode replaces
``F.layer_norm`` and ``F.group_norm`` by their composite forms: under ``torch.func.vmap`` the
second-order gradients of PyTorch's fused normalisation kernels come out wrong
(pytorch/functorch#534; measured here for batch, layer and group norm), while mean/var/rsqrt
compose exactly with every transform.

Outside ``vmap`` (the per-task loop) the fused kernels' second order is exact, and they are several
times faster on the CPU (one pass over the activations instead of a dozen), so the mode uses them
there: PyTorch's own ``batch_norm`` with the batch statistics for the transductive policy, and
``layer_norm``/``group_norm`` unchanged. Whether a ``vmap`` is active is read from functorch's
interpreter stack at each call, so the choice is right whichever way the learner is called.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from mamlkit.core.transforms import under_vmap

BATCHNORM_POLICIES = ("transductive", "module")
"""``transductive``: always batch statistics (the paper's). ``module``: BatchNorm layers behave as
the module says (running statistics in eval mode; use it for a frozen, pretrained backbone)."""

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def _affine(out: Tensor, weight: Tensor | None, bias: Tensor | None, shape: list[int]) -> Tensor:
    if weight is not None:
        out = out * weight.reshape(shape)
    if bias is not None:
        out = out + bias.reshape(shape)
    return out


def _normalize(x: Tensor, dims: Sequence[int], eps: float) -> Tensor:
    mean = x.mean(dim=dims, keepdim=True)
    centered = x - mean
    var = (centered * centered).mean(dim=dims, keepdim=True)
    return centered * torch.rsqrt(var + eps)


def batch_norm_batch_stats(
    input: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """``F.batch_norm`` normalising with the batch's own statistics, from composable ops.

    Accepts ``F.batch_norm``'s signature; running statistics, ``training`` and ``momentum`` are
    ignored on purpose (the transductive policy).
    """
    out = _normalize(input, [0, *range(2, input.dim())], eps)
    return _affine(out, weight, bias, [1, -1] + [1] * (input.dim() - 2))


def batch_norm_batch_stats_fused(
    input: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Same result as :func:`batch_norm_batch_stats` from PyTorch's fused kernel (use outside vmap)."""
    return F.batch_norm(input, None, None, weight, bias, True, 0.0, eps)


def layer_norm(input: Tensor, normalized_shape: Sequence[int], weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """``F.layer_norm`` from composable ops (exact second order under ``vmap``)."""
    dims = list(range(input.dim() - len(normalized_shape), input.dim()))
    return _affine(_normalize(input, dims, eps), weight, bias, list(normalized_shape))


def group_norm(input: Tensor, num_groups: int, weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """``F.group_norm`` from composable ops (exact second order under ``vmap``)."""
    grouped = input.reshape(input.shape[0], num_groups, -1)
    out = _normalize(grouped, [2], eps).reshape(input.shape)
    return _affine(out, weight, bias, [1, -1] + [1] * (input.dim() - 2))


class ComposableNorms(TorchFunctionMode):
    """Context replacing fused normalisation kernels by composable ones under ``vmap`` (see module
    docstring); outside ``vmap`` the fused kernels run (only the BatchNorm policy is applied).

    ``transductive_batchnorm`` selects the BatchNorm policy: when False, ``F.batch_norm`` calls
    pass through unchanged. ``vmapped`` (None: read functorch's stack at each call) can be set by
    a caller that knows whether it vmaps, e.g. for ``torch.compile``, which cannot trace the stack.
    """

    def __init__(self, transductive_batchnorm: bool = True) -> None:
        super().__init__()
        self._replacements: dict[Any, Any] = {F.layer_norm: layer_norm, F.group_norm: group_norm}
        self._fused: dict[Any, Any] = {}
        self.vmapped: bool | None = None
        if transductive_batchnorm:
            self._replacements[F.batch_norm] = batch_norm_batch_stats
            self._fused[F.batch_norm] = batch_norm_batch_stats_fused

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None):
        replacement = self._replacements.get(func)
        if replacement is not None and not (under_vmap() if self.vmapped is None else self.vmapped):
            replacement = self._fused.get(func, func)
        return (replacement or func)(*args, **(kwargs or {}))


def has_norm_layers(module: nn.Module) -> bool:
    """Whether the module contains a BatchNorm, LayerNorm or GroupNorm layer."""
    return any(isinstance(m, NORM_TYPES) for m in module.modules())


def check_policy(policy: str) -> str:
    """Return ``policy`` if known, else raise a ``ValueError`` listing the choices."""
    if policy not in BATCHNORM_POLICIES:
        raise ValueError(f"Unknown batchnorm policy {policy!r}; choose one of {BATCHNORM_POLICIES}.")
    return policy
