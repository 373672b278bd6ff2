"""Memory stays flat over long runs: resident set size (RSS) after warm-up vs after hundreds of
meta-iterations, for training (with validation and checkpoints) and for evaluation.

A control run that keeps one meta-loss graph per iteration (the classic leak) must exceed the
same bound, so the bound is tight enough to catch a real leak.
"""

from __future__ import annotations

import ctypes
import os

import torch
from torch import nn

from mamlkit import MAML, Sinusoid
from mamlkit.config import make_config
from mamlkit.train import meta_train

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
ITERATIONS = 300
WARMUP = 60  # after the first validation and checkpoint
BOUND_MB = 3.0
EVALUATIONS = 200


try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc
    _LIBC = None


def rss_mb() -> float:
    """Resident set size of this process in MiB (from /proc/self/statm).

    Freed heap is handed back to the system first (glibc's malloc_trim), so RSS follows the live
    memory: otherwise memory freed by earlier tests in the same process could absorb a leak.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE_BYTES / 2**20


class RecordingSinusoid(Sinusoid):
    """Sinusoid tasks that note the process's RSS each time a meta-batch is drawn."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rss: list[float] = []

    def sample(self, num_tasks, generator=None):
        if generator is None:
            self.rss.append(rss_mb())
        return super().sample(num_tasks, generator)


class LeakyMAML(MAML):
    """MAML that keeps every meta-iteration's loss and its graph alive (a deliberate leak)."""

    kept: list[torch.Tensor]

    def meta_backward(self, batch):
        metrics = super().meta_backward(batch)
        self.kept.append(self.meta_loss(batch)[0])
        return metrics


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(),
                         nn.Linear(40, 1))


def _train_growth(tmp_path, cls=MAML) -> float:
    torch.manual_seed(0)
    learner = cls(_mlp(), inner_lr=0.01, inner_steps=1, loss="mse")
    learner.kept = []
    config = make_config({"iterations": ITERATIONS, "meta_batch_size": 10, "val_every": 50,
                          "val_tasks": 20, "checkpoint_every": 50, "keep_checkpoints": 2,
                          "tensorboard": False, "eval_inner_steps": 3})
    tasks = RecordingSinusoid(seed=0)
    meta_train(learner, tasks, config, tmp_path, val_batch=Sinusoid().fixed_tasks(20, seed=1),
               progress=False)
    assert len(tasks.rss) == ITERATIONS
    return tasks.rss[-1] - tasks.rss[WARMUP]


def test_training_memory_stays_flat(tmp_path) -> None:
    growth = _train_growth(tmp_path)
    assert growth < BOUND_MB, f"RSS grew by {growth:.2f} MiB over {ITERATIONS - WARMUP} iterations"


def test_the_bound_catches_a_leak(tmp_path) -> None:
    growth = _train_growth(tmp_path, LeakyMAML)
    assert growth > BOUND_MB, f"a leak of one graph per iteration grew RSS by only {growth:.2f} MiB"


def test_evaluation_memory_stays_flat() -> None:
    torch.manual_seed(0)
    learner = MAML(_mlp(), inner_lr=0.01, inner_steps=1, loss="mse")
    batch = Sinusoid(seed=2).sample(20)

    def evaluate_once() -> None:
        learner.adaptation_curve(batch, 3)
        params = learner.adapt(batch.support_x[0], batch.support_y[0], steps=3)
        learner.predict(params, batch.query_x[0])

    for _ in range(WARMUP):
        evaluate_once()
    start = rss_mb()
    for _ in range(EVALUATIONS):
        evaluate_once()
    growth = rss_mb() - start
    assert growth < BOUND_MB, f"RSS grew by {growth:.2f} MiB over {EVALUATIONS} evaluations"
