"""Peak memory and time per meta-iteration against the number of inner steps, by method.

    python benchmarks/inner_memory.py                          # 1 5 20 50 100 steps, 32 tasks
    python benchmarks/inner_memory.py --tasks 4 --iters 3      # shorter: fewer tasks per batch
    python benchmarks/inner_memory.py --steps 5 50 --methods second-order checkpointed --every 5
    python benchmarks/inner_memory.py --steps 5 50 --methods maml maml+checkpoint --every 5 --tasks 2

The workload: MAML's Omniglot CNN (``mamlkit.models.omniglot_cnn``), 5-way 1-shot, one query
image per class, random pixels of the right shape (which time like real images), inner learning
rate ``--inner-lr``. BatchNorm normalises with batch statistics (transductive, as in MAML) and
tracks no running statistics, so every method computes the same function.

Methods, each meta-iteration being zero_grad, meta-gradient, Adam step, tasks one at a time:

- ``second-order``: a plain per-task loop written here, ``torch.autograd.grad(create_graph=True)``
  at every inner step, the query loss backpropagated through all of them.
- ``checkpointed``: the same loop with ``mamlkit.core.inner_checkpoint.checkpointed_inner_loop``:
  the exact second-order meta-gradient, keeping one parameter set per inner step and
  recomputing each step's graph in the backward pass (``--every N``: one parameter set per N
  steps, N steps' graph rebuilt at once).
- ``first-order``: ``mamlkit.MAML(first_order=True)`` (FOMAML).
- ``imaml``: ``IMAML`` (implicit gradients, 5 conjugate-gradient steps, lambda 1).
- ``maml`` / ``maml+checkpoint``: the library's own ``mamlkit.MAML(batching="loop")``, second
  order, without and with ``inner_checkpoint=--every`` (the learner's route to the same
  checkpointed steps).

Peak memory is the resident set size (Linux ``VmHWM``) of the method's own process during the
timed iterations, above its resident memory after the warm-up (freed heap handed back to the
system first, ``benchmarks/_peers/runner.reset_peak_resident``). On the CPU that is honest:
PyTorch's CPU allocator has no cache, large tensors are ``mmap``-ed and unmapped when freed, so
the high-water mark of resident memory follows the peak of live tensors (plus the C allocator's
fragmentation, alike for every method). Tasks run one after another and each task's graph is
freed by its backward pass, so the peak is one task's and does not depend on ``--tasks``; the time
does (linearly). Each step count's methods run in their own processes in interleaved rounds (one
meta-iteration each per round), so a busy spell of a shared machine hits all of them alike; the
table gives medians and the ratios of one run.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks._peers`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import Tensor, nn
from torch.func import functional_call

from benchmarks._peers.runner import peak_resident_bytes, reset_peak_resident, resident_bytes

METHODS = ("second-order", "checkpointed", "first-order", "imaml", "maml", "maml+checkpoint")
WAYS = 5


def build(seed: int) -> nn.Module:
    """MAML's Omniglot CNN with BatchNorm on batch statistics and no running statistics."""
    import mamlkit

    torch.manual_seed(seed)
    model = mamlkit.omniglot_cnn(WAYS)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.track_running_stats = False
            module.running_mean = module.running_var = module.num_batches_tracked = None
    return model.train()


