"""Inductor options for mamlkit's compiled meta-gradient on the CPU, side by side on W1.

    python benchmarks/compile_options.py                    # default, python-wrapper, cpp-gemm
    python benchmarks/compile_options.py --rounds 40 --cold # + each option set's cold compile

W1 is the MAML paper's sinusoid workload (MLP 1-40-40-1, 25 tasks, 10+10 points, one inner
step, second order) under ``vmap``, compiled (``compile=True``), with the trainer's fused Adam
step. Each option set gets its own learner in this one process; the sets then take turns, a
round being 10 untimed and ``--iters`` timed back-to-back meta-iterations per set, so a busy
spell of a shared machine slows all of them alike. Prints the median and minimum of the rounds'
mean milliseconds per meta-iteration, the ratio of medians to the library's setting and the
largest difference of the meta-gradient from it. ``--cold`` also compiles each set once more in
a fresh process with an empty Inductor cache and reports the seconds of that first call.

Option sets (``mamlkit.core.compiled.compile_for`` gets them added to, or removed from, its own):

- ``mamlkit``: the library's setting (``layout_optimization`` off, ``cpp_wrapper`` on);
- ``python-wrapper``: the graph run from Inductor's Python wrapper (``cpp_wrapper`` off);
- ``cpp-gemm``: ``max_autotune`` with Inductor's C++ GEMM templates for the matrix products.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

import mamlkit
import mamlkit.core.compiled as compiled
from mamlkit.outer_optimizer import meta_optimizer

OPTION_SETS: dict[str, dict[str, Any]] = {
    "mamlkit": {},
    "python-wrapper": {"cpp_wrapper": False},
    "cpp-gemm": {"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"},
}
TASKS = 25
_library_compile_for = compiled.compile_for


def use_options(extra: dict[str, Any]) -> None:
    """Make the learner's later ``torch.compile`` calls use ``extra`` on top of its options."""

    def compile_for(fn: Callable[..., Any], device: torch.device, worker_threads: bool = False
                    ) -> Callable[..., Any]:
        real_compile = torch.compile

        def with_extra(f: Callable[..., Any], **kwargs: Any) -> Callable[..., Any]:
            kwargs["options"] = {**kwargs.get("options", {}), **extra}
            return real_compile(f, **kwargs)

        torch.compile = with_extra
        try:
            return _library_compile_for(fn, device, worker_threads)
        finally:
            torch.compile = real_compile

    compiled.compile_for = compile_for


def make_step(extra: dict[str, Any], batch: mamlkit.TaskBatch
              ) -> tuple[Callable[[], None], torch.nn.Module, float]:
    """One meta-iteration of a learner compiled with ``extra``, its model, and the seconds its
    first call (the compile) took."""
    use_options(extra)
    torch.manual_seed(0)
    model = mamlkit.sinusoid_mlp()
    learner = mamlkit.MAML(model, inner_lr=0.01, inner_steps=1, compile=True, batching="vmap")
    optimizer = meta_optimizer("adam", learner.parameters(), lr=1e-3)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        learner.meta_backward(batch)
        optimizer.step()

    start = time.perf_counter()
    model.zero_grad(set_to_none=True)
    learner.meta_backward(batch)  # compiles; the gradient is compared below, not stepped
    return step, model, time.perf_counter() - start


def w1_batch() -> mamlkit.TaskBatch:
    return mamlkit.Sinusoid(shots=10, queries=10, seed=0).sample(TASKS)


def cold_compile_seconds(name: str) -> float:
    """The first call's seconds for option set ``name`` in a fresh process and an empty cache."""
    with tempfile.TemporaryDirectory() as cache:
        env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
        env["MAMLKIT_CACHE"] = cache
        out = subprocess.run([sys.executable, __file__, "--compile-only", name], env=env,
                             check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=list(OPTION_SETS), choices=list(OPTION_SETS))
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--iters", type=int, default=50, help="timed iterations per round")
    parser.add_argument("--cold", action="store_true", help="also time a cold compile of each")
    parser.add_argument("--compile-only", help=argparse.SUPPRESS)
    args = parser.parse_args()
    batch = w1_batch()
    if args.compile_only:
        _, _, seconds = make_step(OPTION_SETS[args.compile_only], batch)
        print(json.dumps({"seconds": seconds}))
        return
    steps, grads, warm = {}, {}, {}
    for name in args.sets:
        steps[name], model, warm[name] = make_step(OPTION_SETS[name], batch)
        grads[name] = [p.grad.clone() for p in model.parameters()]
    reference = args.sets[0]
    times: dict[str, list[float]] = {name: [] for name in args.sets}
    for _ in range(args.rounds):
        for name, step in steps.items():
            for _ in range(10):
                step()
            start = time.perf_counter()
            for _ in range(args.iters):
                step()
            times[name].append((time.perf_counter() - start) / args.iters * 1000.0)
    cold = {name: cold_compile_seconds(name) for name in args.sets} if args.cold else {}
    print(f"W1, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds "
          f"of {args.iters} meta-iterations, load average {os.getloadavg()[0]:.2f} at the end")
    print()
    print("| options | ms/iter median (min) | vs " + reference + " | max gradient difference | "
          "first call s (this process) |" + (" cold compile s |" if cold else ""))
    print("|---|---|---|---|---|" + ("---|" if cold else ""))
    base = statistics.median(times[reference])
    for name in args.sets:
        median = statistics.median(times[name])
        diff = max(float((a - b).abs().max()) for a, b in zip(grads[name], grads[reference]))
        row = (f"| {name} | {median:.3f} ({min(times[name]):.3f}) | {median / base:.2f}x | "
               f"{diff:.1e} | {warm[name]:.1f} |")
        print(row + (f" {cold[name]:.1f} |" if cold else ""))


if __name__ == "__main__":
    main()
