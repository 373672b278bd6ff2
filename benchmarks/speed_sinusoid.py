"""Milliseconds per meta-iteration on the MAML paper's sinusoid workload.

Workload: 25 tasks, MLP 1-40-40-1, 10 support + 10 query points, 1 inner step, second order,
Adam outer step (task sampling included). Prints the median (and min-max) of the timed
iterations after warm-up, for each batching mode and thread count.

    python benchmarks/speed_sinusoid.py [--iterations 200] [--warmup 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import mamlkit


def time_meta_iterations(batching: str, iterations: int, warmup: int, first_order: bool) -> list[float]:
    """Seconds for each of ``iterations`` meta-iterations after ``warmup`` untimed ones."""
    torch.manual_seed(0)
    maml = mamlkit.MAML(mamlkit.sinusoid_mlp(), inner_lr=0.01, inner_steps=1, batching=batching,
                        first_order=first_order)
    optimizer = torch.optim.Adam(maml.parameters(), lr=1e-3)
    tasks = mamlkit.Sinusoid(shots=10, queries=10, seed=0)
    times = []
    for i in range(warmup + iterations):
        start = time.perf_counter()
        optimizer.zero_grad()
        maml.meta_backward(tasks.sample(25))
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {args.iterations} timed iterations after {args.warmup} warm-up")
    print(f"{'batching':<8} {'order':<6} {'threads':>7} {'median ms':>10} {'min-max ms':>16}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batching in ("vmap", "loop"):
            for first_order in (False, True):
                ms = [t * 1e3 for t in time_meta_iterations(batching, args.iterations, args.warmup,
                                                             first_order)]
                order = "first" if first_order else "second"
                print(f"{batching:<8} {order:<6} {threads:>7} {statistics.median(ms):>10.2f} "
                      f"{min(ms):>7.2f}-{max(ms):<8.2f}")


if __name__ == "__main__":
    main()
