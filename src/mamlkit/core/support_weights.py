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

``"robust-prototype"`` computes the weights once per task, from the features under the
*starting* parameters (the meta-learned initialisation), by iteratively reweighted prototypes:
each round recomputes the leave-one-out prototypes with every example counted by its previous
weight, so a class's wrong labels stop pulling its prototype (an M-estimate of the class mean,
as in iteratively reweighted least squares). The weights then stay fixed through the inner
loop: the adaptation cannot fit the wrong labels into the features the weights come from, and
inside the inner gradient they are constants. The outer loop still sees through them (to the
initialisation's features and the temperature), so meta-training shapes features whose
agreement flags wrong labels, most of all with noise-aware meta-training.

An example that is the only one of its label has no prototype to agree with and keeps weight 1,
so in 1-shot episodes the weights change nothing unless corruption put two examples in one class.
The features are the input of the model's last ``nn.Linear`` (or of a named ``feature_module``),
captured by a forward pre-hook during the support forward pass, so no extra forward runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mamlkit.core.robust_losses import (
    CLASSIFICATION_LOSSES,
    PER_EXAMPLE_LOSSES,
    ROBUST_LOSSES,
    PerExampleLoss,
)

SUPPORT_WEIGHTINGS = ("prototype", "robust-prototype")
"""Names accepted by ``support_weights=``; ``"prototype:T"`` also sets the initial temperature
``T`` (default 0.1; a large one such as 1.0 starts with nearly uniform weights).
``"prototype"``: one round of agreement, recomputed at every inner step from the adapting
features; ``"robust-prototype"``: :data:`ROBUST_ROUNDS` reweighted rounds, once per task at the
starting parameters, then fixed (see the module doc)."""
DEFAULT_TEMPERATURE = 0.1
ROBUST_ROUNDS = 5
"""Rounds of reweighting of ``"robust-prototype"``, chosen in an exploratory run on Omniglot
5-way 5-shot with 40% wrong labels (plain MAML's features, 30 episodes, ``docs/noise.md``): one
round cut MAML's accuracy drop from 38.6 to 23.7 points, three to 18.0, five to 16.4, and ten
gave no more (16.8)."""


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
        rounds: rounds of reweighting; in round ``r > 1`` every example counts in the
            leave-one-out prototypes by its agreement of round ``r - 1``.
    """

    def __init__(self, temperature: float = 0.1, rounds: int = 1) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"The prototype-agreement temperature must be > 0, got {temperature!r}.")
        if rounds < 1:
            raise ValueError(f"The prototype agreement needs at least one round, got {rounds!r}.")
        self.log_temperature = nn.Parameter(torch.tensor(float(temperature)).log())
        self.rounds = rounds

    def forward(self, features: Tensor, labels: Tensor, ways: int) -> Tensor:
        """Weights of the examples with ``features`` ``[n, ...]`` and integer ``labels`` ``[n]``."""
        feats = F.normalize(features.reshape(features.shape[0], -1), dim=-1)
        classes = torch.arange(ways, device=labels.device)
        onehot = (labels.unsqueeze(-1) == classes).to(feats.dtype)           # [n, ways]
        others = onehot.sum(0, keepdim=True) - onehot                         # [n, ways]
        alone = (others * onehot).sum(-1) == 0
        temperature = self.log_temperature.exp().to(feats.dtype)
        weights = torch.ones_like(feats[:, 0])
        for _ in range(self.rounds):
            share = onehot * weights.unsqueeze(-1)                            # [n, ways]
            sums = share.transpose(0, 1) @ feats                              # [ways, d]
            loo = sums.unsqueeze(0) - share.unsqueeze(-1) * feats.unsqueeze(1)  # [n, ways, d]
            mass = share.sum(0, keepdim=True) - share                         # [n, ways]
            prototypes = loo / mass.clamp(min=1e-12).unsqueeze(-1)
            distance = (feats.unsqueeze(1) - prototypes).pow(2).sum(-1)       # [n, ways]
            logits = torch.where(others > 0, -distance / temperature,
                                 torch.full_like(distance, -1e4))
            agreement = (F.softmax(logits, dim=-1) * onehot).sum(-1)          # p(given label)
            weights = torch.where(alone, torch.ones_like(agreement), agreement)
        return weights / weights.mean().clamp(min=1e-12)


def weighted_prototypes(embeddings: Tensor, labels: Tensor, ways: int, weights: Tensor) -> Tensor:
    """Class means of ``embeddings`` ``[n, d]`` with example ``i`` counted ``weights[i]`` times,
    ``[ways, d]``: robust prototypes when the weights discount examples that disagree with their
    label (:class:`PrototypeAgreement`). A class without examples gets a zero prototype; one-hot
    products only, so it runs under ``vmap``."""
    share = F.one_hot(labels, ways).to(embeddings.dtype) * weights.unsqueeze(-1)  # [n, ways]
    flat = embeddings.reshape(embeddings.shape[0], -1)
    return share.transpose(0, 1) @ flat / share.sum(0).clamp(min=1e-12).unsqueeze(-1)


class SupportLoss(nn.Module):
    """The inner loop's loss when it is not the task's own: a robust loss
    (:mod:`mamlkit.core.robust_losses`) and/or per-example :class:`PrototypeAgreement` weights.

    Built by :func:`support_loss_for` from a learner's ``inner_loss`` and ``support_weights``;
    a module so that the weights' temperature is a parameter of the learner (meta-learned and
    saved with it).
    """

    def __init__(self, loss: Callable[[Tensor, Tensor], Tensor] | None,
                 per_example: PerExampleLoss | None, feature_module: str | None,
                 dtype: torch.dtype, temperature: float = DEFAULT_TEMPERATURE,
                 at_start: bool = False) -> None:
        super().__init__()
        self.loss, self.per_example, self.feature_module = loss, per_example, feature_module
        self.at_start = at_start
        """Whether the weights are computed once, at the inner loop's starting parameters
        (:meth:`weights_of` there), and held fixed (``"robust-prototype"``)."""
        self.weighting = (PrototypeAgreement(temperature, ROBUST_ROUNDS if at_start else 1)
                          .to(dtype) if feature_module is not None else None)

    def weights_of(self, model: nn.Module, run: Callable[[], Tensor], labels: Tensor
                   ) -> tuple[Tensor, Tensor]:
        """The outputs ``run()`` computes and the agreement weights of their features."""
        with captured_input(model.get_submodule(self.feature_module)) as captured:
            outputs = run()
        return outputs, self.weighting(captured[-1], labels, outputs.shape[-1])

    def forward(self, model: nn.Module, run: Callable[[], Tensor], labels: Tensor,
                weights: Tensor | None = None) -> Tensor:
        """The loss of the outputs ``run()`` computes for the support examples with ``labels``,
        with the given fixed ``weights`` (from the start of the inner loop) or ones computed
        now."""
        if self.weighting is None:
            return self.loss(run(), labels)
        if weights is None:
            outputs, weights = self.weights_of(model, run, labels)
        else:
            outputs = run()
        return (weights * self.per_example(outputs, labels)).mean()


def support_loss_for(model: nn.Module, loss_name: str, inner_loss: str | Callable | None,
                     support_weights: str | None, allowed: bool, owner: str) -> SupportLoss | None:
    """The :class:`SupportLoss` for a learner's options, or None when the inner loop uses the
    task's own loss; ``ValueError`` with the fix for impossible combinations."""
    if inner_loss is None and support_weights is None:
        return None
    if not allowed:
        raise ValueError(f"{owner} computes its own inner-loop loss: inner_loss and support_weights "
                         "apply to MAML, FOMAML, Meta-SGD, Reptile and iMAML.")
    from mamlkit.core.losses import resolve_loss

    name = inner_loss if isinstance(inner_loss, str) else loss_name if inner_loss is None else None
    if inner_loss is None:
        loss = None  # the weighted per-example form of the task's loss is used
    elif isinstance(inner_loss, str) and inner_loss in ROBUST_LOSSES:
        loss = ROBUST_LOSSES[inner_loss]
    else:
        loss = resolve_loss(inner_loss)
    reference = next(model.parameters())
    if support_weights is None:
        return SupportLoss(loss, None, None, reference.dtype)
    weighting, _, temperature = str(support_weights).partition(":")
    if weighting not in SUPPORT_WEIGHTINGS:
        raise ValueError(f"Unknown support_weights {support_weights!r}; choose one of "
                         f"{', '.join(SUPPORT_WEIGHTINGS)} (optionally with an initial "
                         "temperature, as in prototype:1.0) or None.")
    try:
        temperature = float(temperature) if temperature else DEFAULT_TEMPERATURE
    except ValueError:
        raise ValueError(f"support_weights {support_weights!r}: the initial temperature after "
                         "':' must be a number > 0, as in prototype:1.0.") from None
    if name not in CLASSIFICATION_LOSSES:
        raise ValueError(f"support_weights={support_weights!r} weights support examples by class "
                         f"agreement, which needs a classification loss "
                         f"({', '.join(CLASSIFICATION_LOSSES)} by name), not {name!r}.")
    return SupportLoss(loss, PER_EXAMPLE_LOSSES[name], last_linear(model), reference.dtype,
                       temperature, at_start=weighting == "robust-prototype")
