"""Resident memory (RSS) over a long meta-training run and a long evaluation loop.

Sinusoid MAML at the paper's sizes (MLP 1-40-40-1, meta-batch 25, 10+10 points, one inner step,
second order) through the shared training loop, with validation on 200 tasks and a checkpoint
(keeping 3) every 200 iterations; then ``--evaluations`` rounds of the evaluation path
(adaptation curves of 10 steps on 100 tasks, plus single-task adapt/predict). Prints RSS at the
start, after warm-up, at intervals and at the end, and the growth after warm-up.

    python benchmarks/rss_long_run.py [--iterations 2000] [--evaluations 500] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from mamlkit import MAML, Sinusoid, sinusoid_mlp
from mamlkit.config import make_config
from mamlkit.train import meta_train

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    """Resident set size of this process in MiB (from /proc/self/statm)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE_BYTES / 2**20


class RecordingSinusoid(Sinusoid):
    """Sinusoid tasks that note RSS whenever a training meta-batch is drawn."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rss: list[float] = []

    def sample(self, num_tasks, generator=None):
        if generator is None:
            self.rss.append(rss_mb())
        return super().sample(num_tasks, generator)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--evaluations", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start_rss = rss_mb()
    torch.manual_seed(0)
    learner = MAML(sinusoid_mlp(), inner_lr=0.01, inner_steps=1, first_order=False, loss="mse")
    config = make_config({"iterations": args.iterations, "meta_batch_size": 25, "val_every": 200,
                          "val_tasks": 200, "checkpoint_every": 200, "keep_checkpoints": 3,
                          "tensorboard": False, "eval_inner_steps": 10})
    tasks = RecordingSinusoid(seed=0)
    tick = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        meta_train(learner, tasks, config, run_dir, val_batch=Sinusoid().fixed_tasks(200, seed=1),
                   progress=False)
    train_s = time.perf_counter() - tick
    end_train = rss_mb()
    warm = min(len(tasks.rss) - 1, 250)
    print(f"sinusoid MAML, {args.iterations} meta-iterations in {train_s:.1f} s "
          f"({args.threads} thread(s), torch {torch.__version__})")
    print(f"{'point':<32} {'RSS MiB':>9}")
    print(f"{'process start (after imports)':<32} {start_rss:>9.1f}")
    marks = sorted({0, warm, *range(500, len(tasks.rss), 500), len(tasks.rss) - 1})
    for i in marks:
        print(f"{f'train iteration {i + 1}':<32} {tasks.rss[i]:>9.1f}")
    print(f"{'train end':<32} {end_train:>9.1f}")
    batch = Sinusoid(seed=2).sample(100)
    eval_marks = {}
    for round_ in range(1, args.evaluations + 1):
        learner.adaptation_curve(batch, 10)
        params = learner.adapt(batch.support_x[0], batch.support_y[0], steps=10)
        learner.predict(params, batch.query_x[0])
        if round_ in (50, args.evaluations):
            eval_marks[round_] = rss_mb()
    for round_, value in eval_marks.items():
        print(f"{f'evaluation round {round_}':<32} {value:>9.1f}")
    print(f"growth in training after iteration {warm + 1}: "
          f"{tasks.rss[-1] - tasks.rss[warm]:+.2f} MiB over {len(tasks.rss) - 1 - warm} iterations")
    if len(eval_marks) == 2:
        first, last = eval_marks[50], eval_marks[args.evaluations]
        print(f"growth in evaluation after round 50: {last - first:+.2f} MiB over "
              f"{args.evaluations - 50} rounds")


if __name__ == "__main__":
    main()
