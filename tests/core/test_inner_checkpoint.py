"""The checkpointed inner loop gives the meta-gradient of a plain second-order loop, in float64.

The reference in every test is a plain per-task loop written here: ``torch.autograd.grad`` with
``create_graph=True`` for each inner step, then the query loss backpropagated through all of it.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from mamlkit.core.inner_checkpoint import checkpointed_inner_loop


def mlp() -> nn.Module:
    """A small tanh MLP (non-zero second derivatives everywhere)."""
    return nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, 2)).double()


def cnn() -> nn.Module:
    """Two conv blocks with transductive BatchNorm (batch statistics, no running statistics)."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 2 * 2, 3)).double()


def classification_task(model: nn.Module, n: int = 6) -> tuple[Tensor, ...]:
    """Random float64 support and query sets (x, y, x, y) for ``model``'s input and classes."""
    shape = (n, 3) if isinstance(model[0], nn.Linear) else (n, 1, 8, 8)
    classes = model[-1].out_features
    return (torch.randn(*shape, dtype=torch.float64), torch.arange(n) % classes,
            torch.randn(*shape, dtype=torch.float64), torch.arange(n) % classes)


def loss_of(model: nn.Module, x: Tensor, y: Tensor):
    """``params -> cross-entropy of model(x)`` (the support or query loss of one task)."""
    return lambda params: nn.functional.cross_entropy(functional_call(model, params, (x,)), y)


def plain_inner_loop(loss_fn, fast, frozen, lrs, steps, second_order=True):
    """The reference: every step's graph kept (``create_graph=True``)."""
    for step in range(steps):
        step_lrs = lrs[step] if isinstance(lrs, list) else lrs
        loss = loss_fn({**frozen, **fast})
        grads = torch.autograd.grad(loss, list(fast.values()), create_graph=second_order)
        fast = {n: p - (step_lrs[n] if isinstance(step_lrs, dict) else step_lrs) * g
                for (n, p), g in zip(fast.items(), grads)}
    return fast


def meta_gradient(inner, model, adapted, lrs, steps, tasks, extra=(), **kwargs):
    """Mean query loss over ``tasks`` after ``inner``; gradient to the parameters and ``extra``."""
    params = dict(model.named_parameters())
    total = 0.0
    for sx, sy, qx, qy in tasks:
        fast = {n: p for n, p in params.items() if n in adapted}
        frozen = {n: p for n, p in params.items() if n not in adapted}
        result = inner(loss_of(model, sx, sy), fast, frozen, lrs, steps, **kwargs)
        adapted_params = result[0] if isinstance(result, tuple) else result
        total = total + loss_of(model, qx, qy)({**frozen, **adapted_params}) / len(tasks)
    inputs = [*params.values(), *extra]
    return torch.autograd.grad(total, inputs, allow_unused=True, materialize_grads=True)


def assert_same(grads, reference):
    for g, r in zip(grads, reference):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
    assert any(float(r.abs().sum()) > 0 for r in reference)


@pytest.mark.parametrize("every", [1, 2])
@pytest.mark.parametrize("build", [mlp, cnn], ids=["mlp", "cnn_batchnorm"])
def test_matches_plain_second_order_loop(build, every):
    model = build()
    tasks = [classification_task(model) for _ in range(2)]
    names = {n for n, _ in model.named_parameters()}
    reference = meta_gradient(plain_inner_loop, model, names, 0.3, 3, tasks)
    grads = meta_gradient(checkpointed_inner_loop, model, names, 0.3, 3, tasks, every=every)
    assert_same(grads, reference)
    first_order = meta_gradient(plain_inner_loop, model, names, 0.3, 3, tasks, second_order=False)
    assert not all(torch.allclose(f, r, rtol=1e-6) for f, r in zip(first_order, reference))


def test_frozen_parameters_get_their_gradient_through_every_step():
    """ANIL-style: only the head adapts; the body's meta-gradient flows through the steps."""
    model = cnn()
    tasks = [classification_task(model)]
    head = {n for n, _ in model.named_parameters() if n.startswith("9.")}
    reference = meta_gradient(plain_inner_loop, model, head, 0.5, 4, tasks)
    grads = meta_gradient(checkpointed_inner_loop, model, head, 0.5, 4, tasks)
    assert_same(grads, reference)


