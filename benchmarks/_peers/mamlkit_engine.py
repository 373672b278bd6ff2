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
            chunk_size: int | None = None, compile: bool = False) -> Callable[[Batch], None]:
    """``meta_backward`` accumulates the mean meta-gradient, as the peers do; ``compile`` turns
    on the learner's ``torch.compile`` option (compiled during the warm-up, which is not timed)."""
    import mamlkit

    learner = mamlkit.MAML(model, inner_lr=workload.inner_lr, inner_steps=workload.inner_steps,
                           first_order=workload.first_order, loss=workload.loss,
                           batching=batching, chunk_size=chunk_size, compile=compile)

    def meta_gradient(batch: Batch) -> None:
        learner.meta_backward(mamlkit.TaskBatch(*batch))

    meta_gradient.learner = learner  # type: ignore[attr-defined]
    return meta_gradient
