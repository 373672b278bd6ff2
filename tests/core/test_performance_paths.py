"""The fast paths of the engine give the same meta-gradients as the reference paths.

Every speed-up (fused normalisation kernels outside vmap, channels-last convolutions, the batching
mode ``auto`` picks) must leave the meta-gradient unchanged; these tests compare each fast path
with an independent computation in float64 and check that the fast path is really the one taken.
"""

from __future__ import annotations

import copy

import pytest
import torch
from compile_checks import (
    aot_eager_compile,
    assert_same_gradients_and_metrics,
    broken_compile,
    meta_gradients,
)
from torch import nn
from torch.func import functional_call

from mamlkit import MAML, TaskBatch
from mamlkit.core import norms


def _bn_cnn(ways: int = 3) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(4 * 2 * 2, ways),
    ).double()


def _image_batch(tasks: int = 3, support: int = 6, query: int = 9) -> TaskBatch:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(tasks, support + query, 1, 8, 8, generator=g, dtype=torch.float64)
    y = torch.arange(3).repeat((support + query) // 3).expand(tasks, -1).contiguous()
    return TaskBatch(x[:, :support], y[:, :support], x[:, support:], y[:, support:])


def _meta_grad(learner: MAML, batch: TaskBatch) -> torch.Tensor:
    learner.zero_grad()
    learner.meta_backward(batch)
    return torch.cat([p.grad.flatten() for p in learner.parameters()])


def _reference_meta_grad(model: nn.Module, batch: TaskBatch, lr: float, steps: int,
                         first_order: bool) -> torch.Tensor:
    """Per-task loop with torch.autograd.grad and batch-statistics BatchNorm (train mode)."""
    model.zero_grad()
    params = dict(model.named_parameters())
    for t in range(batch.num_tasks):
        fast = params
        for _ in range(steps):
            out = functional_call(model, fast, (batch.support_x[t],))
            loss = nn.functional.cross_entropy(out, batch.support_y[t])
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = {n: p - lr * g for (n, p), g in zip(fast.items(), grads)}
        out = functional_call(model, fast, (batch.query_x[t],))
        (nn.functional.cross_entropy(out, batch.query_y[t]) / batch.num_tasks).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("batching", ["loop", "vmap"])
@pytest.mark.parametrize("steps,first_order", [(1, False), (2, False), (2, True)])
def test_conv_batchnorm_meta_gradient_equals_plain_autograd_loop(batching, steps, first_order):
    model = _bn_cnn().train()
    batch = _image_batch()
    expected = _reference_meta_grad(model, batch, 0.3, steps, first_order)
    learner = MAML(model, inner_lr=0.3, inner_steps=steps, first_order=first_order,
                   loss="cross_entropy", batching=batching)
    torch.testing.assert_close(_meta_grad(learner, batch), expected, rtol=1e-10, atol=1e-12)


class _Counter:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


@pytest.mark.parametrize("batching,fused_expected", [("loop", True), ("vmap", False)])
def test_fused_batchnorm_kernel_runs_outside_vmap_only(monkeypatch, batching, fused_expected):
    """The per-task loop uses PyTorch's fused batch_norm (faster); vmap the composite form."""
    fused = _Counter(norms.batch_norm_batch_stats_fused)
    composite = _Counter(norms.batch_norm_batch_stats)
    monkeypatch.setattr(norms, "batch_norm_batch_stats_fused", fused)
    monkeypatch.setattr(norms, "batch_norm_batch_stats", composite)
    learner = MAML(_bn_cnn(), inner_lr=0.3, loss="cross_entropy", batching=batching)
    batch = _image_batch()
    learner.meta_loss(batch)  # the first call also checks the inputs with one plain forward
    fused.calls = composite.calls = 0
    learner.meta_loss(batch)[0].backward()
    assert (fused.calls > 0) == fused_expected
    assert (composite.calls > 0) == (not fused_expected)


def test_under_vmap_tells_the_transform_stack():
    seen = []

    def record(x):
        seen.append(norms.under_vmap())
        return x.sum()

    record(torch.ones(2))
    torch.func.grad(record)(torch.ones(2))
    torch.func.vmap(torch.func.grad(record))(torch.ones(3, 2))
    assert seen == [False, False, True]


def test_loop_meta_backward_keeps_one_task_graph_alive(monkeypatch):
    """Under the loop, meta_backward backpropagates task by task: one graph alive at a time."""
    model = _bn_cnn()
    learner = MAML(model, inner_lr=0.3, loss="cross_entropy", batching="loop")
    batch = _image_batch(tasks=4)
    expected = _meta_grad(MAML(copy.deepcopy(model), inner_lr=0.3, loss="cross_entropy",
                               batching="vmap"), batch)
    sizes = []
    original = learner.batched_objective

    def record(chunk, mode=None):
        sizes.append(chunk.num_tasks)
        return original(chunk, mode)

    monkeypatch.setattr(learner, "batched_objective", record)
    torch.testing.assert_close(_meta_grad(learner, batch), expected, rtol=1e-10, atol=1e-12)
    assert sizes == [1, 1, 1, 1]


@pytest.mark.slow
@pytest.mark.parametrize("batching", ["loop", "vmap"])
def test_compiled_objective_gives_the_eager_meta_gradient_without_recompiling(monkeypatch, batching):
    model = _bn_cnn()
    batch = _image_batch(tasks=2)
    eager = MAML(copy.deepcopy(model), inner_lr=0.3, loss="cross_entropy", batching=batching)
    expected = _meta_grad(eager, batch)
    counters, _ = aot_eager_compile(monkeypatch)
    learner = MAML(model, inner_lr=0.3, loss="cross_entropy", batching=batching, compile=True)
    first = _meta_grad(learner, batch)
    graphs = counters["stats"]["unique_graphs"]
    with torch.no_grad():  # new meta-parameter values must not trigger a recompilation
        for p in model.parameters():
            p.add_(0.01)
    _meta_grad(learner, batch)
    with torch.no_grad():
        for p in model.parameters():
            p.sub_(0.01)
    again = _meta_grad(learner, batch)
    assert not learner._compile_failed
    assert graphs >= 1 and counters["stats"]["unique_graphs"] == graphs
    assert not counters["graph_break"], dict(counters["graph_break"])
    torch.testing.assert_close(first, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(again, expected, rtol=1e-10, atol=1e-12)


def test_compile_on_the_cpu_keeps_the_layout_of_convolutions_and_runs_from_cpp(monkeypatch):
    """Inductor's channels-last choice for convolutions slows the CPU loop down: it is turned off
    there, and the graph runs from its C++ wrapper (every torch.compile call of the learner gets
    both options)."""
    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: seen.append(kw) or fn)
    for batching in ("loop", "vmap"):
        learner = MAML(_bn_cnn(), inner_lr=0.3, loss="cross_entropy", batching=batching, compile=True)
        learner.meta_backward(_image_batch(tasks=2))
        learner.meta_loss(_image_batch(tasks=2))
    assert len(seen) == 4
    assert all(kw == {"dynamic": False, "options": {"layout_optimization": False,
                                                    "cpp_wrapper": True}} for kw in seen)


def test_compile_failure_warns_and_runs_eagerly(monkeypatch):
    model = _bn_cnn()
    batch = _image_batch()
    expected = _meta_grad(MAML(copy.deepcopy(model), inner_lr=0.3, loss="cross_entropy"), batch)
    monkeypatch.setattr(torch, "compile", broken_compile)
    learner = MAML(model, inner_lr=0.3, loss="cross_entropy", compile=True)
    with pytest.warns(RuntimeWarning, match="running it eagerly. Pass compile=False"):
        got = _meta_grad(learner, batch)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert learner._compile_failed


def test_loop_inner_gradients_come_from_autograd_and_first_order_records_no_inner_graph(monkeypatch):
    """Outside transforms the inner loop uses torch.autograd.grad; first order builds no graph of
    the inner backward (its gradients are constants) and equals the functorch path."""
    from mamlkit.core import inner_loop as learner_module  # where the inner loop asks

    calls = []
    original = torch.autograd.grad

    def spy(*args, **kwargs):
        calls.append(kwargs.get("create_graph", False))
        return original(*args, **kwargs)

    model = _bn_cnn()
    batch = _image_batch()
    for first_order in (True, False):
        monkeypatch.setattr(torch.autograd, "grad", spy)
        calls.clear()
        learner = MAML(model, inner_lr=0.3, inner_steps=2, first_order=first_order,
                       loss="cross_entropy", batching="loop")
        fast = _meta_grad(learner, batch)
        assert calls and all(c == (not first_order) for c in calls)
        monkeypatch.undo()
        monkeypatch.setattr(learner_module, "plain_autograd_available", lambda: False)
        reference = _meta_grad(learner, batch)
        monkeypatch.undo()
        torch.testing.assert_close(fast, reference, rtol=1e-10, atol=1e-12)


def test_autograd_inner_gradient_handles_unused_and_non_trainable_parameters():
    model = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    model.add_module("unused", nn.Linear(1, 1).double())
    model[0].bias.requires_grad_(False)
    x = torch.randn(3, 8, 2, dtype=torch.float64)
    batch = TaskBatch(x[:, :4], x[:, :4, :1], x[:, 4:], x[:, 4:, :1])
    loop = MAML(model, inner_lr=0.1, inner_steps=2, batching="loop")
    vmapped = MAML(copy.deepcopy(model), inner_lr=0.1, inner_steps=2, batching="vmap")
    grads = {}
    for name, learner in (("loop", loop), ("vmap", vmapped)):
        learner.zero_grad()
        learner.meta_backward(batch)
        grads[name] = [p.grad for p in learner.parameters()]
    for g, w in zip(grads["loop"], grads["vmap"]):
        assert (g is None) == (w is None)
        if g is not None:
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("batching", ["vmap", "loop"])
@pytest.mark.parametrize("name", ["maml", "fomaml", "metasgd", "anil", "reptile", "imaml", "mamlpp",
                                  "pretrained"])
def test_compiled_meta_gradient_of_every_algorithm_equals_the_eager_one(monkeypatch, name, batching):
    """compile=True differentiates the whole objective with torch.func.grad in one compiled call
    (per chunk under vmap, per task in the loop); every learner parameter (Meta-SGD's rates too)
    gets the eager gradient, the metrics agree, a second batch reuses the compiled graphs, and a
    batch of another size is scaled by its own size."""
    from mamlkit import make_algorithm

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 10, 1, generator=g, dtype=torch.float64)
    batch = TaskBatch(x[:, :5], torch.sin(x[:, :5]), x[:, 5:], torch.sin(x[:, 5:]))
    kwargs = {"inner_lr": 0.1, "inner_steps": 2, "loss": "mse", "batching": batching,
              "chunk_size": 3}  # chunks of 3 + 2 tasks; 1/5 and 1/3 are inexact in float32

    batches = [batch, batch, batch.slice(slice(0, 3))]
    expected, expected_metrics = meta_gradients(
        make_algorithm(name, copy.deepcopy(model), **kwargs), batches)
    counters, _ = aot_eager_compile(monkeypatch)
    learner = make_algorithm(name, model, compile=True, **kwargs)
    learner.meta_backward(batch)
    graphs = counters["stats"]["unique_graphs"]
    got, metrics = meta_gradients(learner, batches)
    assert not learner._compile_failed
    # the torch.func.grad path is taken, except by MAML++ (its own batching: compiled objective)
    assert bool(learner._compiled_meta_gradients) == (name != "mamlpp")
    if name == "anil":  # its forward hook (features of any model) makes Dynamo run it eagerly
        assert graphs == 0 and counters["graph_break"]
    else:
        assert graphs >= 1 and not counters["graph_break"], dict(counters["graph_break"])
        if batching == "loop":  # one task per call, so the smaller batch needs no new graph
            assert counters["stats"]["unique_graphs"] == graphs
    assert_same_gradients_and_metrics(got, expected, metrics, expected_metrics)
