"""Task losses by name, and the per-task metrics that go with them."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

LossFn = Callable[[Tensor, Tensor], Tensor]
"""``loss(outputs, targets) -> scalar``, evaluated on one task's examples."""

LOSSES: dict[str, LossFn] = {
    "mse": F.mse_loss,
    "cross_entropy": F.cross_entropy,
}


def resolve_loss(loss: str | LossFn) -> LossFn:
    """A loss callable from a name in :data:`LOSSES` or a user-supplied callable."""
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise ValueError(f"Unknown loss {loss!r}; use one of {sorted(LOSSES)} or pass a callable "
                         "loss(outputs, targets) -> scalar tensor.")
    return LOSSES[loss]


def is_classification(loss: str | LossFn) -> bool:
    """Whether accuracy is a meaningful metric for this loss."""
    return loss == "cross_entropy" or loss is F.cross_entropy


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Fraction of correctly classified examples (a float scalar tensor)."""
    return (logits.argmax(dim=-1) == labels).float().mean()