def test_learned_per_parameter_and_per_step_learning_rates():
    """Meta-SGD's per-parameter tensors and MAML++'s per-step rates get exact meta-gradients."""
    model = mlp()
    tasks = [classification_task(model) for _ in range(2)]
    names = [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())
    meta_sgd = {n: torch.full_like(p, 0.1).add_(0.05 * torch.rand_like(p)).requires_grad_()
                for n, p in params.items()}
    per_step = [{n: torch.tensor(0.1 + 0.05 * k, dtype=torch.float64, requires_grad=True)
                 for n in names} for k in range(3)]
    for lrs, extra in ((meta_sgd, list(meta_sgd.values())),
                       (per_step, [t for step in per_step for t in step.values()])):
        reference = meta_gradient(plain_inner_loop, model, set(names), lrs, 3, tasks, extra)
        grads = meta_gradient(checkpointed_inner_loop, model, set(names), lrs, 3, tasks, extra)
        assert_same(grads, reference)
        assert all(float(g.abs().sum()) > 0 for g in grads[len(names):])


@pytest.mark.parametrize("outer", ["backward", "func_grad"])
def test_vmap_over_tasks_matches_the_plain_loop(outer):
    """Under ``vmap`` with an outer ``backward`` (support set captured by the loss) and under
    ``torch.func.grad`` of the vmapped meta-loss (support set passed as ``data``)."""
    model = cnn()
    tasks = [classification_task(model) for _ in range(3)]
    names = {n for n, _ in model.named_parameters()}
    reference = meta_gradient(plain_inner_loop, model, names, 0.3, 2, tasks)

    def support_loss(params, x, y):
        return nn.functional.cross_entropy(functional_call(model, params, (x,)), y)

    def task_loss(params, sx, sy, qx, qy):
        if outer == "backward":
            fast, _ = checkpointed_inner_loop(loss_of(model, sx, sy), params, {}, 0.3, 2)
        else:
            fast, _ = checkpointed_inner_loop(support_loss, params, {}, 0.3, 2, data=(sx, sy))
        return loss_of(model, qx, qy)(fast)

    def meta_loss(params):
        return vmap(task_loss, in_dims=(None, 0, 0, 0, 0))(params, *stacked).mean()

    stacked = [torch.stack(column) for column in zip(*tasks)]
    params = dict(model.named_parameters())
    if outer == "backward":
        grads = torch.autograd.grad(meta_loss(params), list(params.values()))
    else:
        grads = list(torch.func.grad(meta_loss)({n: p.detach() for n, p in params.items()}).values())
    assert_same(grads, reference)


def test_dropout_is_recomputed_with_the_same_masks():
    model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Dropout(0.3), nn.Linear(16, 2)).double()
    tasks = [classification_task(model)]
    names = {n for n, _ in model.named_parameters()}
    torch.manual_seed(1)
    reference = meta_gradient(plain_inner_loop, model, names, 0.3, 3, tasks)
    torch.manual_seed(1)
    grads = meta_gradient(checkpointed_inner_loop, model, names, 0.3, 3, tasks,
                          preserve_rng_state=True)
    assert_same(grads, reference)


def saved_elements(outputs: dict[str, Tensor]) -> int:
    """Elements of the distinct tensors the autograd graph behind ``outputs`` keeps saved."""
    seen_nodes, storages = set(), {}
    stack = [t.grad_fn for t in outputs.values() if t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or node in seen_nodes:
            continue
        seen_nodes.add(node)
        saved = list(getattr(node, "saved_tensors", ()) or ())
        for name in dir(node):
            if name.startswith("_saved_"):
                value = getattr(node, name)
                saved += [v for v in (value if isinstance(value, tuple) else (value,))
                          if isinstance(v, Tensor)]
        for t in saved:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes() // t.element_size()
        stack.extend(next_node for next_node, _ in node.next_functions)
    return sum(storages.values())


def test_keeps_only_the_parameters_of_each_step():
    """The checkpointed loop saves one parameter set per step; the plain loop saves activations."""
    model = cnn()
    sx, sy, _, _ = classification_task(model, n=20)
    params = dict(model.named_parameters())
    size = sum(p.numel() for p in params.values())
    steps = 5
    checkpointed = saved_elements(
        checkpointed_inner_loop(loss_of(model, sx, sy), params, {}, 0.1, steps)[0])
    plain = saved_elements(plain_inner_loop(loss_of(model, sx, sy), params, {}, 0.1, steps))
    assert size * (steps - 1) <= checkpointed <= steps * size
    assert plain > 5 * checkpointed


def test_bad_input_is_named():
    model = mlp()
    params = dict(model.named_parameters())
    loss = loss_of(model, *classification_task(model)[:2])
    with pytest.raises(ValueError, match="both in fast and frozen"):
        checkpointed_inner_loop(loss, params, params, 0.1, 1)
    with pytest.raises(ValueError, match="one learning rate .* per inner step"):
        checkpointed_inner_loop(loss, params, {}, [0.1, 0.2], 3)
    with pytest.raises(ValueError, match="no learning rate for the adapted parameters"):
        checkpointed_inner_loop(loss, params, {}, {"0.weight": 0.1}, 1)
