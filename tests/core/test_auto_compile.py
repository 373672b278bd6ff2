"""``compile="auto"``, the default: eager until the same shapes repeat and the run is long enough
to pay, a background compile of a twin that shares the learner's tensors, then the compiled
meta-gradient, equal to a plain per-task autograd loop; and eager, saying why, where compiling
cannot serve."""

from __future__ import annotations

import functools

import pytest
import torch
from compile_checks import aot_eager_compile, broken_compile
from torch import nn

import mamlkit.core.auto_compile as auto_compile
from mamlkit import MAML
from mamlkit.algorithms import MAMLPlusPlus
from mamlkit.core.auto_compile import AutoCompile, compile_mode, make_twin
from mamlkit.tasks.base import TaskBatch


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1)).double()


def _batch(seed: int) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 10, 2, generator=g, dtype=torch.float64)
    y = torch.randn(4, 10, 1, generator=g, dtype=torch.float64)
    return TaskBatch(x[:, :5], y[:, :5], x[:, 5:], y[:, 5:])


def _plain_meta_gradient(model: nn.Module, batch: TaskBatch, lr: float) -> list[torch.Tensor]:
    """One SGD step per task on the support MSE, query MSE averaged over tasks, differentiated
    by autograd through the step: written out here, independent of the library."""
    params = list(model.parameters())

    def forward(ps, x):
        w1, b1, w2, b2 = ps
        return torch.tanh(x @ w1.T + b1) @ w2.T + b2

    total = 0.0
    for t in range(batch.num_tasks):
        support = ((forward(params, batch.support_x[t]) - batch.support_y[t]) ** 2).mean()
        grads = torch.autograd.grad(support, params, create_graph=True)
        fast = [p - lr * g for p, g in zip(params, grads)]
        total = total + ((forward(fast, batch.query_x[t]) - batch.query_y[t]) ** 2).mean()
    return list(torch.autograd.grad(total / batch.num_tasks, params))


def _meta_gradient(learner: MAML, batch: TaskBatch) -> list[torch.Tensor]:
    learner.zero_grad()
    learner.meta_backward(batch)
    return [p.grad.clone() for p in learner.parameters()]


def test_auto_compiles_in_the_background_once_it_pays_then_runs_compiled(monkeypatch):
    counters, _ = aot_eager_compile(monkeypatch)
    learner = MAML(_mlp(), inner_lr=0.3)
    assert learner.compile_mode == "auto" and not learner.use_compile
    auto = learner.execution.auto
    learner.expect_meta_batches(10**9)  # a long run: compiling pays
    batch = _batch(0)
    assert learner.execution_summary(batch) == (
        "batching vmap, eager, compiled in the background once it pays (compile=auto)")
    for seed in range(AutoCompile.repeats - 1):
        learner.meta_backward(_batch(seed))
    assert auto._job is None and not learner.compile_messages()  # not yet: shapes must repeat
    learner.meta_backward(_batch(9))
    assert auto._job is not None  # started after the third meta-batch of these shapes
    assert auto.wait(timeout=300)
    started, done = learner.compile_messages()
    assert started.startswith("compile=auto: compiling the meta-gradient for 4 tasks x 5+5 examples")
    assert done.startswith("compile=auto: compiled the meta-gradient in ")
    assert learner.execution_summary(batch) == "batching vmap, compiled (compile=auto)"
    graphs = counters["stats"]["unique_graphs"]
    for seed in (11, 12):
        batch = _batch(seed)
        got = _meta_gradient(learner, batch)
        for value, want in zip(got, _plain_meta_gradient(learner.model, batch, 0.3)):
            torch.testing.assert_close(value, want, rtol=1e-9, atol=1e-12)
    assert counters["stats"]["unique_graphs"] == graphs  # no compile on the main thread
    assert learner.execution.compiled_backend(batch, "vmap") is auto.backend


