"""Per-step BatchNorm for MAML++: one set of running statistics per inner step, used at test time.

Antoniou, Edwards & Storkey, "How to train your MAML", ICLR 2019, Section 4 (BNRS). A forward
pass with the parameters reached after ``k`` inner updates uses statistics set ``k``. During
meta-training (``learner.train()``) every BatchNorm layer normalises with the batch's own
statistics (as MAML does) and reports those statistics, so that the learner can fold them into
set ``k``'s running averages *after* the meta-batch; in evaluation (``learner.eval()``) the layer
normalises with set ``k``'s running statistics and nothing is written.

We identify which layer a ``F.batch_norm`` call belongs to by the identity of the running-mean
tensor we hand to ``torch.func.functional_call`` for that forward pass, so the user's modules are
neither patched nor hooked.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mamlkit.core.norms import ComposableNorms


def batchnorm_layers(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """The model's BatchNorm layers by module name."""
    return {name: module for name, module in model.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm)}


class PerStepNorms(ComposableNorms):
    """Normalisation context for one forward pass at one inner step.

    Args:
        layer_of: ``id(running_mean tensor) -> layer name`` for the layers with per-step
            statistics in this forward pass; other BatchNorm calls use batch statistics.
        use_running: normalise with the given running statistics (evaluation) instead of the
            batch's own.
        recorder: when not ``None``, ``recorder[layer] = (batch mean, unbiased batch variance)``
            (detached) for every known layer normalised with batch statistics.
    """

    def __init__(self, layer_of: dict[int, str], use_running: bool,
                 recorder: dict[str, tuple[Tensor, Tensor]] | None) -> None:
        super().__init__(transductive_batchnorm=True)
        self.layer_of = layer_of
        self.use_running = use_running
        self.recorder = recorder

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None):
        if func is F.batch_norm:  # every BatchNorm call, whatever the parent does with the others
            return self._batch_norm(*args, **(kwargs or {}))
        return super().__torch_function__(func, types, args, kwargs)

    def _batch_norm(self, input: Tensor, running_mean: Tensor | None = None,
                    running_var: Tensor | None = None, weight: Tensor | None = None,
                    bias: Tensor | None = None, training: bool = False, momentum: float = 0.1,
                    eps: float = 1e-5) -> Tensor:
        layer = self.layer_of.get(id(running_mean)) if running_mean is not None else None
        shape = [1, -1] + [1] * (input.dim() - 2)
        if layer is not None and self.use_running:
            mean, var = running_mean.reshape(shape), running_var.reshape(shape)
        else:
            dims = [0, *range(2, input.dim())]
            mean = input.mean(dim=dims, keepdim=True)
            centered = input - mean
            var = (centered * centered).mean(dim=dims, keepdim=True)
            if layer is not None and self.recorder is not None:
                count = input.numel() // input.shape[1]
                unbiased = var.detach() * (count / max(count - 1, 1))
                self.recorder[layer] = (mean.detach().reshape(-1), unbiased.reshape(-1))
        out = (input - mean) * torch.rsqrt(var + eps)
        if weight is not None:
            out = out * weight.reshape(shape)
        if bias is not None:
            out = out + bias.reshape(shape)
        return out


def check_batchnorm_layers(layers: dict[str, Any], per_step_stats: bool) -> None:
    """Raise a clear ``ValueError`` when per-step BatchNorm cannot apply to these layers."""
    if not layers:
        raise ValueError("Per-step BatchNorm (BNRS/BNWB) needs BatchNorm layers, and the model has none; "
                         "pass per_step_bn_stats=False, per_step_bn_weights=False.")
    if per_step_stats:
        untracked = [n for n, m in layers.items() if not m.track_running_stats]
        if untracked:
            raise ValueError(f"Per-step running statistics (BNRS) need BatchNorm layers that track running "
                             f"statistics; {untracked} were built with track_running_stats=False. Rebuild "
                             "them with track_running_stats=True or pass per_step_bn_stats=False.")
