"""Omniglot with the MAML paper's hyperparameters under a wall-clock budget, then the paper's
evaluation: meta-test accuracy (600 fixed episodes, 95% CI) of MAML, the pretrained classifier
and a random initialisation after 0..10 adaptation steps.

Runs ``mamlkit train omniglot`` (skipped when ``--run-dir`` already holds a finished training)
and ``mamlkit eval`` (skipped when it holds results), then prints one table with the budget, the
meta-iterations reached, the wall-clock of each phase and the accuracies next to the paper's.

    python benchmarks/omniglot_budget.py --run-dir /tmp/omniglot-5w1s --ways 5 --shots 1 \\
        --minutes 47 [--baseline-iterations 200] [--threads 1] [--batching loop]

Validation (every ``--val-every`` iterations on ``--val-tasks`` episodes) is not counted in the
budget, which covers meta-training steps only; the table reports the wall-clock as well.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from mamlkit.cli import main as mamlkit

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PAPER = {(5, 1): 98.7, (5, 5): 99.9, (20, 1): 95.8, (20, 5): 98.9}
"""Finn et al. 2017, Table 1: MAML's Omniglot accuracy (%) per (ways, shots)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=47.0)
    parser.add_argument("--baseline-iterations", type=int, default=200)
    parser.add_argument("--val-every", type=int, default=50)
    parser.add_argument("--val-tasks", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batching", default="loop")
    parser.add_argument("--data-root", default=os.environ.get("MAMLKIT_DATA", str(DEFAULT_DATA)))
    args = parser.parse_args()
    run = args.run_dir
    phases = {}
    if not (run / "train_summary.json").is_file():
        start = time.perf_counter()
        code = mamlkit(["train", "omniglot", "--ways", str(args.ways), "--shots", str(args.shots),
                        "--run-dir", str(run), "--data-root", args.data_root,
                        "--time-budget-minutes", str(args.minutes), "--threads", str(args.threads),
                        "--batching", args.batching, "--val-every", str(args.val_every),
                        "--val-tasks", str(args.val_tasks), "--checkpoint-every",
                        str(args.val_every), "--baseline-iterations",
                        str(args.baseline_iterations), "--no-eval", "--no-tensorboard"])
        if code:
            raise SystemExit(code)
        phases["train wall-clock (s)"] = time.perf_counter() - start
    if not (run / "eval" / "results.json").is_file():
        start = time.perf_counter()
        code = mamlkit(["eval", str(run), "--threads", str(args.threads)])
        if code:
            raise SystemExit(code)
        phases["eval wall-clock (s)"] = time.perf_counter() - start
    summary = json.loads((run / "train_summary.json").read_text())
    results = json.loads((run / "eval" / "results.json").read_text())
    config = json.loads((run / "config.json").read_text())
    ways, shots = config["ways"], config["shots"]
    maml = summary["maml"]
    print(f"\nOmniglot {ways}-way {shots}-shot, {config['class_split'] or 'paper'} split; budget "
          f"{config['time_budget_minutes']} min of meta-training steps "
          f"(meta-batch {config['meta_batch_size']}, {config['inner_steps']} inner step(s) of "
          f"{config['inner_lr']}, Adam {config['meta_lr']})")
    print(f"MAML: {maml['iterations']} meta-iterations, {maml['train_seconds']:.0f} s in steps, "
          f"{maml['wall_seconds']:.0f} s wall-clock incl. validation; best validation accuracy "
          f"{100 * (maml['best_val_accuracy'] or 0):.1f}%")
    if "pretrained" in summary:
        base = summary["pretrained"]
        print(f"pretrained classifier: {base['iterations']} iterations, "
              f"{base['wall_seconds']:.0f} s wall-clock")
    for phase, seconds in phases.items():
        print(f"{phase}: {seconds:.0f}")
    steps = results["steps"]
    print(f"\n{'model':<12} {'0 steps':>15} {'1 step':>15} {f'{steps} steps':>15} {'paper':>7}")
    for label, curve in results["accuracy"].items():
        cells = [f"{100 * curve[s]['mean']:.2f} ± {100 * curve[s]['ci95']:.2f}"
                 for s in (0, min(1, steps), steps)]
        paper = f"{PAPER.get((ways, shots), float('nan')):.1f}" if label == "MAML" else ""
        print(f"{label:<12} " + " ".join(f"{c:>15}" for c in cells) + f" {paper:>7}")
    print(f"({results['test_episodes']} meta-test episodes, seed {results['test_seed']}, "
          f"{results['queries']} queries per class; fine-tuning rates {results['fine_tune_lr']})")


if __name__ == "__main__":
    main()
