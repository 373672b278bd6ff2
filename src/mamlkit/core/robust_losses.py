"""Losses that tolerate wrong support targets, per example and reduced, for the inner loop.

With a handful of support examples one wrong label can dominate the inner gradient of the cross
entropy (its gradient grows as the predicted probability of the given label shrinks). Bounded
losses cap that pull:

- generalized cross-entropy, ``(1 - p_y^q) / q`` (Zhang & Sabuncu, "Generalized Cross Entropy Loss
  for Training Deep Neural Networks with Noisy Labels", NeurIPS 2018): cross entropy as ``q -> 0``,
  mean absolute error at ``q = 1``;
- symmetric cross-entropy, ``alpha * CE + beta * RCE`` with the reverse cross entropy
  ``RCE = -A (1 - p_y)`` for ``log 0 := A`` (Wang et al., "Symmetric Cross Entropy for Robust
  Learning with Noisy Labels", ICCV 2019; their ``A = -4``);
- Huber for regression targets (quadratic below ``delta``, linear above: outliers pull linearly).

Every loss here has a per-example form (``[examples]``), which per-example weights need, and a
reduced form (the mean) registered in :data:`ROBUST_LOSSES`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

PerExampleLoss = Callable[[Tensor, Tensor], Tensor]
"""``loss(outputs [n, ...], targets [n, ...]) -> [n]``: one loss value per example."""

GCE_Q = 0.7
"""Zhang & Sabuncu's recommended exponent."""
SCE_ALPHA, SCE_BETA, SCE_LOG_ZERO = 0.1, 1.0, -4.0
"""Wang et al.'s CIFAR-10 settings."""
HUBER_DELTA = 1.0


def cross_entropy_per_example(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross entropy of every example, ``[n]``."""
    return F.cross_entropy(logits, labels, reduction="none")


def mse_per_example(outputs: Tensor, targets: Tensor) -> Tensor:
    """Squared error of every example, averaged over its output dimensions, ``[n]``."""
    return (outputs - targets).pow(2).reshape(outputs.shape[0], -1).mean(dim=1)


def generalized_cross_entropy_per_example(logits: Tensor, labels: Tensor, q: float = GCE_Q
                                          ) -> Tensor:
    """``(1 - p_y^q) / q`` of every example, ``[n]`` (Zhang & Sabuncu, 2018)."""
    log_p = F.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return (1 - (q * log_p).exp()) / q


def symmetric_cross_entropy_per_example(logits: Tensor, labels: Tensor, alpha: float = SCE_ALPHA,
                                        beta: float = SCE_BETA, log_zero: float = SCE_LOG_ZERO
                                        ) -> Tensor:
    """``alpha * CE + beta * RCE`` of every example, ``[n]`` (Wang et al., 2019)."""
    log_p = F.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    reverse = -log_zero * (1 - log_p.exp())
    return alpha * (-log_p) + beta * reverse


def huber_per_example(outputs: Tensor, targets: Tensor, delta: float = HUBER_DELTA) -> Tensor:
    """Huber loss of every example, averaged over its output dimensions, ``[n]``."""
    loss = F.huber_loss(outputs, targets, reduction="none", delta=delta)
    return loss.reshape(outputs.shape[0], -1).mean(dim=1)


PER_EXAMPLE_LOSSES: dict[str, PerExampleLoss] = {
    "cross_entropy": cross_entropy_per_example,
    "mse": mse_per_example,
    "gce": generalized_cross_entropy_per_example,
    "sce": symmetric_cross_entropy_per_example,
    "huber": huber_per_example,
}
"""Loss name -> per-example form, for the built-in losses and the robust ones."""

CLASSIFICATION_LOSSES = ("cross_entropy", "gce", "sce")
"""Losses of logits against integer labels."""


def _mean_of(per_example: PerExampleLoss, name: str) -> Callable[[Tensor, Tensor], Tensor]:
    def loss(outputs: Tensor, targets: Tensor) -> Tensor:
        return per_example(outputs, targets).mean()

    loss.__name__ = name
    loss.__doc__ = f"Mean over the examples of :func:`{per_example.__name__}`."
    return loss


generalized_cross_entropy = _mean_of(generalized_cross_entropy_per_example,
                                     "generalized_cross_entropy")
symmetric_cross_entropy = _mean_of(symmetric_cross_entropy_per_example, "symmetric_cross_entropy")
huber = _mean_of(huber_per_example, "huber")

ROBUST_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "gce": generalized_cross_entropy,
    "sce": symmetric_cross_entropy,
    "huber": huber,
}
"""Name -> reduced robust loss, usable wherever a loss name is (``inner_loss="gce"``)."""
