"""MetaLearningModule under Lightning's DDP with two gloo CPU processes: with ``meta_loss``
(automatic optimisation) and with ``meta_backward`` (manual, chunked), both processes end with
identical parameters, equal (float64, 1e-10) to one process trained on the union of their tasks;
DDP reduces once per step however many chunks meta_backward runs. A plain backward inside DDP's
forward is refused instead of silently diverging."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")

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
from torch.utils.data import DataLoader, DistributedSampler  # noqa: E402

from mamlkit.integrations import TaskDataset, collate_tasks  # noqa: E402
from mamlkit.integrations.lightning import MetaLearningModule  # noqa: E402


class PlainBackwardModule(MetaLearningModule):
    """The mistake the learner refuses: meta_backward without the framework's backward."""

    def training_step(self, batch, batch_idx):
        self.learner.meta_backward(batch)


REDUCTIONS = []


def _counting_allreduce(state, bucket):
    """DDP's own all-reduce hook, counting how often DDP reduces gradients."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    REDUCTIONS.append(bucket.index())
    return allreduce_hook(state, bucket)


class CountingModule(MetaLearningModule):
    """Counts DDP's gradient reductions (Lightning registers comm hooks on GPUs only)."""

    def on_train_start(self) -> None:
        self.trainer.strategy.model.register_comm_hook(None, _counting_allreduce)


def _trainer(**overrides) -> pl.Trainer:
    settings = dict(accelerator="cpu", devices=2, strategy="ddp", max_steps=STEPS,
                    logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0,
                    use_distributed_sampler=False)
    return pl.Trainer(**{**settings, **overrides})


def _loader(rank: int) -> DataLoader:
    """Process ``rank``'s tasks in order: tasks ``r, r + 2, ...`` (so step k's meta-batch over
    both processes is tasks ``8k .. 8k + 7``; Lightning's own sampler would shuffle)."""
    dataset = TaskDataset(global_tasks())
    sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=False)
    return DataLoader(dataset, batch_size=TASKS_PER_PROCESS, sampler=sampler,
                      collate_fn=collate_tasks)


def _worker(rank: int, port: int, out: str) -> None:
    set_process_environment(rank, port)
    results = {}
    for objective, chunk_size in (("meta_loss", None), ("meta_backward", 2)):
        module = CountingModule(tiny_learner(chunk_size), meta_lr=META_LR, objective=objective)
        REDUCTIONS.clear()
        _trainer().fit(module, _loader(rank))
        results[objective] = {n: p.detach().clone() for n, p in module.learner.named_parameters()}
        results[f"{objective} reductions"] = list(REDUCTIONS)
    try:
        _trainer(max_steps=1).fit(PlainBackwardModule(tiny_learner()), _loader(rank))
    except RuntimeError as error:
        results["refused"] = str(error)
    torch.save(results, Path(out) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    return run_two_processes(_worker, tmp_path_factory.mktemp("lightning-ddp"))


@pytest.mark.parametrize("objective", ["meta_loss", "meta_backward"])
def test_two_ddp_processes_train_like_one_on_all_tasks(ranks, objective) -> None:
    assert_matches_reference([r[objective] for r in ranks])


def test_ddp_reduces_once_per_step_over_all_chunks(ranks) -> None:
    for r in ranks:  # one bucket (a tiny model), one reduction per step; two chunks per step
        assert r["meta_backward reductions"] == [0] * STEPS
        assert r["meta_loss reductions"] == [0] * STEPS


def test_plain_backward_inside_ddp_is_refused(ranks) -> None:
    for r in ranks:
        assert "bypasses DDP's gradient reduction" in r.get("refused", "")
        assert "backward=self.manual_backward" in r["refused"]
