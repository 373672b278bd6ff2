"""Meta-SGD: the inner learning rate is learned, one rate per element of every adapted parameter.

Li, Zhou, Chen & Li, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning", arXiv:1707.09835,
2017. The inner update is ``phi = theta - alpha * grad`` with ``alpha`` a tensor of the same shape
as ``theta`` (element-wise product), and ``alpha`` is meta-learned jointly with ``theta`` by the
same outer optimizer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from mamlkit.core.inner_optim import SGD, LearnedRates, learned_rate_table, parameter_key
from mamlkit.core.learner import MetaLearner

__all__ = ["MetaSGD", "parameter_key"]


class MetaSGD(MetaLearner):
    """Meta-SGD (Li et al., 2017): per-element learned inner learning rates.

    The learned rates are ``nn.Parameter``s of this learner (``learner.inner_lr_params``), so
    ``learner.parameters()`` hands them to the outer optimizer and ``state_dict()`` saves them;
    the inner optimizer is SGD with these rates (:class:`~mamlkit.core.inner_optim.LearnedRates`).
    ``inner_lr`` (float or ``{name: float}``) is their initial value. The paper uses one inner
    step; more steps reuse the same rates. Every other argument is the driver's
    (:class:`~mamlkit.core.learner.MetaLearner`).
    """

    def __init__(self, model: nn.Module, *, inner_lr: float | Mapping[str, float] = 0.01,
                 **kwargs: Any) -> None:
        super().__init__(model, inner_lr=inner_lr, **kwargs)
        self.inner_lr_params = learned_rate_table(self.meta_params(), self.adapted_names,
                                                  self.inner_lr)
        self.inner_optimizer = SGD(LearnedRates(self.inner_lr_params, self.adapted_names))
