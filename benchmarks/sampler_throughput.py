"""Episode sampling throughput and Omniglot load time (first run vs cached).

Prints a table: episodes per second for meta-batches of 32 five-way one-shot episodes with 1 and
15 queries per class, drawn from MAML's Omniglot meta-training split (1,200 characters x 4
rotations), by ``EpisodeSampler.sample`` and by the prefetching ``EpisodeSampler.stream``, with
one torch thread and with the default number; and the time to build that split from the zips
into an empty cache versus from the cache.

    python benchmarks/sampler_throughput.py [--root PATH] [--batches 200]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from mamlkit.datasets import EpisodeSampler, Omniglot


def default_root() -> Path:
    env = os.environ.get("MAMLKIT_DATA")
    base = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return base / "omniglot"


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def episodes_per_second(sampler: EpisodeSampler, tasks: int, batches: int, stream: bool) -> float:
    sampler.sample(tasks)  # warm-up
    start = time.perf_counter()
    if stream:
        with sampler.stream(tasks, prefetch=2, num_batches=batches) as batches_iter:
            for _ in batches_iter:
                pass
    else:
        for _ in range(batches):
            sampler.sample(tasks)
    return tasks * batches / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=default_root())
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--tasks", type=int, default=32)
    args = parser.parse_args()
    if not (args.root / "images_background.zip").is_file():
        raise SystemExit(f"Omniglot zips not found in {args.root}; pass --root.")

    with tempfile.TemporaryDirectory() as cache:
        first, _ = timed(lambda: Omniglot(args.root, split="trainval", cache_dir=cache))
        cached, data = timed(lambda: Omniglot(args.root, split="trainval", cache_dir=cache))

    default_threads = torch.get_num_threads()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {load:.1f} at start; "
          f"Omniglot trainval: {len(data)} classes")
    print()
    print("| what | setting | result |")
    print("| --- | --- | --- |")
    print(f"| Omniglot load (trainval, both zips) | first run (decode + resize + cache) "
          f"| {first:.2f} s |")
    print(f"| Omniglot load (trainval, both zips) | cached run | {cached:.2f} s |")
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        for queries in (1, 15):
            sampler = data.sampler(ways=5, shots=1, queries=queries, seed=0)
            for stream in (False, True):
                rate = episodes_per_second(sampler, args.tasks, args.batches, stream)
                how = "stream(prefetch=2)" if stream else "sample()"
                print(f"| episodes/s, {args.tasks}-task 5-way 1-shot, {queries} queries "
                      f"| {how}, torch threads={threads} | {rate:,.0f} |")
    torch.set_num_threads(default_threads)


if __name__ == "__main__":
    main()
