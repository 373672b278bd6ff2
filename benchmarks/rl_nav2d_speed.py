"""Seconds per MAML-TRPO meta-iteration on 2D navigation at the paper's sizes, broken down.

Finn et al. 2017, Sec. 5.3: 20 tasks x 20 trajectories x 100 steps, one inner step, policy
with two hidden layers of 100 units. Prints one row per HVP mode: total seconds per
meta-iteration and its parts (sampling, inner step, outer TRPO step = objective + CG + line
search), plus the cost of one KL-Hessian-vector product. ``s/iter`` is wall-clock, ``cpu s`` the
process's CPU time (on a shared machine the two differ).

    python benchmarks/rl_nav2d_speed.py --threads 2 --iterations 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from mamlkit.rl.maml_trpo import HVP_MODES, MAMLTRPO
from mamlkit.rl.policy import GaussianMLPPolicy
from mamlkit.rl.sampler import TaskSampler


def measure(mode: str, args: argparse.Namespace) -> dict[str, float]:
    torch.manual_seed(0)
    sampler = TaskSampler("nav2d")
    policy = GaussianMLPPolicy(2, 2, (args.hidden, args.hidden)).to(args.device)
    learner = MAMLTRPO(policy, sampler, inner_lr=0.1, inner_steps=args.inner_steps,
                       first_order=args.first_order, trajectories=args.trajectories,
                       hvp_mode=mode)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(args.warmup + args.iterations):
        tasks = sampler.sample_tasks(args.tasks, rng)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        metrics = learner.step(tasks, seed=i)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        metrics["total_s"] = time.perf_counter() - start
        metrics["cpu_s"] = time.process_time() - cpu_start
        if i >= args.warmup:
            rows.append(metrics)
    # one HVP in isolation, on a fresh meta-batch
    objective = learner.collect(sampler.sample_tasks(args.tasks, rng), seed=99)
    vector = torch.randn_like(objective.gradient)
    hvp = objective.reference_hvp_fn() if mode == "autograd" else objective.hvp
    hvp(vector)
    start = time.perf_counter()
    for _ in range(3):
        hvp(vector)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    out = {k: statistics.median(r[k] for r in rows)
           for k in ("total_s", "cpu_s", "sampling_s", "inner_s", "outer_s")}
    out["hvp_s"] = (time.perf_counter() - start) / 3
    out["return_after"] = rows[-1]["return_after"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--trajectories", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=100)
    parser.add_argument("--inner-steps", type=int, default=1)
    parser.add_argument("--first-order", action="store_true")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modes", default="closed_form,structured,autograd",
                        help=f"comma-separated subset of {HVP_MODES}")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"nav2d MAML-TRPO, {args.tasks} tasks x {args.trajectories} trajectories x 100 steps, "
          f"{args.inner_steps} inner step(s), {'first' if args.first_order else 'second'} order, "
          f"device {args.device}, {torch.get_num_threads()} threads, median of "
          f"{args.iterations} iterations after {args.warmup} warm-up")
    header = (f"{'hvp mode':<12}{'s/iter':>8}{'cpu s':>8}{'sampling':>10}{'inner':>8}"
              f"{'outer':>8}{'1 HVP':>8}")
    print(header)
    print("-" * len(header))
    for mode in args.modes.split(","):
        r = measure(mode, args)
        print(f"{mode:<12}{r['total_s']:>8.2f}{r['cpu_s']:>8.2f}{r['sampling_s']:>10.2f}"
              f"{r['inner_s']:>8.2f}{r['outer_s']:>8.2f}{r['hvp_s']:>8.3f}")


if __name__ == "__main__":
    main()
