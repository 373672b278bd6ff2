"""Low-rank adapters (LoRA) inside the top layer(s) of the frozen pretrained encoder.

LoRA (Hu et al., 2022, "LoRA: Low-Rank Adaptation of Large Language Models") keeps a pretrained
weight ``W`` frozen and learns a low-rank update: ``y = W x + b + (alpha / r) B A x`` with
``A: [r, in]`` (random) and ``B: [out, r]`` (zero, so training starts from the pretrained
function). Here the adapters go into the attention projections of the transformer layers that
:class:`~mamlkit.text.last_layers.LastLayersClassifier` runs on cached lower-layer states; every
pretrained weight is frozen (``requires_grad=False``), so MAML with ``adapt=None`` adapts and
meta-learns only the adapters and the classification head: a meta-learned initialisation of the
encoder's change per task, beyond a frozen encoder (the idea of Bansal et al., 2020, at a
fraction of the parameters).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mamlkit.text.last_layers import LastLayersClassifier

LORA_TARGETS = ("query", "value")
"""The projections of each :class:`~mamlkit.text.last_layers.BertLayer` that get adapters (the
original paper's choice for attention)."""


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable rank-``rank`` update scaled by ``alpha / rank``."""

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 16.0) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}.")
        self.base = base.requires_grad_(False)
        self.scaling = float(alpha) / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        """``base(x) + scaling * x A^T B^T``."""
        return self.base(x) + self.scaling * ((x @ self.lora_a.t()) @ self.lora_b.t())


def add_lora(model: LastLayersClassifier, targets: Sequence[str] = LORA_TARGETS, rank: int = 8,
             alpha: float = 16.0) -> LastLayersClassifier:
    """Freeze every transformer weight of ``model`` and wrap the ``targets`` projections of each
    layer in :class:`LoRALinear` (in place); the head stays trainable. Returns ``model``."""
    model.layers.requires_grad_(False)
    for layer in model.layers:
        for name in targets:
            linear = getattr(layer, name, None)
            if not isinstance(linear, nn.Linear):
                known = [n for n, m in layer.named_children() if isinstance(m, nn.Linear)]
                raise ValueError(f"LoRA target {name!r} is not an nn.Linear of the layer; choose "
                                 f"among {known}.")
            setattr(layer, name, LoRALinear(linear, rank, alpha))
    return model


def lora_parameter_count(model: nn.Module) -> tuple[int, int]:
    """(trainable, frozen) parameter counts of ``model``."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return trainable, frozen
