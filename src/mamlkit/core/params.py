"""Parameters as dicts: reading them off a module and choosing which ones adapt."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import Tensor, nn

Params = dict[str, Tensor]
"""A model's parameters (or buffers) by their ``named_parameters`` name."""

AdaptSelector = None | str | Iterable[str] | Callable[[str, Tensor], bool]
"""Which parameters adapt in the inner loop: ``None`` (all that require grad), a name prefix,
names/prefixes, or a predicate ``(name, tensor) -> bool``."""


def named_params(module: nn.Module) -> Params:
    """The module's parameters as a ``{name: tensor}`` dict (the tensors themselves, not copies)."""
    return dict(module.named_parameters())


def named_buffers(module: nn.Module) -> Params:
    """The module's buffers (BatchNorm running statistics, ...) as a ``{name: tensor}`` dict."""
    return dict(module.named_buffers())


def parameter_aliases(module: nn.Module) -> dict[str, str]:
    """Every name of every parameter, mapped to its ``named_parameters`` name.

    A parameter shared by two modules (tied weights, such as a decoder reusing the encoder's
    embedding) has one name in ``named_parameters()`` and more in
    ``named_parameters(remove_duplicate=False)``; selections and per-parameter rates may use any
    of them.
    """
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, parameter in module.named_parameters(remove_duplicate=False):
        aliases[name] = first.setdefault(id(parameter), name)
    return aliases


def select_names(params: Params, adapt: AdaptSelector,
                 aliases: dict[str, str] | None = None) -> tuple[str, ...]:
    """Names of the parameters chosen by ``adapt`` (see :data:`AdaptSelector`).

    ``None`` selects the parameters that require grad: a frozen parameter
    (``requires_grad=False``, a frozen backbone, PEFT's base weights) is neither adapted nor
    meta-learned. A string or iterable entry matches a parameter whose name, or any other name
    it has (``aliases``, see :func:`parameter_aliases`), equals it or starts with it followed by a
    dot (``"head"`` matches ``"head.weight"``). Raises ``ValueError`` when an entry matches nothing
    (a typo would otherwise silently freeze the whole model) or when nothing at all is selected.
    """
    aliases = aliases or {n: n for n in params}
    if adapt is None:
        chosen = [name for name, value in params.items() if value.requires_grad]
    elif callable(adapt):
        chosen = [aliases[name] for name in aliases if adapt(name, params[aliases[name]])]
    else:
        entries = [adapt] if isinstance(adapt, str) else list(adapt)
        chosen = []
        for entry in entries:
            hits = [aliases[n] for n in aliases if n == entry or n.startswith(entry + ".")]
            if not hits:
                raise ValueError(
                    f"adapt={entry!r} matches no parameter of the model. "
                    f"Known parameter names: {sorted(aliases)}"
                )
            chosen.extend(h for h in hits if h not in chosen)
    if not chosen:
        raise ValueError(
            "No parameter is selected to adapt in the inner loop (adapt=None selects the "
            "parameters that require grad). Unfreeze some parameters, or pass names/prefixes "
            "that exist in the model."
        )
    return tuple(n for n in params if n in chosen)
