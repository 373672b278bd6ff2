"""Compare every meta-learning algorithm on identical episodes, and iMAML's memory against MAML's.

Suites (each algorithm runs in its own subprocess, so peak memory is its own):

- ``sinusoid``: Finn et al. 2017's sinusoid regression, 10-shot, the 1-40-40-1 ReLU network (CAVIA's
  takes its 5 context inputs too), a fixed number of meta-iterations per algorithm (the
  classifiers built on prototypes have no row); test: MSE after the test steps (1, except iMAML,
  whose adaptation is its inner solve; its 1-step MSE is reported too) on >= 1,000 fixed held-out
  tasks (mean ± 95% CI).
- ``omniglot``: 5-way 1-shot Omniglot (MAML's split with rotations, four-block CNN; CAVIA's scales
  and shifts its features by FiLM from the context), the same
  training budget per algorithm (CPU time of its process: wall-clock time on an idle machine with
  ``--threads 1``, but unaffected by other programs on a shared one); test: accuracy after the
  evaluation steps on 600 fixed episodes of the test split (mean ± 95% CI).
- ``memory``: peak resident memory of one meta-iteration of MAML vs iMAML with 1, 5 and 20 inner
  steps on Omniglot-shaped episodes (the implicit gradient's memory should not grow).

Every row also reports CPU seconds per meta-iteration and the process's peak resident memory
(increase over the state right before training, via Linux's resettable high-water mark).

Usage::

    python benchmarks/algorithms_compare.py                       # the full comparison
    python benchmarks/algorithms_compare.py --quick               # a seconds-scale smoke run
    python benchmarks/algorithms_compare.py --suites sinusoid --algorithms maml reptile \\
        --sinusoid-iterations 3000 --omniglot-minutes 5
    python benchmarks/algorithms_compare.py --suites omniglot --algorithms boil protonets \\
        --omniglot-minutes 5                                      # only these rows, same budget
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mamlkit.algorithms import ALGORITHMS, IMAML, MAML, make_algorithm
from mamlkit.core.learner import MetaLearner
from mamlkit.tasks.base import TaskBatch

REPO = Path(__file__).resolve().parents[1]
Z_95 = 1.959963984540054

SINUSOID = {
    # Finn et al. 2017: inner lr 0.01, one step, meta-batch 25, Adam 1e-3, K = 10.
    "common": {"inner_lr": 0.01, "inner_steps": 1, "eval_inner_steps": 1, "loss": "mse"},
    "reptile": {"inner_steps": 5},  # several steps, or Reptile is joint training; tested with 1
    # iMAML's adaptation is the solution of its proximal problem, so it is tested with its own
    # inner solve. Gradient descent on this network is limited by the support loss's curvature,
    # which meta-training increases (lambda 10 with 30 steps of 0.02 stopped solving the inner
    # problem within 3,000 iterations: MSE 2.80); Adam's step does not grow with the curvature.
    "imaml": {"inner_optimizer": "adam", "inner_lr": 0.01, "inner_steps": 30, "eval_inner_steps": 30,
              "regularization": 10.0, "cg_steps": 5},
    # Zintgraf et al.'s regression settings: 5 context inputs concatenated to x, context lr 1.0.
    "cavia": {"inner_lr": 1.0, "context_dim": 5},
}
OMNIGLOT = {
    # Finn et al. 2017: inner lr 0.4, one step in training, three at test, Adam 1e-3.
    "common": {"inner_lr": 0.4, "inner_steps": 1, "eval_inner_steps": 3, "loss": "cross_entropy"},
    "reptile": {"inner_steps": 3},
    # MAML++ trains with the steps it is tested with (Antoniou et al. use the same count), so its
    # per-step learning rates and BatchNorm weights exist for every test step and the multi-step
    # loss has several steps to weigh.
    "mamlpp": {"inner_steps": 3},
    # iMAML-GD as in Rajeswaran et al.'s Omniglot code: 16 gradient steps, 5 CG steps, lambda 1
    # (its default); inner lr 0.1, since 0.4 does not converge on the proximal problem. Tested
    # with its own inner solve.
    "imaml": {"inner_lr": 0.1, "inner_steps": 16, "eval_inner_steps": 16, "regularization": 1.0,
              "cg_steps": 5},
    # CAVIA's image classifier: 100 context parameters with inner lr 1.0 (Zintgraf et al.), fed
    # through FiLM (a meta-learned linear map to a scale and shift of the CNN's features).
    "cavia": {"inner_lr": 1.0, "context_dim": 100},
}


class FiLMConvNet(torch.nn.Module):
    """MAML's Omniglot CNN whose features are scaled and shifted by a linear map of CAVIA's
    context before the classifier: ``classifier(features(x) * (1 + gamma) + beta)``."""

    def __init__(self, ways: int, context_dim: int) -> None:
        super().__init__()
        from mamlkit.models import omniglot_cnn

        self.net = omniglot_cnn(ways)
        self.film = torch.nn.Linear(context_dim, 2 * self.net.classifier.in_features)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.film(context).chunk(2)
        return self.net.classifier(self.net.features(x).flatten(1) * (1 + gamma) + beta)


def sinusoid_learner(algorithm: str) -> MetaLearner:
    """The algorithm around the paper's 1-40-40-1 network (CAVIA's takes its context too)."""
    from mamlkit.models import MLP, sinusoid_mlp

    kwargs = learner_kwargs(SINUSOID, algorithm)
    model = MLP((1 + kwargs["context_dim"], 40, 40, 1)) if algorithm == "cavia" else sinusoid_mlp()
    return make_algorithm(algorithm, model, **kwargs)


def omniglot_learner(algorithm: str) -> MetaLearner:
    """The algorithm around MAML's 5-way Omniglot CNN (CAVIA's with FiLM from its context)."""
    from mamlkit.models import omniglot_cnn

    kwargs = learner_kwargs(OMNIGLOT, algorithm)
    if algorithm == "cavia":
        return make_algorithm(algorithm, FiLMConvNet(5, kwargs["context_dim"]), **kwargs,
                              context_forward=lambda model, x, context: model(x, context))
    return make_algorithm(algorithm, omniglot_cnn(5), **kwargs)


CLASSIFICATION_ONLY = ("protomaml", "protonets")
"""Algorithms built on class prototypes: no sinusoid row (they refuse regression)."""


def learner_kwargs(table: dict[str, dict[str, Any]], algorithm: str) -> dict[str, Any]:
    """Constructor arguments of ``algorithm`` for a suite (common settings, then its own)."""
    return {**table["common"], **table.get(algorithm, {})}


# ---------------------------------------------------------------------- measurement helpers
def current_rss_mb() -> float:
    """Resident memory of this process now (MB)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> bool:
    """Return freed heap memory to the system, then reset Linux's peak-RSS mark (``VmHWM``) so
    later peaks exclude setup; False if unsupported."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident memory since the last reset (MB)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def mean_ci(values: torch.Tensor) -> tuple[float, float]:
    """Mean and 95% normal-approximation confidence half-width."""
    values = values.double().flatten()
    std = float(values.std()) if values.numel() > 1 else 0.0
    return float(values.mean()), Z_95 * std / math.sqrt(values.numel())


def train(learner: MetaLearner, sample: Any, meta_batch_size: int, iterations: int | None,
          cpu_seconds: float | None, meta_lr: float, window: int = 50) -> dict[str, Any]:
    """Adam on the meta-parameters until ``iterations`` or ``cpu_seconds`` of this process's CPU
    time (whichever comes first).

    The budget is CPU time, not wall-clock time, so that other programs sharing the machine do not
    change how much training an algorithm gets; with one thread and an idle machine the two agree.
    ``train_metrics`` holds the mean training metrics over the last ``window`` meta-iterations
    (e.g. iMAML's ``inner_residual``, how well its inner problem was solved).
    """
    if not getattr(learner, "meta_trainable", True):
        return {"iterations": 0, "train_s": 0.0, "wall_s": 0.0, "train_metrics": {}}
    optimizer = torch.optim.Adam(learner.parameters(), lr=meta_lr)
    learner.train()
    done, spent, wall = 0, 0.0, 0.0
    recent: list[dict[str, float]] = []
    while (iterations is None or done < iterations) and (cpu_seconds is None or spent < cpu_seconds):
        batch = sample(meta_batch_size)
        tick, tick_wall = time.process_time(), time.perf_counter()
        if hasattr(learner, "set_iteration"):
            learner.set_iteration(done)
        optimizer.zero_grad(set_to_none=True)
        metrics = learner.meta_backward(batch)
        optimizer.step()
        spent += time.process_time() - tick
        wall += time.perf_counter() - tick_wall
        done += 1
        recent = [*recent[-(window - 1):], metrics]
    averaged = {k: sum(m[k] for m in recent) / len(recent) for k in recent[0]} if recent else {}
    return {"iterations": done, "train_s": spent, "wall_s": wall, "train_metrics": averaged}


def evaluate(learner: MetaLearner, batches: Any, steps: int, metric: str) -> torch.Tensor:
    """Per-task ``metric`` after ``steps`` adaptation steps (no graph), from the vectorised
    adaptation curve."""
    learner.eval()
    values = [learner.adaptation_curve(batch, steps)[metric][steps] for batch in batches]
    return torch.cat(values)


def evaluate_accuracy(learner: MetaLearner, batches: Any, steps: int) -> torch.Tensor:
    """Per-task query accuracy after ``steps`` adaptation steps, one task at a time (only the
    final step's query predictions are computed)."""
    learner.eval()
    values = []
    with torch.no_grad():
        for batch in batches:
            for t in range(batch.num_tasks):
                params = learner.adapt(batch.support_x[t], batch.support_y[t], steps=steps)
                logits = learner.predict(params, batch.query_x[t])
                values.append((logits.argmax(-1) == batch.query_y[t]).float().mean())
    return torch.stack(values)


# ---------------------------------------------------------------------- workers
def sinusoid_worker(algorithm: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train and test one algorithm on sinusoid regression."""
    from mamlkit.tasks.regression import Sinusoid

    torch.manual_seed(args.seed)
    learner = sinusoid_learner(algorithm)
    tasks = Sinusoid(shots=10, queries=10, seed=args.seed)
    test = Sinusoid(shots=10, queries=10).fixed_tasks(args.sinusoid_test_tasks, seed=args.seed + 1000)
    test_batches = [test.slice(slice(i, i + 500)) for i in range(0, test.num_tasks, 500)]
    reset_peak_rss()
    before = current_rss_mb()
    stats = train(learner, tasks.sample, 25, args.sinusoid_iterations, None, args.meta_lr)
    peak = peak_rss_mb() - before
    steps = learner.eval_inner_steps
    mse = evaluate(learner, test_batches, steps, "query_loss")
    mean, ci = mean_ci(mse)
    one_step = mse if steps == 1 else evaluate(learner, test_batches, 1, "query_loss")
    mean_1, ci_1 = mean_ci(one_step)
    return {**stats, "peak_mb": peak, "mean": mean, "ci95": ci, "tasks": mse.numel(), "test_steps": steps,
            "mean_1": mean_1, "ci95_1": ci_1}


def omniglot_worker(algorithm: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train one algorithm for the wall-clock budget on Omniglot 5-way 1-shot and test it."""
    from mamlkit.datasets import Omniglot

    root = Path(args.data) / "omniglot"
    sampler = Omniglot(root, split="train").sampler(5, 1, args.omniglot_train_queries, seed=args.seed)
    test = Omniglot(root, split="test").sampler(5, 1, 15, seed=args.seed)
    episodes = test.fixed_episodes(args.omniglot_test_episodes, seed=args.seed + 1000, meta_batch_size=50)
    torch.manual_seed(args.seed)
    learner = omniglot_learner(algorithm)
    reset_peak_rss()
    before = current_rss_mb()
    stats = train(learner, sampler.sample, args.omniglot_meta_batch, None, args.omniglot_minutes * 60,
                  args.meta_lr)
    peak = peak_rss_mb() - before
    accuracy = evaluate_accuracy(learner, episodes, learner.eval_inner_steps)
    mean, ci = mean_ci(accuracy)
    return {**stats, "peak_mb": peak, "mean": mean, "ci95": ci, "tasks": accuracy.numel(),
            "test_steps": learner.eval_inner_steps}


def memory_worker(spec: str, args: argparse.Namespace) -> dict[str, Any]:
    """Peak memory of meta-iterations of MAML or iMAML (``spec`` = ``name:steps``) on the CNN."""
    from mamlkit.models import omniglot_cnn

    name, steps = spec.split(":")
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    tasks, ways, shots, queries = 2, 5, args.memory_shots, 15
    # Memory does not depend on pixel values: Omniglot-shaped random episodes.
    labels = torch.arange(ways)
    batch = TaskBatch(torch.rand(tasks, ways * shots, 1, 28, 28, generator=g),
                      labels.repeat_interleave(shots).expand(tasks, -1).clone(),
                      torch.rand(tasks, ways * queries, 1, 28, 28, generator=g),
                      labels.repeat_interleave(queries).expand(tasks, -1).clone())
    common = {"inner_lr": 0.4, "inner_steps": int(steps), "loss": "cross_entropy", "chunk_size": 1}
    learner = (MAML(omniglot_cnn(ways), **common) if name == "maml"
               else IMAML(omniglot_cnn(ways), regularization=2.0, cg_steps=5, **common))
    with torch.no_grad():  # lazy initialisation only: a warm-up meta-iteration would leave its
        learner.model(batch.query_x[0])  # freed memory mapped, hiding the next one's peak
    reset_peak_rss()
    before = current_rss_mb()
    tick = time.process_time()
    for _ in range(args.memory_iterations):
        learner.zero_grad(set_to_none=True)
        learner.meta_backward(batch)
    seconds = (time.process_time() - tick) / args.memory_iterations
    return {"iterations": args.memory_iterations, "train_s": seconds * args.memory_iterations,
            "peak_mb": peak_rss_mb() - before}


WORKERS = {"sinusoid": sinusoid_worker, "omniglot": omniglot_worker, "memory": memory_worker}


# ---------------------------------------------------------------------- driver
def run_worker(suite: str, item: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one (suite, algorithm) in a fresh interpreter and return its JSON result."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, __file__, "--worker", suite, item, "--out", str(out),
                   *args.passthrough]
        # Large tensors straight from mmap, so freed memory leaves RSS and peaks are comparable.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
        return json.loads(out.read_text())


def per_iteration(result: dict[str, Any], key: str = "train_s") -> str:
    """Seconds per meta-iteration (CPU by default, ``key="wall_s"`` for wall-clock)."""
    return f"{result[key] / result['iterations']:.3f}" if result.get("iterations") else "-"


def result_row(algorithm: str, result: dict[str, Any], value: str) -> list[str]:
    """One table row: the algorithm, its test value, test steps, cost and memory."""
    if "error" in result:
        return [algorithm, "error: " + result["error"]] + [""] * 6
    return [algorithm, value, str(result["test_steps"]), str(result["iterations"]), per_iteration(result),
            per_iteration(result, "wall_s"), f"{result['peak_mb']:.0f}", str(result["tasks"])]


def residual_notes(algorithm: str, result: dict[str, Any]) -> list[str]:
    """A line on how well the inner problem was solved in training, for algorithms reporting it."""
    residual = result.get("train_metrics", {}).get("inner_residual")
    if residual is None:
        return []
    return [f"{algorithm}: relative stationarity residual of the inner problem over the last training "
            f"iterations {residual:.3f} (0 = solved; the implicit gradient assumes a small value)"]


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suites", nargs="+", default=["sinusoid", "omniglot", "memory"],
                        choices=sorted(WORKERS))
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=list(ALGORITHMS))
    parser.add_argument("--sinusoid-iterations", type=int, default=3000)
    parser.add_argument("--sinusoid-test-tasks", type=int, default=1000)
    parser.add_argument("--omniglot-minutes", type=float, default=5.0,
                        help="training budget per algorithm, in CPU minutes of its process")
    parser.add_argument("--omniglot-meta-batch", type=int, default=8)
    parser.add_argument("--omniglot-train-queries", type=int, default=5, help="query examples per class")
    parser.add_argument("--omniglot-test-episodes", type=int, default=600)
    parser.add_argument("--memory-steps", nargs="+", type=int, default=[1, 5, 20])
    parser.add_argument("--memory-iterations", type=int, default=2)
    parser.add_argument("--memory-shots", type=int, default=5, help="support examples per class")
    parser.add_argument("--meta-lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=os.environ.get("MAMLKIT_DATA",
                                                         str(REPO.parent / "shared" / "data")))
    parser.add_argument("--quick", action="store_true",
                        help="tiny budgets (sinusoid 50 iterations/200 tasks, Omniglot 5 s/50 episodes)")
    parser.add_argument("--worker", nargs=2, metavar=("SUITE", "ITEM"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.sinusoid_iterations, args.sinusoid_test_tasks = 50, 200
        args.omniglot_minutes, args.omniglot_test_episodes = 5 / 60, 50
        args.memory_steps, args.memory_iterations = [1, 5], 1
    if "omniglot" in args.suites and not args.worker and not (Path(args.data) / "omniglot").is_dir():
        parser.error(f"Omniglot not found under {args.data}; pass --data <folder with omniglot/> or drop "
                     "omniglot from --suites.")
    for name in ("sinusoid_iterations", "sinusoid_test_tasks", "omniglot_meta_batch",
                 "omniglot_test_episodes", "memory_iterations", "memory_shots", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1.")
    args.passthrough = [
        "--sinusoid-iterations", str(args.sinusoid_iterations),
        "--sinusoid-test-tasks", str(args.sinusoid_test_tasks),
        "--omniglot-minutes", str(args.omniglot_minutes),
        "--omniglot-meta-batch", str(args.omniglot_meta_batch),
        "--omniglot-train-queries", str(args.omniglot_train_queries),
        "--omniglot-test-episodes", str(args.omniglot_test_episodes),
        "--memory-iterations", str(args.memory_iterations), "--memory-shots", str(args.memory_shots),
        "--meta-lr", str(args.meta_lr), "--threads", str(args.threads), "--seed", str(args.seed),
        "--data", args.data,
    ]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker:
        suite, item = args.worker
        result = WORKERS[suite](item, args)
        Path(args.out).write_text(json.dumps(result))
        return
    print(f"torch {torch.__version__}, {args.threads} thread(s) per run, seed {args.seed}; "
          f"one subprocess per row")
    if "sinusoid" in args.suites:
        rows, notes = [], []
        for algorithm in [a for a in args.algorithms if a not in CLASSIFICATION_ONLY]:
            r = run_worker("sinusoid", algorithm, args)
            rows.append(result_row(algorithm, r, f"{r.get('mean', 0):.3f} ± {r.get('ci95', 0):.3f}"))
            rows[-1].insert(2, f"{r['mean_1']:.3f} ± {r['ci95_1']:.3f}" if "mean_1" in r else "")
            notes += residual_notes(algorithm, r)
            print(f"  sinusoid {algorithm}: {rows[-1][1]}", flush=True)
        print_table(f"Sinusoid 10-shot, MSE after the test steps (± 95% CI), {args.sinusoid_iterations} "
                    "meta-iterations of 25 tasks",
                    ["algorithm", "MSE", "MSE after 1 step", "test steps", "iterations", "CPU s/iter",
                     "wall s/iter", "peak MB", "test tasks"], rows)
        print("\n".join(notes))
    if "omniglot" in args.suites:
        rows, notes = [], []
        for algorithm in args.algorithms:
            r = run_worker("omniglot", algorithm, args)
            accuracy = f"{100 * r.get('mean', 0):.1f} ± {100 * r.get('ci95', 0):.1f}"
            rows.append(result_row(algorithm, r, accuracy))
            notes += residual_notes(algorithm, r)
            print(f"  omniglot {algorithm}: {rows[-1][1]}", flush=True)
        print_table(f"Omniglot 5-way 1-shot, accuracy % (± 95% CI), {args.omniglot_minutes:g} CPU "
                    f"minutes of training each, meta-batch {args.omniglot_meta_batch}",
                    ["algorithm", "accuracy", "test steps", "iterations", "CPU s/iter", "wall s/iter",
                     "peak MB", "test episodes"], rows)
        print("\n".join(notes))
    if "memory" in args.suites:
        rows = []
        for name in ("maml", "imaml"):
            for steps in args.memory_steps:
                r = run_worker("memory", f"{name}:{steps}", args)
                rows.append([name, str(steps), "error: " + r["error"], ""] if "error" in r else
                            [name, str(steps), f"{r['peak_mb']:.0f}", per_iteration(r)])
                print(f"  memory {name} {steps} steps: {rows[-1][2]} MB", flush=True)
        print_table(f"Peak memory of a meta-iteration (2 tasks of 5-way {args.memory_shots}-shot, 15 "
                    "queries/class, 4-block CNN, one task at a time)",
                    ["algorithm", "inner steps", "peak MB over baseline", "CPU s/iter"], rows)


if __name__ == "__main__":
    main()
