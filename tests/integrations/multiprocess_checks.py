"""What the two-process framework tests share: a tiny float64 learner, one global task list, a
plain single-process reference, and a launcher that starts two gloo processes."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.multiprocessing as mp
from torch import nn

from mamlkit import MAML
from mamlkit.tasks.regression import Sinusoid

WORLD = 2
TASKS_PER_PROCESS = 4
STEPS = 3
META_LR = 0.01


def tiny_learner(chunk_size: int | None = None) -> MAML:
    """The same float64 MLP learner in every process (second order, two inner steps)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    return MAML(model, inner_lr=0.02, inner_steps=2, loss="mse", chunk_size=chunk_size)


def global_tasks() -> object:
    """Every task of the run, float64: step k's meta-batch is tasks ``8k .. 8k + 7``."""
    return Sinusoid(seed=3).fixed_tasks(WORLD * TASKS_PER_PROCESS * STEPS, seed=5).to(torch.float64)


def reference_parameters() -> dict[str, torch.Tensor]:
    """One process on the union of both processes' tasks, with a plain autograd loop: the mean
    outer loss of the whole meta-batch, ``backward``, an Adam step."""
    learner = tiny_learner()
    optimizer = torch.optim.Adam(learner.parameters(), lr=META_LR)
    tasks = global_tasks()
    union = WORLD * TASKS_PER_PROCESS
    for step in range(STEPS):
        batch = tasks.slice(slice(step * union, (step + 1) * union))
        optimizer.zero_grad()
        losses = []
        for t in range(batch.num_tasks):
            fast = dict(learner.model.named_parameters())
            for _ in range(2):
                loss = nn.functional.mse_loss(
                    torch.func.functional_call(learner.model, fast, (batch.support_x[t],)),
                    batch.support_y[t])
                grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
                fast = {n: p - 0.02 * g for (n, p), g in zip(fast.items(), grads)}
            losses.append(nn.functional.mse_loss(
                torch.func.functional_call(learner.model, fast, (batch.query_x[t],)),
                batch.query_y[t]))
        torch.stack(losses).mean().backward()
        optimizer.step()
    return {n: p.detach().clone() for n, p in learner.named_parameters()}


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_process_environment(rank: int, port: int) -> None:
    """The variables torchrun would set for process ``rank`` of ``WORLD`` on one machine."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD),
                      RANK=str(rank), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(WORLD),
                      NODE_RANK="0", GROUP_RANK="0")
    torch.set_num_threads(1)


def run_two_processes(worker: Callable[..., None], out: Path, deadline_s: float = 300.0) -> list[dict]:
    """Run ``worker(rank, port, out)`` in two spawned processes and return what each saved as
    ``out/rank{rank}.pt``. Spawned, not forked: a fork taken while another thread of the test
    process holds a lock (a compile worker, a task-thread pool, a logging handler) can leave the
    child waiting forever. Past ``deadline_s`` both processes are killed and the test fails."""
    context = mp.start_processes(worker, args=(free_port(), str(out)), nprocs=WORLD, join=False,
                                 start_method="spawn")
    start = time.monotonic()
    while not context.join(timeout=5):
        if time.monotonic() - start > deadline_s:
            for process in context.processes:
                process.kill()
            raise AssertionError(f"the two processes did not finish within {deadline_s:.0f} s")
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def assert_matches_reference(ranks: list[dict[str, torch.Tensor]]) -> None:
    """Both processes hold identical parameters, equal to one process on all tasks (1e-10)."""
    reference = reference_parameters()
    initial = dict(tiny_learner().named_parameters())
    for name, expected in reference.items():
        assert not torch.allclose(expected, initial[name])  # the runs did train
        assert torch.equal(ranks[0][name], ranks[1][name]), name
        torch.testing.assert_close(ranks[0][name], expected, rtol=0, atol=1e-10)
