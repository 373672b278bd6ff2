"""mamlkit: ``MAML(...).meta_backward(batch)``, the library's training step."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from benchmarks._peers.workloads import Workload

Batch = tuple[Tensor, Tensor, Tensor, Tensor]


def probe() -> tuple[str | None, str]:
    """mamlkit's version (always importable in this repository)."""
    import mamlkit

    return mamlkit.__version__, "MAML.meta_backward"


def prepare(model: nn.Module, workload: Workload, batching: str = "auto",
            chunk_size: int | None = None, compile: str = "auto") -> Callable[[Batch], None]:
    """``meta_backward`` accumulates the mean meta-gradient, as the peers do. ``compile``: the
    learner's setting; ``auto`` (the default) compiles in the background during the warm-up
    (:func:`warm_up`), ``on`` on the first call; neither is timed."""
    import mamlkit

    learner = mamlkit.MAML(model, inner_lr=workload.inner_lr, inner_steps=workload.inner_steps,
                           first_order=workload.first_order, loss=workload.loss,
                           batching=batching, chunk_size=chunk_size, compile=compile)

    def meta_gradient(batch: Batch) -> None:
        learner.meta_backward(mamlkit.TaskBatch(*batch))

    def warm_up(batch: Batch) -> str:
        """Run as the start of a long training run does under ``compile="auto"``: eager
        meta-batches until the background compile starts, then wait for it (training would go
        on eagerly meanwhile). Returns what happened, for the table's footer."""
        auto = learner.execution.auto
        if auto is None:
            return ""
        learner.expect_meta_batches(10**6)
        for _ in range(auto.repeats):
            meta_gradient(batch)
        model.zero_grad(set_to_none=True)
        auto.wait()
        learner.compile_messages()
        if auto.backend is None:
            return f"stayed eager: {auto.declined}"
        return f"compiled in the background in {auto.compile_seconds:.1f} s"

    meta_gradient.learner = learner  # type: ignore[attr-defined]
    meta_gradient.warm_up = warm_up  # type: ignore[attr-defined]
    return meta_gradient
