"""Wall-clock of data-parallel meta-training: 2 gloo processes vs 1 process, same total meta-batch.

Two workloads of the MAML paper, through the shared training loop (``mamlkit.train.meta_train``):

- ``sinusoid``: MLP 1-40-40-1, 10 support + 10 query points, one inner step, second order, a
  meta-batch of 24 tasks (25, the paper's, cannot be split over two processes);
- ``omniglot``: 5-way 1-shot episodes of the real Omniglot images (MAML's split; one query image
  per class, as MAML's code), the four-block CNN, one inner step of 0.4, second order, a
  meta-batch of 32 tasks (needs the data: ``--data-root`` or ``MAMLKIT_DATA``).

Configurations:

- 1 process, 1 thread; 1 process, 2 threads (the same cores as two processes);
- 2 processes x half the tasks, 1 thread each (gloo all-reduce of the meta-gradient every step).

Each run is started with ``torch.multiprocessing`` (the same process group set-up as torchrun),
runs ``--warmup`` iterations, then ``--iterations`` timed ones; the table gives ms per
meta-iteration measured by rank 0 around the whole loop (sampling, inner loops, backward,
all-reduce, Adam step) and the speed-up over 1 process x 1 thread.

    python benchmarks/distributed_speed.py [--iterations 300] [--warmup 30] [--repeats 3]
    python benchmarks/distributed_speed.py --workload omniglot --iterations 20 --warmup 3
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

META_BATCH = {"sinusoid": 24, "omniglot": 32}
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_loop(workload: str, data_root: str, iterations: int, run_dir: Path) -> None:
    common = {"iterations": iterations, "meta_batch_size": META_BATCH[workload], "val_every": 0,
              "checkpoint_every": 10**9, "keep_checkpoints": 0, "tensorboard": False,
              "plots": False}
    torch.manual_seed(0)
    if workload == "sinusoid":
        config = make_config({**common, "inner_lr": 0.01, "inner_steps": 1, "shots": 10,
                              "queries": 10})
        learner = MAML(sinusoid_mlp(), inner_lr=0.01, inner_steps=1, loss="mse")
        tasks = Sinusoid(shots=10, queries=10, seed=0)
    else:
        from mamlkit.experiments import get_experiment
        from mamlkit.experiments.vision import build_model, load_all

        defaults = get_experiment("omniglot").defaults_for({})
        config = make_config({**defaults, **common, "data_root": data_root})
        images = load_all(config, roles=("train",))["train"]
        learner = MAML(build_model(config, config.ways), inner_lr=config.inner_lr,
                       inner_steps=config.inner_steps, loss="cross_entropy")
        tasks = images.sampler(config.ways, config.shots, config.queries, seed=0)
    meta_train(learner, tasks, config, run_dir, progress=False)


def _worker(rank: int, world: int, threads: int, port: int, workload: str, data_root: str,
            warmup: int, iterations: int, out: str) -> None:
    torch.set_num_threads(threads)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            _run_loop(workload, data_root, warmup, Path(tmp) / "warmup")
            if world > 1:
                dist.barrier()
            start = time.perf_counter()
            _run_loop(workload, data_root, iterations, Path(tmp) / "timed")
            if world > 1:
                dist.barrier()
            seconds = time.perf_counter() - start
        if rank == 0:
            Path(out).write_text(f"{seconds}\n")
    finally:
        if world > 1:
            dist.destroy_process_group()


def ms_per_iteration(world: int, threads: int, workload: str, data_root: str, warmup: int,
                     iterations: int) -> float:
    """Milliseconds per meta-iteration of one run with ``world`` processes."""
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "seconds.txt")
        mp.start_processes(_worker, args=(world, threads, _free_port(), workload, data_root, warmup,
                                          iterations, out),
                           nprocs=world, join=True, start_method="spawn")
        return float(Path(out).read_text()) / iterations * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=sorted(META_BATCH), default="sinusoid")
    parser.add_argument("--data-root", default=os.environ.get("MAMLKIT_DATA", str(DEFAULT_DATA)))
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tasks = META_BATCH[args.workload]
    setups = [(f"1 process x {tasks} tasks", 1, 1), (f"1 process x {tasks} tasks", 1, 2),
              (f"2 processes x {tasks // 2} tasks", 2, 1)]
    shape = ("MLP 1-40-40-1, 10+10 points" if args.workload == "sinusoid"
             else "5-way 1-shot, 4-block CNN, 5+5 images")
    print(f"{args.workload} MAML, meta-batch {tasks}, {shape}, 1 inner step, second order; "
          f"{args.iterations} timed iterations after {args.warmup}, median of {args.repeats} "
          f"runs; CPU cores: {os.cpu_count()}, torch {torch.__version__}, load average "
          f"{os.getloadavg()[0]:.1f}")
    rows = []
    for label, world, threads in setups:
        times = [ms_per_iteration(world, threads, args.workload, args.data_root, args.warmup,
                                  args.iterations) for _ in range(args.repeats)]
        rows.append((label, threads, statistics.median(times), min(times), max(times)))
    base = rows[0][2]
    print(f"{'setup':<24} {'threads/proc':>12} {'ms/iter (median)':>17} {'min':>7} {'max':>7} "
          f"{'speed-up':>9}")
    for label, threads, median, low, high in rows:
        print(f"{label:<24} {threads:>12} {median:>17.2f} {low:>7.2f} {high:>7.2f} "
              f"{base / median:>8.2f}x")


if __name__ == "__main__":
    main()
