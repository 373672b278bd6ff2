"""Tasks on worker threads: the pool's thread settings, and the same meta-gradient as one thread.

``MetaLearner(task_threads=...)`` runs the compiled per-task meta-gradient on several threads;
the gradient tests compare it with the eager single-thread meta-gradient in float64.
"""

from __future__ import annotations

import shutil
import threading

import pytest
import torch
import torch._dynamo
from compile_checks import (
    aot_eager_compile,
    assert_same_gradients_and_metrics,
    broken_compile,
    meta_gradients,
)
from torch import nn

from mamlkit import MAML, TaskBatch, make_algorithm
from mamlkit.algorithms import ANIL, MAMLPlusPlus
from mamlkit.core import compiled as learner_module  # where the task threads are mapped
from mamlkit.core.task_threads import map_interleaved, task_pool


@pytest.fixture
def two_threads():
    """torch with two intra-op threads in the calling thread (the tests' default is one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _thread_count_after_a_parallel_kernel(_share) -> int:
    torch.randn(256, 256) @ torch.randn(256, 256)  # initialises the thread's OpenMP state
    return torch.get_num_threads()


def test_pool_workers_run_one_intra_op_thread_and_leave_the_caller_alone(two_threads):
    assert map_interleaved(_thread_count_after_a_parallel_kernel, range(4), 2) == [1, 1]
    assert task_pool(2) is task_pool(2)
    assert torch.get_num_threads() == 2
    seen = []
    later = threading.Thread(target=lambda: seen.append(_thread_count_after_a_parallel_kernel(None)))
    later.start()
    later.join()
    assert seen == [2]  # threads started later begin with the caller's count, not the workers'


def test_map_interleaved_returns_shares_in_order_with_the_callers_state():
    assert map_interleaved(list, range(7), 3) == [[0, 3, 6], [1, 4], [2, 5]]
    assert map_interleaved(list, range(2), 3) == [[0], [1]]
    assert map_interleaved(list, [], 2) == []
    with torch.no_grad():
        assert map_interleaved(lambda _: torch.is_grad_enabled(), range(2), 2) == [False, False]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert map_interleaved(lambda _: (torch.is_autocast_enabled("cpu"),
                                          torch.get_autocast_dtype("cpu")), range(1), 2) == [
            (True, torch.bfloat16)]

    def fail(share):
        raise KeyError("task 3")

    with pytest.raises(KeyError, match="task 3"):
        map_interleaved(fail, range(4), 2)


def _regression_batch(tasks: int = 5) -> TaskBatch:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(tasks, 10, 1, generator=g, dtype=torch.float64)
    return TaskBatch(x[:, :5], torch.sin(x[:, :5]), x[:, 5:], torch.sin(x[:, 5:]))


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)).double()


@pytest.mark.slow
@pytest.mark.parametrize("name,threads", [("maml", 2), ("maml", 3), ("fomaml", 2), ("metasgd", 2),
                                          ("reptile", 2), ("imaml", 2), ("pretrained", 2)])
def test_threaded_meta_gradient_of_every_algorithm_equals_the_eager_one(monkeypatch, name, threads):
    """Tasks spread over worker threads give the single-thread eager gradient of every learner
    parameter and the same metrics; the threaded path (single-threaded kernels, C++ wrapper)
    is the one taken, compiling once before the workers share it."""
    batch = _regression_batch()
    kwargs = {"inner_lr": 0.1, "inner_steps": 2, "loss": "mse", "batching": "loop"}
    batches = [batch, batch, batch.slice(slice(0, 3))]
    expected, expected_metrics = meta_gradients(make_algorithm(name, _mlp(), **kwargs), batches)
    _, options = aot_eager_compile(monkeypatch)
    shares = []
    real_map = learner_module.map_interleaved
    monkeypatch.setattr(learner_module, "map_interleaved",
                        lambda fn, items, workers: shares.append((list(items), workers))
                        or real_map(fn, items, workers))
    learner = make_algorithm(name, _mlp(), compile=True, task_threads=threads, **kwargs)
    assert learner.task_threads_for(batch) == threads
    got, metrics = meta_gradients(learner, batches)
    assert not learner._compile_failed
    assert options == [{"layout_optimization": False, "cpp_wrapper": True, "cpp.threads": 1}]
    # the first task alone (compiling), then the others over the workers; later batches at once
    assert shares[:2] == [([0], threads), ([1, 2, 3, 4], threads)]
    assert shares[2:] == [([0, 1, 2, 3, 4], threads), ([0, 1, 2], threads)]
    assert_same_gradients_and_metrics(got, expected, metrics, expected_metrics)


@pytest.mark.slow
@pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
                    reason="torch.compile's Inductor backend needs a C++ compiler; none is installed")
def test_threaded_meta_gradient_with_inductor_equals_the_eager_one():
    """The real compiler (C++ kernels run from a C++ wrapper, called on two threads at once)."""
    batch = _regression_batch(tasks=6)
    kwargs = {"inner_lr": 0.1, "loss": "mse", "batching": "loop"}
    expected, _ = meta_gradients(MAML(_mlp(), **kwargs), [batch])
    learner = MAML(_mlp(), compile=True, task_threads=2, **kwargs)
    for _ in range(2):  # the first call compiles on one worker, the second runs on both
        got, _ = meta_gradients(learner, [batch])
        assert not learner._compile_failed
        for value, want in zip(got, expected):
            torch.testing.assert_close(value, want, rtol=1e-9, atol=1e-12)


def test_threaded_compile_failure_warns_and_runs_eagerly(monkeypatch):
    batch = _regression_batch()
    expected, _ = meta_gradients(MAML(_mlp(), inner_lr=0.1, batching="loop"), [batch])
    monkeypatch.setattr(torch, "compile", broken_compile)
    learner = MAML(_mlp(), inner_lr=0.1, batching="loop", compile=True, task_threads=2)
    with pytest.warns(RuntimeWarning, match="running it eagerly"):
        got, _ = meta_gradients(learner, [batch])
    for value, want in zip(got, expected):
        torch.testing.assert_close(value, want, rtol=1e-10, atol=1e-12)


def _cnn(dropout: bool = False) -> nn.Module:
    layers = [nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)]
    if dropout:
        layers.insert(2, nn.Dropout(0.1))
    return nn.Sequential(*layers)


def test_auto_task_threads_only_for_the_compiled_cpu_loop_of_a_safe_model(two_threads):
    x = torch.randn(4, 6, 1, 6, 6)
    y = torch.arange(3).repeat(2).expand(4, -1)
    batch = TaskBatch(x[:, :3], y[:, :3], x[:, 3:], y[:, 3:])
    kwargs = {"inner_lr": 0.1, "loss": "cross_entropy"}
    assert MAML(_cnn(), compile=True, **kwargs).task_threads_for(batch) == 2  # auto: CPU loop
    assert MAML(_cnn(), compile=False, **kwargs).task_threads_for(batch) == 1  # eager
    assert MAML(_cnn(), **kwargs).task_threads_for(batch) == 2  # auto: once compiled
    assert MAML(_cnn(), compile=True, batching="vmap", **kwargs).task_threads_for(batch) == 1
    assert MAML(_cnn(dropout=True), compile=True, **kwargs).task_threads_for(batch) == 1
    hooked = _cnn()
    hooked[0].register_forward_hook(lambda module, args, out: None)
    assert MAML(hooked, compile=True, **kwargs).task_threads_for(batch) == 1
    with_norm = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(32, 3))
    assert MAML(with_norm, compile=True, **kwargs).task_threads_for(batch) == 2  # batch statistics
    assert MAML(with_norm, compile=True, batchnorm="module", **kwargs).task_threads_for(batch) == 1
    assert ANIL(_cnn(), compile=True, **kwargs).task_threads_for(batch) == 1
    assert MAMLPlusPlus(_cnn(), compile=True, **kwargs).task_threads_for(batch) == 1
    assert MAML(_cnn(), compile=True, task_threads=8, **kwargs).task_threads_for(batch) == 4
    assert MAML(_cnn(), compile=True, task_threads=1, **kwargs).task_threads_for(batch) == 1
    summaries = [MAML(_cnn(), compile=True, **kwargs).execution_summary(batch),
                 MAML(_cnn(), compile=False, **kwargs).execution_summary(batch),
                 MAML(_cnn(), batching="vmap", chunk_size=3, compile=False,
                      **kwargs).execution_summary(batch)]
    assert summaries == ["batching loop, compiled, on 2 task threads", "batching loop, eager",
                         "batching vmap in chunks of 3 tasks, eager"]


def test_task_threads_argument_errors_name_the_fix():
    with pytest.raises(ValueError, match="positive integer or None"):
        MAML(_mlp(), task_threads=0)
    with pytest.raises(ValueError, match="pass compile=True"):
        MAML(_mlp(), task_threads=2, compile=False)
    for algorithm in (ANIL, MAMLPlusPlus):
        with pytest.raises(ValueError, match="cannot process tasks on several threads"):
            algorithm(_mlp(), compile=True, task_threads=2)
    assert MAML(_mlp(), task_threads=1).task_threads == 1  # one thread needs no compiler


class _GraphBreak(nn.Module):
    """An MLP whose forward Dynamo cannot trace as one graph."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp()

    def forward(self, x):
        torch._dynamo.graph_break()
        return self.net(x)


def test_a_model_that_does_not_compile_whole_keeps_its_tasks_on_one_thread(monkeypatch):
    """Python run between graphs would share the module between threads: the threads' variant
    compiles with fullgraph, and a graph break sends every task back to the calling thread
    (still compiled), with the single-thread gradient."""
    batch = _regression_batch()
    expected, _ = meta_gradients(MAML(_GraphBreak(), inner_lr=0.1, batching="loop"), [batch])
    aot_eager_compile(monkeypatch)
    learner = MAML(_GraphBreak(), inner_lr=0.1, batching="loop", compile=True, task_threads=2)
    assert learner.task_threads_for(batch) == 2
    with pytest.warns(RuntimeWarning, match="cannot be compiled as one graph for worker threads"):
        got, _ = meta_gradients(learner, [batch, batch])
    assert learner.task_threads_for(batch) == 1 and not learner._compile_failed
    assert set(learner._compiled_meta_gradients) == {("loop", True), ("loop", False)}
    for value, want in zip(got, expected):
        torch.testing.assert_close(value, 2 * want, rtol=1e-10, atol=1e-12)
