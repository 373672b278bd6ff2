"""Data-parallel meta-training with two gloo processes on the CPU equals one process.

Two processes with 8 tasks each must produce the same meta-gradient (second order) and, through
the shared training loop, the same parameters, metrics and validation as one process with the
same 16 tasks; per-rank task streams must differ, and a distributed run must resume exactly.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from mamlkit import MAML
from mamlkit.checkpoint import load_checkpoint
from mamlkit.config import make_config
from mamlkit.distributed import (
    DistributedContext,
    check_divisible,
    rank_seed,
    shard_bounds,
    synchronize_step,
)
from mamlkit.tasks.regression import Sinusoid
from mamlkit.train import meta_train

WORLD = 2
TASKS = 16


class GlobalStreamShard:
    """Rank ``rank``'s share of one global task stream (so a run can be compared with one process).

    ``reseed`` is a no-op: every rank must follow the same global stream here.
    """

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world
        self.tasks = Sinusoid(seed=0)

    def sample(self, num_tasks: int):
        batch = self.tasks.sample(num_tasks * self.world)
        return batch.slice(slice(self.rank * num_tasks, (self.rank + 1) * num_tasks))

    def reseed(self, seed: int) -> None:
        pass

    def state_dict(self):
        return self.tasks.state_dict()

    def load_state_dict(self, state) -> None:
        self.tasks.load_state_dict(state)


def _config(**overrides):
    return make_config({"iterations": 4, "meta_batch_size": TASKS, "val_every": 2, "val_tasks": 6,
                        "checkpoint_every": 2, "tensorboard": False, "eval_inner_steps": 1,
                        "inner_lr": 0.01, **overrides})


def _learner(seed: int = 0, dropout: bool = False, dtype=torch.float32) -> MAML:
    torch.manual_seed(seed)
    middle = [nn.Dropout(0.2)] if dropout else [nn.Linear(16, 16), nn.ReLU()]
    model = nn.Sequential(nn.Linear(1, 16), nn.ReLU(), *middle, nn.Linear(16, 1))
    return MAML(model.to(dtype), inner_lr=0.01, inner_steps=1, first_order=False, loss="mse")


def _val_batch():
    return Sinusoid().fixed_tasks(6, seed=1)


def _meta_gradient(batch, context) -> dict[str, torch.Tensor]:
    learner = _learner(dtype=torch.float64)
    learner.meta_backward(batch)
    synchronize_step(list(learner.parameters()), {"loss": 0.0}, False, False, context)
    return {n: p.grad.clone() for n, p in learner.named_parameters()}


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        context = DistributedContext(rank, WORLD, rank, "gloo")
        out_dir = Path(out)
        results: dict = {}
        # (a) one meta-gradient, second order, float64
        batch = Sinusoid(seed=3).sample(TASKS)
        batch = batch.slice(shard_bounds(TASKS, context)).to(torch.float64)
        results["grad"] = _meta_gradient(batch, context)
        # (b) a few steps of the training loop on shards of one global stream
        learner = _learner()
        meta_train(learner, GlobalStreamShard(rank, WORLD), _config(), out_dir / "loop",
                   val_batch=_val_batch(), progress=False)
        results["params"] = {n: p.detach().clone() for n, p in learner.named_parameters()}
        # (c) per-rank task streams, dropout, and an exact distributed resume
        first = Sinusoid(seed=0)
        meta_train(_learner(dropout=True), first, _config(iterations=2), out_dir / "resumed",
                   progress=False)
        resumed = _learner(dropout=True)
        meta_train(resumed, Sinusoid(seed=0), _config(), out_dir / "resumed", resume=True,
                   progress=False)
        straight = _learner(dropout=True)
        stream = Sinusoid(seed=0)
        meta_train(straight, stream, _config(), out_dir / "straight", progress=False)
        results["resumed"] = {n: p.detach().clone() for n, p in resumed.named_parameters()}
        results["straight"] = {n: p.detach().clone() for n, p in straight.named_parameters()}
        results["next_tasks"] = stream.sample(4).info["amplitude"]
        torch.save(results, out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.start_processes(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True,
                       start_method="spawn")
    return out, [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def test_two_processes_give_the_meta_gradient_of_one(two_process_run) -> None:
    _, ranks = two_process_run
    single = _meta_gradient(Sinusoid(seed=3).sample(TASKS).to(torch.float64),
                            DistributedContext())
    for name, grad in single.items():
        assert grad.abs().max() > 0
        for r in ranks:
            torch.testing.assert_close(r["grad"][name], grad, rtol=1e-12, atol=1e-14)


def test_two_processes_train_like_one(two_process_run, tmp_path) -> None:
    out, ranks = two_process_run
    learner = _learner()
    meta_train(learner, GlobalStreamShard(0, 1), _config(), tmp_path, val_batch=_val_batch(),
               progress=False)
    initial = _learner()
    for name, p in learner.named_parameters():
        assert not torch.equal(p, dict(initial.named_parameters())[name])  # it did train
        for r in ranks:
            torch.testing.assert_close(r["params"][name], p.detach(), rtol=1e-5, atol=1e-6)
    one = (tmp_path / "metrics.csv").read_text().splitlines()
    two = (out / "loop" / "metrics.csv").read_text().splitlines()
    assert len(one) == len(two) == 3  # header + validations at iterations 2 and 4
    for a, b in zip(one[1:], two[1:]):
        fields_a, fields_b = a.split(","), b.split(",")
        assert fields_a[0] == fields_b[0]
        loss_a, val_a = float(fields_a[2]), float(fields_a[5])
        loss_b, val_b = float(fields_b[2]), float(fields_b[5])
        assert loss_a == pytest.approx(loss_b, rel=1e-5) and val_a == pytest.approx(val_b, rel=1e-5)


def test_ranks_draw_different_tasks_and_checkpoint_every_stream(two_process_run) -> None:
    out, ranks = two_process_run
    assert not torch.equal(ranks[0]["next_tasks"], ranks[1]["next_tasks"])
    assert rank_seed(0, 0) == 0 and rank_seed(0, 1) != rank_seed(1, 0)
    state = load_checkpoint(out / "straight" / "checkpoints" / "last.pt")
    assert state["world_size"] == WORLD and len(state["ranks"]) == WORLD
    generators = [s["sampler"]["generator"] for s in state["ranks"]]
    assert not torch.equal(*generators)
    assert not (out / "straight" / "checkpoints" / "rank1").exists()


def test_distributed_resume_is_exact(two_process_run) -> None:
    _, ranks = two_process_run
    for r in ranks:
        for name, p in r["straight"].items():
            assert torch.equal(r["resumed"][name], p), name
    for name, p in ranks[0]["straight"].items():
        assert torch.equal(ranks[1]["straight"][name], p), name


def test_meta_batch_must_split_evenly() -> None:
    assert check_divisible(16, 2) == 8
    with pytest.raises(ValueError, match=r"meta_batch_size=25 cannot be split evenly across 2 "
                                         r"processes.*multiple of 2 \(e.g. 24 or 26\)"):
        check_divisible(25, 2)


def test_shards_cover_every_task_once() -> None:
    for total in (0, 1, 5, 6, 7):
        parts = [shard_bounds(total, DistributedContext(r, 3)) for r in range(3)]
        covered = [i for s in parts for i in range(total)[s]]
        assert covered == list(range(total))
