"""Parameters as dicts: reading them off a module and choosing which ones adapt."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import Tensor, nn

Params = dict[str, Tensor]
"""A model's parameters (or buffers) by their ``named_parameters`` name."""

AdaptSelector = None | str | Iterable[str] | Callable[[str, Tensor], bool]
"""Which parameters adapt in the inner loop: ``None`` (all), a name prefix, names/prefixes, or a
predicate ``(name, tensor) -> bool``."""


def named_params(module: nn.Module) -> Params:
    """The module's parameters as a ``{name: tensor}`` dict (the tensors themselves, not copies)."""
    return dict(module.named_parameters())


def named_buffers(module: nn.Module) -> Params:
    """The module's buffers (BatchNorm running statistics, ...) as a ``{name: tensor}`` dict."""
    return dict(module.named_buffers())


def select_names(params: Params, adapt: AdaptSelector) -> tuple[str, ...]:
    """Names of the parameters chosen by ``adapt`` (see :data:`AdaptSelector`).

    A string or iterable entry matches a parameter whose name equals it or starts with it
    followed by a dot (``"head"`` matches ``"head.weight"``). Raises ``ValueError`` when an
    entry matches nothing (a typo would otherwise silently freeze the whole model) or when
    nothing at all is selected.
    """
    if adapt is None:
        chosen = list(params)
    elif callable(adapt):
        chosen = [name for name, value in params.items() if adapt(name, value)]
    else:
        entries = [adapt] if isinstance(adapt, str) else list(adapt)
        chosen = []
        for entry in entries:
            hits = [n for n in params if n == entry or n.startswith(entry + ".")]
            if not hits:
                raise ValueError(
                    f"adapt={entry!r} matches no parameter of the model. "
                    f"Known parameter names: {sorted(params)}"
                )
            chosen.extend(h for h in hits if h not in chosen)
    if not chosen:
        raise ValueError(
            "No parameter is selected to adapt in the inner loop. Pass adapt=None to adapt all "
            "parameters, or names/prefixes that exist in the model."
        )
    return tuple(n for n in params if n in chosen)