def test_auto_never_compiles_a_short_run_or_new_shapes(monkeypatch):
    aot_eager_compile(monkeypatch)
    learner = MAML(_mlp(), inner_lr=0.3)
    learner.expect_meta_batches(5)  # 5 more meta-batches of a few ms: not worth a compile
    for seed in range(8):
        learner.meta_backward(_batch(seed))
    assert learner.execution.auto._job is None and learner.execution.auto.backend is None
    for value, want in zip(_meta_gradient(learner, _batch(1)),
                           _plain_meta_gradient(learner.model, _batch(1), 0.3)):
        torch.testing.assert_close(value, want, rtol=1e-9, atol=1e-12)


def test_auto_recompiles_nothing_when_the_settings_change_it_goes_back_to_eager(monkeypatch):
    aot_eager_compile(monkeypatch)
    learner = MAML(_mlp(), inner_lr=0.3)
    learner.expect_meta_batches(10**9)
    for seed in range(AutoCompile.repeats):
        learner.meta_backward(_batch(seed))
    assert learner.execution.auto.wait(timeout=300)
    learner.compile_messages()
    learner.inner_steps = 2  # traced with one step: the compiled graph no longer applies
    batch = _batch(5)
    assert learner.execution.compiled_backend(batch, "vmap") is None
    assert "settings changed" in learner.compile_messages()[0]
    learner.inner_steps = 1
    for value, want in zip(_meta_gradient(learner, batch),
                           _plain_meta_gradient(learner.model, batch, 0.3)):
        torch.testing.assert_close(value, want, rtol=1e-9, atol=1e-12)


def test_a_compiler_error_in_the_background_leaves_the_run_eager(monkeypatch):
    monkeypatch.setattr(torch, "compile", broken_compile)
    learner = MAML(_mlp(), inner_lr=0.3)
    learner.expect_meta_batches(10**9)
    for seed in range(AutoCompile.repeats):
        learner.meta_backward(_batch(seed))
    assert learner.execution.auto.wait(timeout=60)
    _, failed = learner.compile_messages()
    assert "could not be compiled (RuntimeError: backend exploded); running eagerly" in failed
    batch = _batch(7)
    assert learner.execution_summary(batch).startswith("batching vmap, eager (compile=auto: could")
    for value, want in zip(_meta_gradient(learner, batch),
                           _plain_meta_gradient(learner.model, batch, 0.3)):
        torch.testing.assert_close(value, want, rtol=1e-9, atol=1e-12)


def test_auto_stays_eager_and_says_why_where_compiling_cannot_serve(monkeypatch):
    batch = _batch(0)
    bn = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).double()
    assert MAML(bn, batchnorm="module").execution_summary(batch).endswith(
        "eager (compile=auto: BatchNorm updates its running statistics (batchnorm='module'))")
    assert "MAMLPlusPlus's objective changes between meta-iterations" in \
        MAMLPlusPlus(_mlp()).execution_summary(batch)
    hooked = _mlp()
    hooked[0].register_forward_hook(lambda module, args, out: None)
    assert MAML(hooked).execution_summary(batch).endswith("(compile=auto: the model carries hooks)")
    monkeypatch.setattr(auto_compile.shutil, "which", lambda name: None)
    # looked up once per process: a fresh cache for this test, the process's own restored after
    monkeypatch.setattr(auto_compile, "compiler_missing",
                        functools.cache(auto_compile.compiler_missing.__wrapped__))
    learner = MAML(_mlp(), inner_lr=0.3)
    learner.expect_meta_batches(10**9)
    for seed in range(AutoCompile.repeats + 1):
        learner.meta_backward(_batch(seed))
    assert learner.execution.auto._job is None
    assert "no C++ compiler" in learner.execution_summary(batch)


def test_the_twin_shares_every_tensor_and_runs_eagerly():
    learner = MAML(nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)))
    twin = make_twin(learner)
    assert all(a is b for a, b in zip(learner.parameters(), twin.parameters()))
    assert all(a is b for a, b in zip(learner.buffers(), twin.buffers()))
    assert twin.model is not learner.model and twin.compile_mode == "off"


def test_compile_settings_are_named_and_bad_ones_refused():
    assert [compile_mode(v) for v in (True, False, "auto", "on", "off")] == [
        "on", "off", "auto", "on", "off"]
    with pytest.raises(ValueError, match="compile must be one of auto, on, off"):
        MAML(_mlp(), compile="fast")
