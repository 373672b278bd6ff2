"""Meta-SGD: the inner learning rate is learned, one rate per element of every adapted parameter.

Li, Zhou, Chen & Li, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning", arXiv:1707.09835,
2017. The inner update is ``phi = theta - alpha * grad`` with ``alpha`` a tensor of the same shape
as ``theta`` (element-wise product), and ``alpha`` is meta-learned jointly with ``theta`` by the
same outer optimizer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mamlkit.core.learner import MetaLearner


def parameter_key(name: str) -> str:
    """A parameter name usable as an ``nn.ParameterDict`` key (dots are not allowed there)."""
    return name.replace(".", "__")


class MetaSGD(MetaLearner):
    """Meta-SGD (Li et al., 2017): per-element learned inner learning rates.

    The learned rates are ``nn.Parameter``s of this learner (``learner.inner_lr_params``), so
    ``learner.parameters()`` hands them to the outer optimizer and ``state_dict()`` saves them.
    ``inner_lr`` (float or ``{name: float}``) is their initial value. The paper uses one inner
    step; more steps reuse the same rates. Every other argument is the driver's
    (:class:`~mamlkit.core.learner.MetaLearner`).
    """

    def __init__(self, model: nn.Module, *, inner_lr: float | Mapping[str, float] = 0.01,
                 **kwargs: Any) -> None:
        super().__init__(model, inner_lr=inner_lr, **kwargs)
        params = self.meta_params()
        self.inner_lr_params = nn.ParameterDict({
            parameter_key(name): nn.Parameter(torch.full_like(params[name].detach(),
                                                              float(self.inner_lr[name])))
            for name in self.adapted_names
        })

    def inner_lrs(self, step: int) -> dict[str, Tensor]:
        """The learned per-element rates (the same at every step)."""
        return {name: self.inner_lr_params[parameter_key(name)] for name in self.adapted_names}