def batch(tasks: int, query_per_class: int, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """5-way 1-shot tasks of random 28x28 images, task dimension first."""
    g = torch.Generator().manual_seed(seed)
    q = WAYS * query_per_class
    return (torch.rand(tasks, WAYS, 1, 28, 28, generator=g), torch.arange(WAYS).expand(tasks, WAYS),
            torch.rand(tasks, q, 1, 28, 28, generator=g),
            torch.arange(WAYS).repeat_interleave(query_per_class).expand(tasks, q))


def meta_gradient_fn(method: str, model: nn.Module, steps: int, inner_lr: float, every: int = 1):
    """``fn(batch)`` accumulating the mean meta-gradient into ``model``'s ``.grad``."""
    if method in ("first-order", "imaml", "maml", "maml+checkpoint"):
        import mamlkit
        from mamlkit.algorithms.imaml import IMAML

        kwargs = dict(inner_lr=inner_lr, inner_steps=steps, loss="cross_entropy")
        if method == "imaml":
            learner = IMAML(model, regularization=1.0, cg_steps=5, **kwargs)
        else:  # the library's own second-order MAML (per-task loop), checkpointed or not
            learner = mamlkit.MAML(model, first_order=method == "first-order", batching="loop",
                                   inner_checkpoint=every if method == "maml+checkpoint" else 0,
                                   **kwargs)
        return lambda b: learner.meta_backward(mamlkit.TaskBatch(*b))
    from mamlkit.core.inner_checkpoint import checkpointed_inner_loop

    def support_loss(params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return nn.functional.cross_entropy(functional_call(model, params, (x,)), y)

    def plain_inner_loop(params: dict[str, Tensor], x: Tensor, y: Tensor) -> dict[str, Tensor]:
        fast = params
        for _ in range(steps):
            grads = torch.autograd.grad(support_loss(fast, x, y), list(fast.values()), create_graph=True)
            fast = {n: p - inner_lr * g for (n, p), g in zip(fast.items(), grads)}
        return fast

    def meta_gradient(b: tuple[Tensor, ...]) -> None:
        support_x, support_y, query_x, query_y = b
        tasks = support_x.shape[0]
        for t in range(tasks):
            params = dict(model.named_parameters())
            if method == "checkpointed":
                fast, _ = checkpointed_inner_loop(support_loss, params, {}, inner_lr, steps,
                                                  data=(support_x[t], support_y[t]), every=every)
            else:
                fast = plain_inner_loop(params, support_x[t], support_y[t])
            (support_loss(fast, query_x[t], query_y[t]) / tasks).backward()

    return meta_gradient


def worker(conn: Connection, method: str, steps: int, args: dict) -> None:
    """Process entry point: set up, then one timed meta-iteration per ``"step"``; ``"memory"``
    resets (first call) or reads the peak resident memory above the baseline."""
    try:
        torch.set_num_threads(args["threads"])
        model = build(args["seed"])
        data = batch(args["tasks"], args["query_per_class"], args["seed"] + 1)
        step = meta_gradient_fn(method, model, steps, args["inner_lr"], args["every"])
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        conn.send(("ready",))
    except Exception as error:  # noqa: BLE001 - reported in the table
        conn.send(("error", f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=3)}"))
        return
    baseline = resident_bytes()
    while True:
        command = conn.recv()
        if command == "step":
            start, cpu = time.perf_counter(), time.process_time()
            optimizer.zero_grad(set_to_none=True)
            step(data)
            optimizer.step()
            conn.send(((time.perf_counter() - start) * 1e3, (time.process_time() - cpu) * 1e3))
        elif command == "reset":
            reset_peak_resident()
            baseline = resident_bytes()
            conn.send(None)
        elif command == "memory":
            conn.send(peak_resident_bytes() - baseline)
        else:
            return


def run_steps(steps: int, methods: list[str], args: argparse.Namespace) -> dict[str, dict]:
    """All methods at one step count, interleaved: ``{method: {ms, cpu_ms, peak} | {error}}``."""
    ctx = mp.get_context("spawn")
    fields = vars(args)
    procs, results = {}, {}
    for method in methods:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=worker, args=(child, method, steps, fields), daemon=True)
        proc.start()
        reply = parent.recv()
        if reply[0] == "ready":
            procs[method] = (parent, proc)
            results[method] = {"ms": [], "cpu_ms": []}
        else:
            results[method] = {"error": reply[1].strip().splitlines()[0]}
            proc.join()
    for round_ in range(args.warmup + args.iters):
        order = list(procs)[round_ % max(len(procs), 1):] + list(procs)[:round_ % max(len(procs), 1)]
        for method in order:
            conn, _ = procs[method]
            try:
                conn.send("step")
                wall, cpu = conn.recv()
            except (EOFError, OSError):
                results[method] = {"error": "process died (out of memory?)"}
                del procs[method]
                continue
            if round_ >= args.warmup:
                results[method]["ms"].append(wall)
                results[method]["cpu_ms"].append(cpu)
            elif round_ == args.warmup - 1:
                conn.send("reset")
                conn.recv()
        print(f"  {steps} steps, round {round_ + 1}/{args.warmup + args.iters} done", flush=True)
    for method, (conn, proc) in procs.items():
        conn.send("memory")
        results[method]["peak"] = conn.recv() / 2 ** 20
        conn.send("stop")
        proc.join(10)
    return results


def format_table(all_results: dict[int, dict[str, dict]], methods: list[str]) -> str:
    """Markdown table: one row per step count and method, ratios to the second-order row."""
    lines = ["| inner steps | method | ms/iter median (min-max) | CPU ms/iter | CPU ms per inner step "
             "| CPU time vs second order | peak memory MB | memory vs second order |",
             "|---|---|---|---|---|---|---|---|"]
    for steps, results in all_results.items():
        reference = results.get("second-order", {})
        for method in methods:
            r = results[method]
            if "error" in r:
                lines.append(f"| {steps} | {method} | not run: {r['error']} | | | | | |")
                continue
            cpu = statistics.median(r["cpu_ms"])
            time_ratio = mem_ratio = "n/a"
            if "cpu_ms" in reference:
                time_ratio = f"{cpu / statistics.median(reference['cpu_ms']):.2f}x"
                mem_ratio = f"{r['peak'] / max(reference['peak'], 1e-9):.2f}x"
            lines.append(f"| {steps} | {method} | {statistics.median(r['ms']):.0f} ({min(r['ms']):.0f}-"
                         f"{max(r['ms']):.0f}) | {cpu:.0f} | {cpu / steps:.1f} | {time_ratio} "
                         f"| {r['peak']:.1f} | {mem_ratio} |")
    return "\n".join(lines)


def goals(all_results: dict[int, dict[str, dict]]) -> list[str]:
    """The checkpointing goals: memory at 50 steps within 2x of 5 steps, time per inner step at
    most 1.6x the uncheckpointed run's (at the same step count)."""
    out = []
    ck = {s: r.get("checkpointed", {}) for s, r in all_results.items()}
    if "peak" in ck.get(50, {}) and "peak" in ck.get(5, {}):
        ratio = ck[50]["peak"] / max(ck[5]["peak"], 1e-9)
        verdict = "met" if ratio <= 2 else "NOT met"
        out.append(f"checkpointed peak memory, 50 vs 5 inner steps: {ck[50]['peak']:.1f} / "
                   f"{ck[5]['peak']:.1f} MB = {ratio:.2f}x (goal <= 2x: {verdict})")
    for steps, results in all_results.items():
        plain, check = results.get("second-order", {}), results.get("checkpointed", {})
        if "cpu_ms" in plain and "cpu_ms" in check:
            ratio = statistics.median(check["cpu_ms"]) / statistics.median(plain["cpu_ms"])
            wall = statistics.median(check["ms"]) / statistics.median(plain["ms"])
            out.append(f"{steps} steps: checkpointed / plain second-order time per inner step "
                       f"{ratio:.2f}x CPU, {wall:.2f}x wall"
                       + (f" (goal <= 1.6x: {'met' if ratio <= 1.6 else 'NOT met'})" if steps == 50 else ""))
    return out


def main(argv: list[str] | None = None) -> int:
    """Run every step count and print the table and the goals."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 5, 20, 50, 100])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--tasks", type=int, default=32, help="tasks per meta-batch")
    parser.add_argument("--query-per-class", type=int, default=1)
    parser.add_argument("--inner-lr", type=float, default=0.1)
    parser.add_argument("--iters", type=int, default=3, help="timed meta-iterations per method")
    parser.add_argument("--warmup", type=int, default=1, help="untimed meta-iterations first")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--every", type=int, default=1,
                        help="checkpointed: inner steps per checkpointed segment (parameters kept "
                             "every N steps, N steps' graph rebuilt at once in the backward)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if min(args.steps) < 1 or min(args.tasks, args.iters, args.warmup, args.every) < 1:
        parser.error("--steps, --tasks, --iters, --warmup and --every must be >= 1 (the warm-up "
                     "sets the memory baseline)")
    print(f"torch {torch.__version__}, {args.threads} thread(s) per process, {args.tasks} tasks, "
          f"5-way 1-shot, {WAYS * args.query_per_class} query images per task, checkpointed "
          f"segments of {args.every} step(s)", flush=True)
    all_results = {}
    for steps in args.steps:
        all_results[steps] = run_steps(steps, args.methods, args)
    print("\n" + format_table(all_results, args.methods) + "\n")
    for line in goals(all_results):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
