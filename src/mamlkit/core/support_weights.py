"""Per-example weights for the inner loop's support loss: trust examples that agree with their class.

A support example with a wrong label sits, in the network's feature space, closer to the examples
of another class than to those that share its label. :class:`PrototypeAgreement` gives each
support example the probability that a leave-one-out prototype classifier (Snell et al.,
"Prototypical Networks for Few-shot Learning", NeurIPS 2017) assigns to its *given* label, so the
inner loss ``sum_i w_i l_i / n`` discounts the examples that disagree; the weights are normalised
to mean 1, so with clean, well-separated classes the loss is the usual mean. Its temperature is a
meta-learned parameter (the outer loop sees through the weights), in the spirit of meta-learned
example weighting (Shu et al., "Meta-Weight-Net", NeurIPS 2019; Ren et al., "Learning to
Reweight Examples for Robust Deep Learning", ICML 2018), here from agreement rather than from the
loss value alone, which at a meta-learned initialisation is nearly the same for every example.

An example that is the only one of its label has no prototype to agree with and keeps weight 1,
so in 1-shot episodes the weights change nothing unless corruption put two examples in one class.
The features are the input of the model's last ``nn.Linear`` (or of a named ``feature_module``),
captured by a forward pre-hook during the support forward pass, so no extra forward runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SUPPORT_WEIGHTINGS = ("prototype",)
"""Names accepted by ``support_weights=``."""


def last_linear(model: nn.Module) -> str:
    """Name of the last ``nn.Linear`` submodule (whose input are the model's features)."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names or names[-1] == "":
        raise ValueError("support_weights='prototype' reads features at the input of the model's last "
                         "nn.Linear layer, but the model has none; pass feature_module='<module name>'.")
    return names[-1]


@contextmanager
def captured_input(module: nn.Module) -> Iterator[list[Tensor]]:
    """The tensors passed to ``module`` while the context is open (a forward pre-hook)."""
    captured: list[Tensor] = []

    def hook(_: nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], Tensor):
            captured.append(args[0])

    handle = module.register_forward_pre_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


class PrototypeAgreement(nn.Module):
    """Weights ``[n]`` of support examples from leave-one-out prototype agreement (see module doc).

    Args:
        temperature: initial softmax temperature over cosine distances (meta-learned, kept > 0).
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"The prototype-agreement temperature must be > 0, got {temperature!r}.")
        self.log_temperature = nn.Parameter(torch.tensor(float(temperature)).log())

    def forward(self, features: Tensor, labels: Tensor, ways: int) -> Tensor:
        """Weights of the examples with ``features`` ``[n, ...]`` and integer ``labels`` ``[n]``."""
        feats = F.normalize(features.reshape(features.shape[0], -1), dim=-1)
        classes = torch.arange(ways, device=labels.device)
        onehot = (labels.unsqueeze(-1) == classes).to(feats.dtype)           # [n, ways]
        others = onehot.sum(0, keepdim=True) - onehot                         # [n, ways]
        sums = onehot.transpose(0, 1) @ feats                                 # [ways, d]
        loo = sums.unsqueeze(0) - onehot.unsqueeze(-1) * feats.unsqueeze(1)   # [n, ways, d]
        prototypes = loo / others.clamp(min=1).unsqueeze(-1)
        distance = (feats.unsqueeze(1) - prototypes).pow(2).sum(-1)           # [n, ways]
        temperature = self.log_temperature.exp().to(feats.dtype)
        logits = torch.where(others > 0, -distance / temperature, torch.full_like(distance, -1e4))
        agreement = (F.softmax(logits, dim=-1) * onehot).sum(-1)              # p(given label)
        alone = (others * onehot).sum(-1) == 0
        weights = torch.where(alone, torch.ones_like(agreement), agreement)
        return weights / weights.mean().clamp(min=1e-12)
