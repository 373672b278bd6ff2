"""BOIL: Body Only update in Inner Loop.

Oh, Yoo, Kim & Yun, "BOIL: Towards Representation Change for Few-shot Learning", ICLR 2021.
The opposite of ANIL: in the inner loop only the body (the feature extractor) adapts and the head
is frozen (the paper sets its inner learning rate to zero), so adaptation must change the
representation rather than the decision boundary. The head is still meta-learned in the outer
loop, like every other parameter. The meta-gradient is exactly MAML's with ``adapt=`` everything
but the head.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from mamlkit.algorithms.prototypes import in_module, resolve_head
from mamlkit.core.learner import MetaLearner


class BOIL(MetaLearner):
    """BOIL (Oh et al., ICLR 2021): adapt the body only; the head is frozen in the inner loop.

    Args:
        model: any ``nn.Module`` with a head submodule (by default its last ``nn.Linear``).
        head: module name of the head (``"classifier"``, ``"2"`` in an ``nn.Sequential``).
        **kwargs: the driver's arguments (:class:`~mamlkit.core.learner.MetaLearner`), except
            ``adapt``, which is every trainable parameter outside the head by definition.
    """

    def __init__(self, model: nn.Module, *, head: str | None = None, **kwargs: Any) -> None:
        if "adapt" in kwargs:
            raise ValueError("BOIL adapts every parameter outside the head; choose the head with "
                             "head='<module name>' instead of adapt=.")
        head = resolve_head(model, head, "BOIL")

        def body(name: str, value: Tensor) -> bool:
            return value.requires_grad and not in_module(name, head)

        if not any(body(n, p) for n, p in model.named_parameters()):
            raise ValueError(f"BOIL: every trainable parameter is in the head {head!r}, so no body "
                             "is left to adapt; name a smaller head with head=.")
        super().__init__(model, adapt=body, **kwargs)
        self.head_name = head
