"""The Accelerate recipe with two gloo CPU processes: ``accelerator.prepare`` takes the learner,
its optimizer and a DataLoader of TaskBatch tasks, and with ``meta_backward`` or ``meta_loss`` both
processes end with identical parameters, equal (float64, 1e-10) to one process trained on the
union of their tasks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

accelerate = pytest.importorskip("accelerate")

from multiprocess_checks import (  # noqa: E402
    META_LR,
    TASKS_PER_PROCESS,
    assert_matches_reference,
    global_tasks,
    run_two_processes,
    set_process_environment,
    tiny_learner,
)
from torch.utils.data import DataLoader  # noqa: E402

from mamlkit.integrations import TaskBatch, TaskDataset, collate_tasks  # noqa: E402
from mamlkit.integrations.accelerate import meta_step  # noqa: E402


def _worker(rank: int, port: int, out: str) -> None:
    set_process_environment(rank, port)
    accelerator = accelerate.Accelerator(cpu=True)
    results = {"processes": accelerator.num_processes}
    for objective, chunk_size in (("meta_loss", None), ("meta_backward", 2)):
        learner = tiny_learner(chunk_size)
        optimizer = torch.optim.Adam(learner.parameters(), lr=META_LR)
        # batches in turn: step k gives process 0 tasks 8k..8k+3 and process 1 tasks 8k+4..8k+7
        loader = DataLoader(TaskDataset(global_tasks()), batch_size=TASKS_PER_PROCESS,
                            collate_fn=collate_tasks)
        learner, optimizer, loader = accelerator.prepare(learner, optimizer, loader)
        for batch in loader:
            assert isinstance(batch, TaskBatch) and batch.num_tasks == TASKS_PER_PROCESS
            meta_step(accelerator, learner, optimizer, batch, objective=objective)
        inner = accelerator.unwrap_model(learner)
        results[objective] = {n: p.detach().clone() for n, p in inner.named_parameters()}
    torch.save(results, Path(out) / f"rank{rank}.pt")
    accelerator.end_training()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    return run_two_processes(_worker, tmp_path_factory.mktemp("accelerate-ddp"))


@pytest.mark.parametrize("objective", ["meta_loss", "meta_backward"])
def test_two_accelerate_processes_train_like_one_on_all_tasks(ranks, objective) -> None:
    assert all(r["processes"] == 2 for r in ranks)
    assert_matches_reference([r[objective] for r in ranks])
