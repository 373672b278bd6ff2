"""The Accelerate recipe with two gloo CPU processes: ``accelerator.prepare`` takes the learner,
its optimizer and a DataLoader of TaskBatch tasks, and with ``meta_backward`` or ``meta_loss`` both
processes end with identical parameters, equal (float64, 1e-10) to one process trained on the
union of their tasks; the same with one task stream dispatched from the main process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

accelerate = pytest.importorskip("accelerate")

from multiprocess_checks import (  # noqa: E402
    META_LR,
    STEPS,
    TASKS_PER_PROCESS,
    assert_matches_reference,
    global_tasks,
    run_two_processes,
    set_process_environment,
    tiny_learner,
)
from torch.utils.data import DataLoader  # noqa: E402

from mamlkit.integrations import TaskBatch, TaskDataset, TaskStream, collate_tasks  # noqa: E402
from mamlkit.integrations.accelerate import meta_step  # noqa: E402


class InOrder:
    """A task sampler that hands out the global tasks in order."""

    def __init__(self) -> None:
        self.tasks, self.next = global_tasks(), 0

    def sample(self, n: int) -> TaskBatch:
        self.next += n
        return self.tasks.slice(slice(self.next - n, self.next))


def _loader(source: str) -> DataLoader:
    if source == "dataset":  # batches in turn: step k gives process 0 tasks 8k..8k+3, 1 the rest
        return DataLoader(TaskDataset(global_tasks()), batch_size=TASKS_PER_PROCESS,
                          collate_fn=collate_tasks)
    # one stream: the main process draws a batch per process, each gets its slice (dispatched)
    stream = TaskStream(InOrder(), TASKS_PER_PROCESS, batches=STEPS * 2)
    return DataLoader(stream, batch_size=None)


def _worker(rank: int, port: int, out: str) -> None:
    set_process_environment(rank, port)
    accelerator = accelerate.Accelerator(cpu=True)
    results = {"processes": accelerator.num_processes}
    runs = (("meta_loss", None, "dataset"), ("meta_backward", 2, "dataset"),
            ("meta_backward", 2, "stream"))
    for objective, chunk_size, source in runs:
        learner = tiny_learner(chunk_size)
        optimizer = torch.optim.Adam(learner.parameters(), lr=META_LR)
        learner, optimizer, loader = accelerator.prepare(learner, optimizer, _loader(source))
        steps = 0
        for batch in loader:
            assert len(batch["query_y"] if source == "stream" else batch.query_y) == TASKS_PER_PROCESS
            meta_step(accelerator, learner, optimizer, batch, objective=objective)
            steps += 1
        assert steps == STEPS
        inner = accelerator.unwrap_model(learner)
        results[f"{objective} {source}"] = {n: p.detach().clone()
                                            for n, p in inner.named_parameters()}
    torch.save(results, Path(out) / f"rank{rank}.pt")
    accelerator.end_training()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    return run_two_processes(_worker, tmp_path_factory.mktemp("accelerate-ddp"))


@pytest.mark.parametrize("run", ["meta_loss dataset", "meta_backward dataset",
                                 "meta_backward stream"])
def test_two_accelerate_processes_train_like_one_on_all_tasks(ranks, run) -> None:
    assert all(r["processes"] == 2 for r in ranks)
    assert_matches_reference([r[run] for r in ranks])
