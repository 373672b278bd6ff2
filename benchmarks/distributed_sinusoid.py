"""Wall-clock of data-parallel meta-training: 2 gloo processes vs 1 process, same total meta-batch.

The MAML paper's sinusoid workload (MLP 1-40-40-1, 10 support + 10 query points, one inner step,
second order) through the shared training loop (``mamlkit.train.meta_train``) with a meta-batch
of 24 tasks (25, the paper's, cannot be split over two processes). Configurations:

- 1 process, 1 thread; 1 process, 2 threads (the same cores as two processes);
- 2 processes x 12 tasks, 1 thread each (gloo all-reduce of the meta-gradient every step).

Each run is started with ``torch.multiprocessing`` (the same process group set-up as torchrun),
runs ``--warmup`` iterations, then ``--iterations`` timed ones; the table gives ms per
meta-iteration measured by rank 0 around the whole loop (sampling, inner loops, backward,
all-reduce, Adam step) and the speed-up over 1 process x 1 thread.

    python benchmarks/distributed_sinusoid.py [--iterations 300] [--warmup 30] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mamlkit import MAML, Sinusoid, sinusoid_mlp
from mamlkit.config import make_config
from mamlkit.train import meta_train

META_BATCH = 24


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_loop(iterations: int, run_dir: Path) -> None:
    config = make_config({"iterations": iterations, "meta_batch_size": META_BATCH, "val_every": 0,
                          "checkpoint_every": 10**9, "keep_checkpoints": 0, "tensorboard": False,
                          "inner_lr": 0.01, "inner_steps": 1, "shots": 10, "queries": 10})
    torch.manual_seed(0)
    learner = MAML(sinusoid_mlp(), inner_lr=0.01, inner_steps=1, first_order=False, loss="mse")
    meta_train(learner, Sinusoid(shots=10, queries=10, seed=0), config, run_dir, progress=False)


def _worker(rank: int, world: int, threads: int, port: int, warmup: int, iterations: int,
            out: str) -> None:
    torch.set_num_threads(threads)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            _run_loop(warmup, Path(tmp) / "warmup")
            if world > 1:
                dist.barrier()
            start = time.perf_counter()
            _run_loop(iterations, Path(tmp) / "timed")
            if world > 1:
                dist.barrier()
            seconds = time.perf_counter() - start
        if rank == 0:
            Path(out).write_text(f"{seconds}\n")
    finally:
        if world > 1:
            dist.destroy_process_group()


def ms_per_iteration(world: int, threads: int, warmup: int, iterations: int) -> float:
    """Milliseconds per meta-iteration of one run with ``world`` processes."""
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "seconds.txt")
        mp.start_processes(_worker, args=(world, threads, _free_port(), warmup, iterations, out),
                           nprocs=world, join=True, start_method="spawn")
        return float(Path(out).read_text()) / iterations * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    setups = [("1 process x 24 tasks", 1, 1), ("1 process x 24 tasks", 1, 2),
              ("2 processes x 12 tasks", 2, 1)]
    print(f"sinusoid MAML, meta-batch {META_BATCH}, MLP 1-40-40-1, 10+10 points, 1 inner step, "
          f"second order; {args.iterations} timed iterations after {args.warmup}, median of "
          f"{args.repeats} runs; CPU cores: {os.cpu_count()}, torch {torch.__version__}")
    rows = []
    for label, world, threads in setups:
        times = [ms_per_iteration(world, threads, args.warmup, args.iterations)
                 for _ in range(args.repeats)]
        rows.append((label, threads, statistics.median(times), min(times), max(times)))
    base = rows[0][2]
    print(f"{'setup':<24} {'threads/proc':>12} {'ms/iter (median)':>17} {'min':>7} {'max':>7} "
          f"{'speed-up':>9}")
    for label, threads, median, low, high in rows:
        print(f"{label:<24} {threads:>12} {median:>17.2f} {low:>7.2f} {high:>7.2f} "
              f"{base / median:>8.2f}x")


if __name__ == "__main__":
    main()
