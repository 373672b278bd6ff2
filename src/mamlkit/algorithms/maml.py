"""MAML and first-order MAML.

Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks",
ICML 2017. MAML is exactly the shared driver's default behaviour: adapt by SGD on the support
set, score on the query set, differentiate through the adaptation.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mamlkit.core.learner import MetaLearner


class MAML(MetaLearner):
    """Model-Agnostic Meta-Learning (Finn et al., ICML 2017), second order by default.

    ``MAML(model, inner_lr=0.01, inner_steps=1)``; pass ``first_order=True`` for FOMAML.
    See :class:`~mamlkit.core.learner.MetaLearner` for every argument.
    """


class FOMAML(MetaLearner):
    """First-order MAML (Finn et al., ICML 2017, Section 5.2): the meta-gradient ignores the
    second-order term, i.e. it is the query-loss gradient at the adapted parameters."""

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        kwargs.setdefault("first_order", True)
        if not kwargs["first_order"]:
            raise ValueError("FOMAML is first order by definition; use MAML for second order.")
        super().__init__(model, **kwargs)
