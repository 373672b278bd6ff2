"""Audit: which ``torch.nn`` layers have a correct double backward, and whether mamlkit's routing
makes every one exact.

For each layer, ``torch.autograd.gradgradcheck`` (float64, finite differences of the analytic
gradient) runs over the layer's output as a function of its input and parameters: once with
PyTorch's own kernels, once under the contexts the learner applies around a forward pass
(:mod:`mamlkit.core.kernels`, and :mod:`mamlkit.core.norms` for normalisation layers). The first
outcome is pinned in :data:`FUSED_FAILS` (the docs/models.md table); the second must pass for every
layer. A new PyTorch that fixes or breaks a kernel fails this test, and the table is updated.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import ExitStack

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.utils import parametrizations

from mamlkit.core.kernels import DifferentiableKernels, kernel_needs
from mamlkit.core.norms import ComposableNorms, has_norm_layers

D = torch.float64


def _seq(*shape: int) -> Callable[[], Tensor]:
    return lambda: torch.randn(*shape, dtype=D)


class _Call(nn.Module):
    """Wraps a layer whose output is a tuple (RNNs, attention): the first tensor, or a function."""

    def __init__(self, layer: nn.Module, fn: Callable[[nn.Module, Tensor], Tensor]) -> None:
        super().__init__()
        self.layer, self.fn = layer, fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(self.layer, x)


def _first(layer: nn.Module) -> nn.Module:
    return _Call(layer, lambda m, x: m(x)[0])


def _old_weight_norm() -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return nn.utils.weight_norm(nn.Linear(3, 2))


class SelfAttention(nn.Module):
    """A hand-written attention block calling F.scaled_dot_product_attention."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        q = self.proj(x).reshape(x.shape[0], x.shape[1], 2, 2).transpose(1, 2)
        return nn.functional.scaled_dot_product_attention(q, q, q)


LAYERS: dict[str, tuple[Callable[[], nn.Module], Callable[[], Tensor]]] = {
    "Linear": (lambda: nn.Linear(3, 2), _seq(2, 3)),
    "Bilinear": (lambda: _Call(nn.Bilinear(3, 3, 2), lambda m, x: m(x, x)), _seq(2, 3)),
    "Conv1d": (lambda: nn.Conv1d(2, 2, 3), _seq(1, 2, 5)),
    "Conv2d": (lambda: nn.Conv2d(1, 2, 3, padding=1), _seq(1, 1, 4, 4)),
    "Conv2d (stride 2, groups 2)": (lambda: nn.Conv2d(2, 2, 3, 2, groups=2), _seq(1, 2, 5, 5)),
    "ConvTranspose2d": (lambda: nn.ConvTranspose2d(2, 1, 2, stride=2), _seq(1, 2, 2, 2)),
    "BatchNorm1d (train)": (lambda: nn.BatchNorm1d(2), _seq(4, 2)),
    "BatchNorm2d (train)": (lambda: nn.BatchNorm2d(2), _seq(3, 2, 2, 2)),
    "LayerNorm": (lambda: nn.LayerNorm(3), _seq(2, 3)),
    "GroupNorm": (lambda: nn.GroupNorm(2, 4), _seq(2, 4, 3)),
    "InstanceNorm1d (affine)": (lambda: nn.InstanceNorm1d(2, affine=True), _seq(2, 2, 4)),
    "RMSNorm": (lambda: nn.RMSNorm(3), _seq(2, 3)),
    "Embedding": (lambda: _Call(nn.Embedding(5, 3), lambda m, x: m((x.abs() * 2).long().clamp(max=4))
                                * x.unsqueeze(-1)), _seq(2, 3)),
    "MultiheadAttention": (lambda: _Call(nn.MultiheadAttention(2, 1, batch_first=True),
                                         lambda m, x: m(x, x, x, need_weights=False)[0]),
                           _seq(1, 2, 2)),
    "scaled_dot_product_attention": (SelfAttention, _seq(1, 2, 4)),
    "TransformerEncoderLayer": (lambda: nn.TransformerEncoderLayer(2, 1, 2, dropout=0.0,
                                                                   batch_first=True), _seq(1, 2, 2)),
    "RNN": (lambda: _first(nn.RNN(2, 2, batch_first=True)), _seq(1, 2, 2)),
    "GRU": (lambda: _first(nn.GRU(2, 2, batch_first=True)), _seq(1, 2, 2)),
    "LSTM": (lambda: _first(nn.LSTM(2, 2, batch_first=True)), _seq(1, 2, 2)),
    "RNNCell": (lambda: nn.RNNCell(3, 2), _seq(2, 3)),
    "GRUCell": (lambda: nn.GRUCell(3, 2), _seq(2, 3)),
    "LSTMCell": (lambda: _Call(nn.LSTMCell(3, 2), lambda m, x: m(x)[0]), _seq(2, 3)),
    "ReLU": (nn.ReLU, _seq(2, 3)),
    "GELU": (nn.GELU, _seq(2, 3)),
    "GELU (tanh)": (lambda: nn.GELU("tanh"), _seq(2, 3)),
    "SiLU": (nn.SiLU, _seq(2, 3)),
    "Mish": (nn.Mish, _seq(2, 3)),
    "ELU": (nn.ELU, _seq(2, 3)),
    "LeakyReLU": (nn.LeakyReLU, _seq(2, 3)),
    "Softplus": (nn.Softplus, _seq(2, 3)),
    "Tanh": (nn.Tanh, _seq(2, 3)),
    "Sigmoid": (nn.Sigmoid, _seq(2, 3)),
    "Hardswish": (nn.Hardswish, _seq(2, 3)),
    "Softmax": (lambda: nn.Softmax(-1), _seq(2, 3)),
    "LogSoftmax": (lambda: nn.LogSoftmax(-1), _seq(2, 3)),
    "MaxPool2d": (lambda: nn.MaxPool2d(2), _seq(1, 1, 4, 4)),
    "AvgPool2d": (lambda: nn.AvgPool2d(2), _seq(1, 1, 4, 4)),
    "AdaptiveAvgPool2d": (lambda: nn.AdaptiveAvgPool2d(1), _seq(1, 2, 3, 3)),
    "AdaptiveMaxPool2d": (lambda: nn.AdaptiveMaxPool2d(1), _seq(1, 2, 3, 3)),
    "Upsample (bilinear)": (lambda: nn.Upsample(scale_factor=2, mode="bilinear"),
                            _seq(1, 1, 2, 2)),
    "parametrizations.weight_norm": (lambda: parametrizations.weight_norm(nn.Linear(3, 2)),
                                     _seq(2, 3)),
    "parametrizations.weight_norm (dim=1)": (
        lambda: parametrizations.weight_norm(nn.Linear(3, 2), dim=1), _seq(2, 3)),
    "utils.weight_norm (old)": (_old_weight_norm, _seq(2, 3)),
    "parametrizations.spectral_norm (eval)": (
        lambda: parametrizations.spectral_norm(nn.Linear(3, 2)).eval(), _seq(2, 3)),
    "parametrizations.orthogonal": (lambda: parametrizations.orthogonal(nn.Linear(3, 3)),
                                    _seq(2, 3)),
}
"""Every audited layer: how to build it and an input for it."""

