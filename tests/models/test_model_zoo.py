"""The model-zoo matrix: MAML's meta-gradient on the models people bring, against a plain
per-task ``torch.autograd.grad`` loop written here (not the library's code), in float64.

Every model of :data:`model_zoo.ZOO` x batching ``vmap`` / ``loop`` / ``auto`` x first / second order
x 1 / 3 inner steps. A cell either matches the reference to 1e-6 relative error or, where
``vmap`` cannot batch the model, refuses with a clear message naming the fix. The reference
computes fused kernels with known-wrong or missing double backward through its own exact
equivalents (weight norm here; attention through PyTorch's math backend), so the comparison
checks that the library routes them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from model_zoo import ZOO, ZooCase
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

from mamlkit import MAML


class _ExactWeightNorm(TorchFunctionMode):
    """The reference's own ``v * g / ||v||`` in place of the fused ``torch._weight_norm``."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None):
        if func is torch._weight_norm:
            v, g, dim = args
            others = [d for d in range(v.dim()) if d != dim % v.dim()]
            return v * g / v.pow(2).sum(dim=others, keepdim=True).sqrt()
        return func(*args, **(kwargs or {}))


@contextmanager
def exact_kernels() -> Iterator[None]:
    with sdpa_kernel(SDPBackend.MATH), _ExactWeightNorm():
        yield


def logits_of(outputs: Any) -> Tensor:
    return outputs if isinstance(outputs, Tensor) else outputs.logits


def call(model: nn.Module, tensors: dict[str, Tensor], x: Any) -> Tensor:
    if isinstance(x, dict):
        return logits_of(functional_call(model, tensors, (), x))
    return logits_of(functional_call(model, tensors, (x,)))


def adapted_names(model: nn.Module, adapt: Any) -> list[str]:
    """Canonical names of the parameters that adapt: every name of a tied one counts."""
    canonical = dict(model.named_parameters())
    by_id = {id(p): n for n, p in canonical.items()}
    if adapt is None:
        return [n for n, p in canonical.items() if p.requires_grad]
    chosen = {by_id[id(p)] for n, p in model.named_parameters(remove_duplicate=False)
              if n == adapt or n.startswith(adapt + ".")}
    return [n for n in canonical if n in chosen]


def reference_meta_gradient(case: ZooCase, steps: int, first_order: bool) -> dict[str, Tensor]:
    """Mean over tasks of d query_loss(adapted) / d theta, one task at a time."""
    model, batch = case.model, case.batch
    params = dict(model.named_parameters())
    trainable = {n: p for n, p in params.items() if p.requires_grad}
    fast_names = adapted_names(model, case.adapt)
    total = {n: torch.zeros_like(p) for n, p in trainable.items()}

    def pick(tree: Any, i: int) -> Any:
        return {k: v[i] for k, v in tree.items()} if isinstance(tree, dict) else tree[i]

    for task in range(batch.num_tasks):
        buffers = {n: b.clone() for n, b in model.named_buffers()}  # batch statistics, no updates
        sx, sy = pick(batch.support_x, task), batch.support_y[task]
        qx, qy = pick(batch.query_x, task), batch.query_y[task]
        fast = {n: params[n] for n in fast_names}
        with exact_kernels():
            for _ in range(steps):
                loss = nn.functional.cross_entropy(call(model, {**params, **buffers, **fast}, sx), sy)
                grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
                fast = {n: f - case.inner_lr * g for (n, f), g in zip(fast.items(), grads)}
            query = nn.functional.cross_entropy(call(model, {**params, **buffers, **fast}, qx), qy)
            grads = torch.autograd.grad(query / batch.num_tasks, list(trainable.values()),
                                        allow_unused=True)
        for (name, _), g in zip(trainable.items(), grads):
            if g is not None:
                total[name] += g
    return total


def train_mode_for_batch_statistics(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train()


@pytest.mark.parametrize("name", list(ZOO))
def test_meta_gradient_matches_a_plain_autograd_loop(name: str) -> None:
    torch.manual_seed(0)
    case = ZOO[name]()
    train_mode_for_batch_statistics(case.model)
    for steps in (1, 3):
        for first_order in (False, True):
            expected = reference_meta_gradient(case, steps, first_order)
            for batching in ("vmap", "loop", "auto"):
                learner = MAML(case.model, inner_lr=case.inner_lr, inner_steps=steps,
                               first_order=first_order, loss="cross_entropy", adapt=case.adapt,
                               batching=batching)
                case.model.zero_grad(set_to_none=True)
                if batching == "vmap" and case.vmap_refusal:
                    with pytest.raises(ValueError, match=case.vmap_refusal):
                        learner.meta_backward(case.batch)
                    continue
                metrics = learner.meta_backward(case.batch)
                assert "query_accuracy" in metrics
                scale = torch.cat([g.flatten() for g in expected.values()]).norm()
                for param_name, parameter in case.model.named_parameters():
                    if not parameter.requires_grad:
                        assert parameter.grad is None, param_name
                        continue
                    got = parameter.grad if parameter.grad is not None else torch.zeros_like(parameter)
                    want = expected[param_name]
                    # relative per parameter; a true gradient of zero (a conv bias before a
                    # BatchNorm) is compared at a millionth of the whole meta-gradient's norm
                    error = (got - want).norm() / torch.maximum(want.norm(), 1e-6 * scale)
                    assert error < 1e-6, (f"{name} {batching} steps={steps} first_order="
                                          f"{first_order} {param_name}: rel. error {error:.2e}")
