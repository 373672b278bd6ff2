"""Shared helpers of the tests that compare compiled meta-gradients with eager ones."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch._dynamo


def aot_eager_compile(monkeypatch) -> tuple[Any, list[dict | None]]:
    """torch.compile with the aot_eager backend: the same tracing, functionalisation and AOT
    autograd of the inner loop as the default backend, without minutes of C++ compilation.

    Returns Dynamo's counters (cleared) and the list of Inductor options each call asked for.
    """
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    real, seen = torch.compile, []

    def compile(fn, options=None, **kwargs):
        seen.append(options)
        return real(fn, backend="aot_eager", **kwargs)

    monkeypatch.setattr(torch, "compile", compile)
    return torch._dynamo.utils.counters, seen


def broken_compile(fn, **kwargs):
    """A torch.compile whose compiled function always fails."""
    def fail(*args):
        raise RuntimeError("backend exploded")
    return fail


def meta_gradients(learner, batches) -> tuple[list[torch.Tensor], list[dict[str, float]]]:
    """Every learner parameter's gradient accumulated over ``meta_backward`` of each batch, and
    the metrics of each call."""
    learner.zero_grad()
    metrics = [learner.meta_backward(b) for b in batches]
    return [p.grad.clone() for p in learner.parameters()], metrics


def assert_same_gradients_and_metrics(got, expected, metrics, expected_metrics) -> None:
    """Gradients equal to 1e-9 (relative) and the same metrics, call by call."""
    for value, want in zip(got, expected):
        torch.testing.assert_close(value, want, rtol=1e-9, atol=1e-12)
    for values, wants in zip(metrics, expected_metrics):
        assert values.keys() == wants.keys()
        for key, want in wants.items():
            assert values[key] == pytest.approx(want, rel=1e-9, abs=1e-12)
