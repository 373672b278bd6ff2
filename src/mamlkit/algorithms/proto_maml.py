"""ProtoMAML: MAML whose linear head starts every task as a prototypical classifier.

Triantafillou et al., "Meta-Dataset: A Dataset of Datasets for Learning to Learn from Few
Examples", ICLR 2020. Before the inner loop, each task's final linear layer is set from the
support set's class prototypes ``c_k`` (mean embeddings, the head's input): ``W_k = 2 c_k`` and
``b_k = -||c_k||^2``, so its logits ``2 c_k . z - ||c_k||^2`` equal Prototypical Networks' negative
squared distances up to a term common to all classes. Then MAML's inner loop adapts every
parameter (or those chosen by ``adapt=``) from there. The initialisation is a function of the
body's parameters and stays in the graph, so the outer gradient reaches the body through it too;
``first_order`` drops only the inner gradients' second-order term, as in MAML (the paper's
fo-Proto-MAML). Inner gradients are partial derivatives: the body's step holds the head fixed
(:func:`mamlkit.core.inner_loop.loss_gradient`).
The head's own meta-parameters are replaced in every task and get no gradient.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from mamlkit.algorithms.prototypes import (
    class_prototypes,
    head_input,
    refuse_regression,
    resolve_head,
)
from mamlkit.core.inner_loop import InnerProblem
from mamlkit.core.learner import MetaLearner
from mamlkit.core.params import Params
from mamlkit.core.support_weights import weighted_prototypes


class ProtoMAML(MetaLearner):
    """ProtoMAML (Triantafillou et al., ICLR 2020): MAML with the head initialised from prototypes.

    Args:
        model: a classifier whose head (by default its last ``nn.Linear``, which must have a
            bias) maps the embedding to one logit per class of the episode.
        head: module name of that ``nn.Linear`` (``"classifier"``, ``"2"`` in a Sequential).
        weighted_prototypes: count each support example in its class prototype by its
            prototype-agreement weight (needs ``support_weights="prototype"`` or
            ``"robust-prototype"``, whose weights,
            meta-learned temperature included, also weight the inner loss): prototypes that
            discount examples whose label disagrees with the others of their class, for noisy
            support sets (``docs/noise.md``).
        **kwargs: the driver's arguments (:class:`~mamlkit.core.learner.MetaLearner`); the loss
            defaults to ``"cross_entropy"``.
    """

    inner_checkpointable = False  # its inner problem is its own

    task_threads_safe = False  # the embedding is read by a hook on the shared head module

    def __init__(self, model: nn.Module, *, head: str | None = None,
                 weighted_prototypes: bool = False, **kwargs: Any) -> None:
        head = resolve_head(model, head, "ProtoMAML")
        module = model.get_submodule(head)
        if not isinstance(module, nn.Linear) or module.bias is None:
            kind = ("an nn.Linear without a bias" if isinstance(module, nn.Linear)
                    else f"a {type(module).__name__}")
            raise ValueError(f"ProtoMAML sets the weight and bias of a linear head from "
                             f"prototypes, but {head!r} is {kind}; name an nn.Linear with a bias "
                             "with head=.")
        kwargs.setdefault("loss", "cross_entropy")
        super().__init__(model, **kwargs)
        refuse_regression(self, "ProtoMAML")
        self.head_name = head
        self.ways = module.out_features
        self.weighted_prototypes = bool(weighted_prototypes)
        weighting = getattr(self.support_objective, "weighting", None)
        if self.weighted_prototypes and weighting is None:
            raise ValueError("ProtoMAML(weighted_prototypes=True) weights the prototypes by "
                             "prototype agreement: pass support_weights='prototype' (or "
                             "'robust-prototype') as well.")

    def prototype_head(self, params: Params, support_x: Any, support_y: Tensor) -> Params:
        """``params`` with the head set from the support set's class prototypes under them."""
        embeddings = head_input(self.model, self.head_name,
                                lambda: self.functional_forward(params, support_x))
        if self.weighted_prototypes:
            weights = self.support_objective.weighting(embeddings, support_y, self.ways)
            prototypes = weighted_prototypes(embeddings, support_y, self.ways, weights)
        else:
            prototypes = class_prototypes(embeddings, support_y, self.ways)
        return {**params, f"{self.head_name}.weight": 2 * prototypes,
                f"{self.head_name}.bias": -(prototypes ** 2).sum(-1)}

    def inner_problem(self, params: Params, support_x: Any, support_y: Tensor,
                      first_order: bool) -> InnerProblem:
        """MAML's inner problem from the prototype-initialised head (the inner loop's gradients
        are partial derivatives: the body's step holds the head fixed)."""
        return super().inner_problem(self.prototype_head(params, support_x, support_y),
                                     support_x, support_y, first_order)