FUSED_FAILS = {
    "MultiheadAttention": "no double backward (CPU flash attention)",
    "scaled_dot_product_attention": "no double backward (CPU flash attention)",
    "TransformerEncoderLayer": "no double backward (CPU flash attention)",
    "parametrizations.weight_norm": "wrong double backward (torch._weight_norm)",
    "parametrizations.weight_norm (dim=1)": "wrong double backward (torch._weight_norm)",
    "utils.weight_norm (old)": "wrong double backward (torch._weight_norm)",
}
"""Layers whose PyTorch kernels fail ``gradgradcheck`` on the CPU (float64), and why."""


def double_backward_ok(module: nn.Module, x: Tensor, routed: bool) -> bool:
    """Whether gradgradcheck passes for ``module``'s output in its input and parameters."""
    params = {n: p.detach().requires_grad_() for n, p in module.named_parameters()}
    buffers = dict(module.named_buffers())
    names = list(params)

    def fn(x: Tensor, *values: Tensor) -> Tensor:
        with ExitStack() as stack:
            if routed:
                if has_norm_layers(module):
                    stack.enter_context(ComposableNorms(True))
                needs = kernel_needs(module)
                if needs:
                    stack.enter_context(DifferentiableKernels(needs))
            state = {**dict(zip(names, values)), **{n: b.clone() for n, b in buffers.items()}}
            return functional_call(module, state, (x,))

    try:
        return torch.autograd.gradgradcheck(fn, (x.requires_grad_(), *params.values()),
                                            raise_exception=False)
    except RuntimeError:  # a missing derivative raises whatever raise_exception says
        return False


@pytest.mark.parametrize("name", list(LAYERS))
def test_double_backward_of_every_layer(name: str) -> None:
    torch.manual_seed(0)
    build, make_input = LAYERS[name]
    module, x = build().to(D), make_input()
    assert double_backward_ok(module, x, routed=True), f"{name}: wrong under mamlkit's routing"
    fused = double_backward_ok(module, x.detach(), routed=False)
    assert fused == (name not in FUSED_FAILS), (
        f"{name}: PyTorch's own double backward now {'passes' if fused else 'fails'}; update "
        "FUSED_FAILS and the table in docs/models.md")
