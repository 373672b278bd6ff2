"""Time to accuracy: Omniglot 5-way 1-shot with the MAML paper's hyperparameters, mamlkit against
per-task meta-gradient loops (learn2learn's ``clone()/adapt()`` when it is installed, a plain
``torch.autograd.grad`` loop always), all fed by the same data pipeline.

Every implementation trains the same network from the same initialisation on the same stream of
meta-training episodes (mamlkit's Omniglot loader and episode sampler, MAML's class split, a fixed
seed), with Adam 1e-3, meta-batch 32 and one inner step of 0.4 (Finn et al. 2017, Section 5.2).
Every ``--val-every`` meta-iterations the current initialisation is scored by one shared function
on the same fixed meta-validation episodes (accuracy after ``--val-steps`` adaptation steps). The
table gives, per implementation, the meta-iterations and the training time (wall-clock and process
CPU time, validation excluded) until that accuracy first reaches ``--target``.

Each implementation runs in its own process, one after the other: on a shared machine the wall
clock also measures the other jobs, so compare the CPU-time column there.

    python benchmarks/omniglot_time_to_accuracy.py --threads 1 [--impls mamlkit plain learn2learn]
    python benchmarks/omniglot_time_to_accuracy.py --threads 1 --impls mamlkit:auto+compile learn2learn

``mamlkit:auto+compile`` trains with ``compile=True``; its compilation happens in the first
meta-iteration and counts in the training time (the table also gives it on its own).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the benchmarks package (peer implementations)

from benchmarks._peers.runner import MODULES, _prepare  # noqa: E402
from benchmarks._peers.workloads import WORKLOADS  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data"
VAL_SEED = 1_000_003


def run(impl: str, args: argparse.Namespace, conn: Any) -> None:
    """Train with one implementation until the target accuracy; send the result dict."""
    from mamlkit import MAML
    from mamlkit.config import TrainConfig
    from mamlkit.experiments import get_experiment
    from mamlkit.experiments.vision import build_model, load_all

    torch.set_num_threads(args.threads)
    experiment = get_experiment("omniglot")
    config = TrainConfig(**{**experiment.defaults_for({}), "data_root": str(args.data_root),
                            "seed": args.seed})
    try:
        data = load_all(config, roles=("train", "val"))
    except (FileNotFoundError, ValueError) as error:
        conn.send({"impl": impl, "error": f"no data: {error}"})
        return
    torch.manual_seed(args.seed)
    model = build_model(config, config.ways)
    workload = WORKLOADS["W2"]  # 5-way 1-shot, 32 tasks, one step of 0.4, second order
    try:
        meta_gradient, version, note = _prepare(impl, workload, model)
    except ModuleNotFoundError as error:
        conn.send({"impl": impl, "error": f"not installed ({error})"})
        return
    optimizer = torch.optim.Adam(model.parameters(), lr=config.meta_lr)
    tasks = data["train"].sampler(config.ways, config.shots, config.queries, seed=args.seed)
    val = data["val"].sampler(config.ways, config.shots, config.shots).fixed_episodes(
        args.val_tasks, VAL_SEED, meta_batch_size=args.val_tasks).all()
    scorer = MAML(model, inner_lr=workload.inner_lr, inner_steps=args.val_steps,
                  loss="cross_entropy")

    wall = cpu = first_wall = 0.0
    history = []
    for iteration in range(1, args.max_iterations + 1):
        batch = tasks.sample(workload.tasks)
        start, cpu_start = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        meta_gradient((batch.support_x, batch.support_y, batch.query_x, batch.query_y))
        optimizer.step()
        wall += time.perf_counter() - start
        cpu += time.process_time() - cpu_start
        if iteration == 1:
            first_wall = wall
        if iteration % args.val_every == 0:
            accuracy = float(scorer.adaptation_curve(val, args.val_steps)["query_accuracy"][-1]
                             .mean())
            history.append((iteration, round(wall, 1), round(accuracy, 4)))
            print(f"  {impl}: iteration {iteration}, {wall:.0f} s, val accuracy {accuracy:.3f}",
                  flush=True)
            if accuracy >= args.target:
                break
    reached = bool(history) and history[-1][2] >= args.target
    conn.send({"impl": impl, "version": version, "note": note, "reached": reached,
               "iterations": iteration, "wall_s": wall, "cpu_s": cpu, "first_s": first_wall,
               "history": history})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impls", nargs="+", default=["mamlkit", "plain", "learn2learn"],
                        help=f"from {sorted(MODULES)}; mamlkit:MODE as in peers.py "
                             "(e.g. mamlkit:auto+compile)")
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--val-every", type=int, default=25)
    parser.add_argument("--val-tasks", type=int, default=100)
    parser.add_argument("--val-steps", type=int, default=3,
                        help="adaptation steps before scoring (the paper tests with 3)")
    parser.add_argument("--max-iterations", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", type=Path,
                        default=Path(os.environ.get("MAMLKIT_DATA", DEFAULT_DATA)))
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    unknown = [i for i in args.impls if i.partition(":")[0] not in MODULES]
    if unknown:
        parser.error(f"unknown implementations {unknown}; choose from {sorted(MODULES)}")

    context = mp.get_context("spawn")
    results = []
    for impl in args.impls:
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(target=run, args=(impl, args, sender))
        process.start()
        sender.close()
        try:
            results.append(receiver.recv())
        except EOFError:
            process.join()
            results.append({"impl": impl, "error": f"not run (exit code {process.exitcode})"})
        process.join()

    print(f"\nOmniglot 5-way 1-shot, time until meta-validation accuracy >= {args.target:.0%} "
          f"({args.val_tasks} episodes, {args.val_steps} steps, every {args.val_every} "
          f"iterations); torch {torch.__version__}, {args.threads} threads, load average at end "
          f"{os.getloadavg()[0]:.1f}\n")
    print("| implementation | reached | meta-iterations | training wall s | training CPU s "
          "| CPU s per iteration | first iteration wall s |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['impl']} | {r['error']} | | | | | |")
            continue
        print(f"| {r['impl']} {r['version']} | {'yes' if r['reached'] else 'no'} | "
              f"{r['iterations']} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | "
              f"{r['cpu_s'] / r['iterations']:.2f} | {r['first_s']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
