"""The outer (meta-) optimizer: Adam, AdamW when Adam has weight decay, or SGD, with PyTorch's
fused kernels wherever they apply.

PyTorch's default ``Adam`` on the CPU steps one parameter at a time in Python. Its fused
implementation (``fused=True``, one kernel over all parameters; CPU since torch 2.4) computes the
same update and takes a fraction of the time: on this project's 2-core development machine 0.07
instead of 0.18 ms per step for the sinusoid MLP and 0.29 instead of 1.1 ms for the Omniglot CNN,
which is 6-15% of a compiled sinusoid meta-iteration. mamlkit's trainer and its Lightning module
build their optimizer here (``mamlkit.meta_optimizer``), so both get it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

_FUSED_DEVICES = ("cpu", "cuda")


def meta_optimizer(name: str, params: Iterable[torch.nn.Parameter], lr: float,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The outer optimizer ``name`` (``"adam"`` or ``"sgd"``) over ``params``: ``AdamW`` when
    Adam has ``weight_decay`` (decoupled decay, Loshchilov & Hutter 2019), fused where
    :func:`fusable` says the kernels apply."""
    params = list(params)
    fused = fusable(params)
    if name == "adam":
        if weight_decay:
            return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)
        return torch.optim.Adam(params, lr=lr, fused=fused)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, fused=fused)
    raise ValueError(f"unknown optimizer {name!r}; use 'adam' or 'sgd'.")


def fusable(params: list[torch.nn.Parameter]) -> bool | None:
    """True when every parameter is a plain floating-point tensor on one CPU or CUDA device, the
    condition of PyTorch's fused optimizer kernels; otherwise None (PyTorch's own choice)."""
    if not params:
        return None
    devices = {p.device for p in params}
    plain = all(type(p) in (torch.nn.Parameter, torch.Tensor) and p.is_floating_point()
                for p in params)
    one_device = len(devices) == 1 and next(iter(devices)).type in _FUSED_DEVICES
    return True if plain and one_device else None
