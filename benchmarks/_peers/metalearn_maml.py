"""parallel-metalearn (import name ``metalearn``): its ``MAML`` meta-optimiser, built as its README shows.

The README's pattern: ``MAML_Model(backbone=..., head=...)``, a ``BaseLoss`` (``CrossEntropy``;
regression needs a ``BaseLoss`` subclass, written here as its README says), ``InnerSGD`` and
``MAML(..., backend=...).step(task_iterator)``. Its layers receive the keyword arguments
``training`` and ``num_step`` from ``MAML_Model``; the backbone here is a chain of the workload
network's own layers that hands those to the layers that take them.

Variants (``metalearn:VARIANT``): ``vmap`` and ``sequential`` (its two backends) with its own
``BatchNorm`` layer in place of ``nn.BatchNorm2d`` (as its ``CNN2D4L_Backbone`` builds it; its
``ModelTranslator`` would do the same but fails in 0.5.6: it passes ``learn_gamma`` to a
``BatchNorm`` that does not take it); a
``+bn2d`` suffix keeps PyTorch's ``nn.BatchNorm2d`` without running statistics and ``+bn2d-stats``
keeps it with running statistics tracked (the workload network's own layer), to show what
happens to a stock module under its backends.

The parameters are the workload network's own ``Parameter`` objects (the translated layers are
rebound to them), so the meta-gradient lands where the benchmark reads it. Its ``step()`` also
zeroes the gradients and steps an outer optimiser itself; it is given one whose ``step`` does
nothing, and the benchmark's Adam steps as for every other implementation. Its learnable inner
learning rate is turned off (``learn_lr=False``: plain MAML) and cast to the model's dtype with
the exact value, so a float64 check compares float64 learning rates (it stores ``torch.full``
float32 tensors otherwise: 0.4 becomes 0.4000000059604645).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import Tensor, nn

from benchmarks._peers.workloads import Workload

Batch = tuple[Tensor, Tensor, Tensor, Tensor]
VARIANTS = ("vmap", "sequential", "vmap+bn2d", "sequential+bn2d", "vmap+bn2d-stats",
            "sequential+bn2d-stats")
"""``backend[+norm]``: its backend, and which batch norm (its own by default)."""


def probe() -> tuple[str | None, str]:
    """parallel-metalearn's version, or None with the import error."""
    try:
        from importlib.metadata import version

        import metalearn.algorithms  # noqa: F401

        return version("parallel-metalearn"), "MAML_Model + InnerSGD + MAML.step"
    except Exception as error:  # noqa: BLE001
        return None, f"not importable: {error}"


class _NoOuterStep:
    """An outer optimiser for its ``MAML``: zeroes gradients, steps nothing (the benchmark steps)."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        self.params = params
        self.param_groups: list[dict] = []

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        return None

    def add_param_group(self, group: dict) -> None:
        self.param_groups.append(group)


class _Chain(nn.Module):
    """Layers in order; those whose ``forward`` takes ``**kwargs`` (its layers) receive them."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self._takes_kwargs = [any(p.kind is p.VAR_KEYWORD
                                  for p in inspect.signature(layer.forward).parameters.values())
                              for layer in layers]

    def forward(self, x: Tensor, **kwargs) -> Tensor:
        for layer, takes in zip(self.layers, self._takes_kwargs):
            x = layer(x, **kwargs) if takes else layer(x)
        return x


def _flat_layers(model: nn.Module) -> list[nn.Module]:
    """The workload network's leaf layers in forward order (the benchmark's MLP and CNN are
    sequential chains; the CNN's flatten is done by ``MAML_Model`` before the head)."""
    return [m for m in model.modules() if not list(m.children())]


def _translated(layers: list[nn.Module], norm: str) -> list[nn.Module]:
    """``layers`` with ``nn.BatchNorm2d`` replaced by its ``BatchNorm`` (``norm == ""``), by one
    without running statistics (``"bn2d"``) or unchanged (``"bn2d-stats"``); replacements are
    bound to the original parameters."""
    from metalearn.nn_models.basic_layers import BatchNorm

    out = []
    for layer in layers:
        if isinstance(layer, nn.BatchNorm2d) and norm == "":
            converted = BatchNorm(layer.num_features, eps=layer.eps, momentum=layer.momentum,
                                  track_running_stats=layer.track_running_stats)
            converted.weight, converted.bias = layer.weight, layer.bias
            layer = converted.to(layer.weight.dtype)
        elif isinstance(layer, nn.BatchNorm2d) and norm == "bn2d":
            bare = nn.BatchNorm2d(layer.num_features, eps=layer.eps, track_running_stats=False)
            bare.weight, bare.bias = layer.weight, layer.bias
            layer = bare
        out.append(layer)
    return out


def _mse_loss() -> nn.Module:
    """Mean squared error as its ``BaseLoss`` contract asks: ``(loss, metric)`` from ``out_dict``
    (it ships classification losses only; its README says to subclass ``BaseLoss``)."""
    from metalearn.loss import BaseLoss

    class MSELoss(BaseLoss):
        def forward(self, out_dict: dict, targets: Tensor, model_states: dict | None = None,
                    **kwargs) -> tuple[Tensor, Tensor]:
            loss = nn.functional.mse_loss(out_dict["logits"], targets)
            return loss, loss.detach()

    return MSELoss()


def prepare(model: nn.Module, workload: Workload, variant: str = "vmap") -> Callable[[Batch], None]:
    """Its ``MAML`` on the workload's network (see the module docstring for the variants)."""
    from metalearn.algorithms import MAML
    from metalearn.inner_optimizers import InnerSGD
    from metalearn.loss import CategoricalAccuracy, CrossEntropy
    from metalearn.model_wrappers import MAML_Model

    if variant not in VARIANTS:
        raise ValueError(f"unknown parallel-metalearn variant {variant!r}; choose from {VARIANTS}")
    backend, _, norm = variant.partition("+")
    layers = _flat_layers(model)
    wrapped = MAML_Model(backbone=_Chain(_translated(layers[:-1], norm)), head=_Chain(layers[-1:]))
    label = workload.loss != "mse"  # its CrossEntropy reads targets["labels"]
    loss_fn = CrossEntropy(metric_fn=CategoricalAccuracy()) if label else _mse_loss()
    first = next(model.parameters())
    inner = InnerSGD(initial_fast_weights=wrapped.get_fast_weights(), inner_lr=workload.inner_lr,
                     first_order=workload.first_order, learn_lr=False,
                     max_inner_steps=max(workload.inner_steps, 1))
    inner.to(dtype=first.dtype)
    with torch.no_grad():
        for lr in inner.lrs.values():
            lr.fill_(workload.inner_lr)
    algorithm = MAML(model=wrapped, optimizer=_NoOuterStep(list(model.parameters())),
                     inner_optimizer=inner, support_loss_fn=loss_fn, inner_steps=workload.inner_steps,
                     device=first.device, backend=backend)

    def meta_gradient(batch: Batch) -> None:
        support_x, support_y, query_x, query_y = batch
        if label:
            support_y, query_y = {"labels": support_y}, {"labels": query_y}
        algorithm.step(iter([(support_x, support_y, query_x, query_y)]), training=True)

    return meta_gradient
