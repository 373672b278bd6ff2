"""Which ``torch.func`` transforms are active: lets fast eager paths step aside under them.

Read from functorch's interpreter stack (a private but stable API since torch 2.0); where it is
missing, every answer is the safe one (a transform is assumed active).
"""

from __future__ import annotations

import torch

try:
    from torch._C._functorch import TransformType
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters
except ImportError:  # pragma: no cover - depends on the torch build
    retrieve_all_functorch_interpreters = None


def under_vmap() -> bool:
    """Whether the caller runs inside ``torch.func.vmap`` (True when it cannot be told)."""
    if retrieve_all_functorch_interpreters is None:  # pragma: no cover
        return True
    return any(i.key() == TransformType.Vmap for i in retrieve_all_functorch_interpreters())


def plain_autograd_available() -> bool:
    """Whether ``torch.autograd.grad`` can stand in for ``torch.func.grad``: no functorch
    transform is active and the code is not being traced by ``torch.compile``."""
    if retrieve_all_functorch_interpreters is None or torch.compiler.is_compiling():
        return False
    return not retrieve_all_functorch_interpreters()
