"""MAML-RL end to end: meta-train, train the pretrained baseline, and print the paper's
Figure 5 table (average return after 0..3 policy-gradient steps on new tasks, 95% CIs, for
MAML, pretrained and random initialisation; Finn et al. 2017, Sec. 5.3).

Paper settings for 2D navigation (the defaults): 20 tasks x 20 trajectories per meta-batch,
one inner step of size 0.1, TRPO with max KL 0.01, 500 meta-iterations.

    python benchmarks/rl_figure5.py --run-dir runs/nav2d
    python benchmarks/rl_figure5.py --env halfcheetah-vel --meta-batch-size 10 \\
        --trajectories 10 --iterations 60 --pretrain-iterations 0 --run-dir runs/cheetah
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mamlkit import LoopConfig
from mamlkit.metrics_log import read_rows
from mamlkit.rl.train import PHASES, RLSettings, evaluate_rl, train_rl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--env", default="nav2d")
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--pretrain-iterations", type=int, default=None)
    parser.add_argument("--meta-batch-size", type=int, default=20)
    parser.add_argument("--trajectories", type=int, default=20)
    parser.add_argument("--inner-lr", type=float, default=0.1)
    parser.add_argument("--eval-steps", type=int, default=3)
    parser.add_argument("--eval-tasks", type=int, default=40)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    settings = RLSettings(
        env=args.env, pretrain_iterations=args.pretrain_iterations,
        trajectories=args.trajectories, inner_lr=args.inner_lr, eval_steps=args.eval_steps,
        eval_tasks=args.eval_tasks,
    )
    loop = LoopConfig(iterations=args.iterations, meta_batch_size=args.meta_batch_size,
                      checkpoint_every=10, threads=args.threads or 0, device=args.device,
                      seed=args.seed)
    run_dir = Path(args.run_dir)
    start = time.perf_counter()
    train_rl(settings, loop, run_dir, resume=args.resume)
    train_s = time.perf_counter() - start
    for phase in PHASES:
        phase_rows = read_rows(run_dir / phase / "metrics.csv", 10**9)
        if phase_rows:
            per_iter = float(phase_rows[-1]["elapsed_s"]) / len(phase_rows)
            print(f"{phase}: {len(phase_rows)} iterations, {per_iter:.2f} s/iteration")
    print(f"training wall-clock this call: {train_s:.0f} s")
    results = evaluate_rl(run_dir, settings, args.seed, args.device)
    steps = len(next(iter(results.values())))
    header = f"{'policy':<14}" + "".join(f"{f'{k} steps':>18}" for k in range(steps))
    print(header)
    print("-" * len(header))
    for label, estimates in results.items():
        cells = "".join(f"{f'{e.mean:.1f} ± {e.ci95:.1f}':>18}" for e in estimates)
        print(f"{label:<14}{cells}")
    print(f"figure: {Path(run_dir) / 'adaptation.png'}")


if __name__ == "__main__":
    main()
