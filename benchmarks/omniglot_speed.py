"""Seconds per meta-iteration on the MAML paper's Omniglot workloads, per batching mode and
thread count (to choose ``--batching`` and ``--threads`` before a long run).

Workload: MAML's four-block ConvNet (64 filters, 28x28), second order, Adam outer step, episodes
from the paper's training split (5-way: meta-batch 32, one inner step; 20-way: meta-batch 16,
five inner steps; as many queries per class as shots). Episode sampling is included. Prints
the median and min-max of the timed iterations after warm-up.

    python benchmarks/omniglot_speed.py [--ways 5] [--shots 1] [--iterations 5] [--warmup 1]
        [--threads 1 2] [--batching loop vmap] [--data-root DATA]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from mamlkit.config import make_config
from mamlkit.experiments import get_experiment
from mamlkit.experiments.common import build_learner
from mamlkit.experiments.vision import build_model, load_split

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def seconds_per_iteration(config, iterations: int, warmup: int) -> list[float]:
    """Wall-clock seconds of each timed meta-iteration (sampling, backward, Adam step)."""
    torch.manual_seed(0)
    tasks = load_split(config, "train").sampler(config.ways, config.shots, config.queries, seed=0)
    learner = build_learner(config, build_model(config, config.ways), "cross_entropy")
    optimizer = torch.optim.Adam(learner.parameters(), lr=config.meta_lr)
    times = []
    for i in range(warmup + iterations):
        start = time.perf_counter()
        optimizer.zero_grad()
        learner.meta_backward(tasks.sample(config.meta_batch_size))
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batching", nargs="+", default=["loop", "vmap"])
    parser.add_argument("--data-root", default=os.environ.get("MAMLKIT_DATA", str(DEFAULT_DATA)))
    args = parser.parse_args()
    chosen = {"ways": args.ways, "shots": args.shots}
    experiment = get_experiment("omniglot")
    base = make_config(experiment.defaults_for(chosen), chosen,
                       {"task": "omniglot", "data_root": args.data_root})
    print(f"torch {torch.__version__}, Omniglot {args.ways}-way {args.shots}-shot, meta-batch "
          f"{base.meta_batch_size}, {base.inner_steps} inner step(s), {args.iterations} timed "
          f"iterations after {args.warmup} warm-up, load average {os.getloadavg()[0]:.1f}")
    print(f"{'batching':<8} {'threads':>7} {'median s/it':>12} {'min-max s':>14}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batching in args.batching:
            config = make_config({**base.to_dict(), "batching": batching})
            times = seconds_per_iteration(config, args.iterations, args.warmup)
            print(f"{batching:<8} {threads:>7} {statistics.median(times):>12.2f} "
                  f"{min(times):>6.2f}-{max(times):<7.2f}", flush=True)


if __name__ == "__main__":
    main()
