"""mamlkit against other MAML implementations on the same workloads, side by side.

    python benchmarks/peers.py                         # W1, W2, W2b, W3, W4; 20 timed iterations
    python benchmarks/peers.py -w W1 W2 --iters 30     # selected workloads
    python benchmarks/peers.py -w W1 W2 --scaling      # + time vs meta-batch size (8, 32, 128)
    python benchmarks/peers.py -w W2b --iters 20 --warmup 2 --mamlkit auto loop vmap
    python benchmarks/peers.py -w W1 --mamlkit auto auto+eager auto+compile  # compile settings
    python benchmarks/peers.py --device cuda           # on a GPU (peak memory from the allocator)

mamlkit runs at its defaults (``mamlkit (auto)``: ``batching="auto"``, ``compile="auto"``, told
it is in a long run, so it compiles in the background after its third meta-batch; its warm-up
waits for that compile, whose time and the compile cache's state, cold or warm, are in the
footer); ``+eager`` and ``+compile`` set ``compile`` off and on. Implementations: mamlkit
(``MAML.meta_backward``), learn2learn (``MAML.clone()/adapt()``), higher
(``innerloop_ctx``), TorchOpt (``MetaSGD``), parallel-metalearn (``MAML.step`` with its ``vmap``
and ``sequential`` backends, ``--metalearn``) when installed (``pip install -e .[bench]``), and a
plain per-task loop with ``torch.autograd.grad`` that needs nothing. All get the same model,
initialisation, data, thread count and Adam meta-optimiser (PyTorch's fused Adam, what
mamlkit's trainer uses: the same step for every implementation). parallel-metalearn runs with its own
``BatchNorm`` layer; its ``+bn2d`` variants keep PyTorch's ``nn.BatchNorm2d`` (``+bn2d-stats``
with running statistics tracked) on the CNN workloads, to show how a stock module fares under
its backends.

For each workload every implementation first computes the meta-gradient at the same initial
parameters; they must agree with the plain loop to ``--tolerance`` (relative, in norm) or the
row is flagged and the exit status is 1 (the ``+bn2d`` variants of parallel-metalearn are
expected to differ and only flagged); a flagged peer does not count as the fastest peer. Then
the implementations run ``--warmup`` untimed and
at least ``--iters`` timed meta-iterations (zero_grad, meta-gradient, Adam step) in turns of at
least ``--turn-ms`` of back-to-back iterations (at least one), each in its own process, until
every implementation has its ``--iters``; the table gives the median (min-max)
milliseconds per meta-iteration, the peak memory of the timed iterations above the process's
resident memory after the warm-up (GPU: peak allocated; freed heap memory is handed back to the
system first, so it measures what the iterations need, not what the warm-up or
``torch.compile`` left), and the ratios to the fastest peer.

Turns of back-to-back iterations time what training does, and turns of equal length keep the
alternation fair in time. With one iteration per turn, every iteration would start on a core that
slept while the other processes ran and pay its wake-up: on the 2-core development machine W1's
compiled mamlkit step took 1.5, 1.05, 0.91, 0.86, 0.84 ... 0.81 ms for the 1st, 2nd, 3rd, 4th,
5th ... 10th iteration after a 20 ms sleep; that is noise for the 20 ms peers but doubles a 1 ms
step.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks._peers`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks._peers.metalearn_maml import VARIANTS as METALEARN_VARIANTS
from benchmarks._peers.runner import MODULES, check_worker, worker, workload_fields
from benchmarks._peers.workloads import SCALING, WORKLOADS, Workload

PEERS = ("learn2learn", "higher", "torchopt", "metalearn", "plain")
LABELS = {"learn2learn": "learn2learn", "higher": "higher", "torchopt": "TorchOpt",
          "plain": "plain loop", "metalearn": "parallel-metalearn"}
METALEARN_DEFAULT = ["vmap", "sequential", "vmap+bn2d", "vmap+bn2d-stats"]
NORM_LABELS = {"bn2d": "nn.BatchNorm2d", "bn2d-stats": "nn.BatchNorm2d, running stats"}


@dataclass
class Result:
    """What one implementation gave on one workload."""

    impl: str
    version: str = ""
    note: str = ""
    error: str = ""
    grads: list | None = None
    times_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    peak_bytes: int | None = None
    grad_error: float | None = None
    warm_up: str = ""

    @property
    def label(self) -> str:
        """Display name: ``mamlkit (auto)`` or the peer's name."""
        name, _, mode = self.impl.partition(":")
        if name == "metalearn":
            backend, _, norm = mode.partition("+")
            return f"parallel-metalearn ({', '.join([backend] + ([NORM_LABELS[norm]] if norm else []))})"
        return f"mamlkit ({mode})" if name == "mamlkit" else LABELS.get(name, name)

    @property
    def is_peer(self) -> bool:
        """Whether this is one of the other implementations (the plain loop counts)."""
        return not self.impl.startswith("mamlkit")

    @property
    def expected_mismatch(self) -> bool:
        """A variant shown for its known difference (parallel-metalearn on ``nn.BatchNorm2d``)."""
        return "+bn2d" in self.impl

    @property
    def median(self) -> float:
        """Median milliseconds per meta-iteration."""
        return statistics.median(self.times_ms)


def relative_error(grads: list, reference: list) -> float:
    """``|g - g_ref| / |g_ref|`` over all parameters (a missing gradient counts as zeros)."""
    num = den = 0.0
    for g, r in zip(grads, reference):
        r = torch.zeros(()) if r is None else torch.as_tensor(r).double()
        g = torch.zeros_like(r) if g is None else torch.as_tensor(g).double()
        num += float(((g - r) ** 2).sum())
        den += float((r ** 2).sum())
    return (num / den) ** 0.5 if den > 0 else float(num > 0)


def _call(ctx, target, args: tuple, timeout: float) -> tuple:
    """Run ``target(conn, *args)`` in a fresh process and return its one reply."""
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(child, *args), daemon=True)
    proc.start()
    reply = parent.recv() if parent.poll(timeout) else ("error", f"no reply within {timeout:.0f} s")
    proc.join(10)
    if proc.is_alive():
        proc.kill()
    return reply


def run_workload(workload: Workload, impls: list[str], args: argparse.Namespace) -> list[Result]:
    """Start one process per implementation, check gradients, then time them in turns."""
    ctx = mp.get_context("spawn")
    results = [Result(impl) for impl in impls]
    for result in results:  # the gradient check, each in a process of its own
        reply = _call(ctx, check_worker, (result.impl, workload_fields(workload), args.device,
                                          args.threads, args.seed, args.check_dtype),
                      args.setup_timeout)
        if reply[0] == "ready":
            _, result.grads, result.version, result.note = reply
        else:
            result.error = reply[1].strip().splitlines()[0]
    reference = next((r for r in results if r.impl == "plain" and r.grads), None)
    reference = reference or next((r for r in results if r.grads), None)
    for result in results:
        if result.grads is not None and reference is not None:
            result.grad_error = relative_error(result.grads, reference.grads)
        status = result.error or f"meta-gradient rel. error {result.grad_error:.1e} ({args.check_dtype})"
        print(f"  {workload.name}: {result.label}: {status}", flush=True)
    for result in results:
        result.grads = None

    running = []
    for result in results:
        if result.error:
            continue
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=worker, daemon=True,
                           args=(child, result.impl, workload_fields(workload), args.device,
                                 args.threads, args.seed))
        proc.start()
        reply = parent.recv() if parent.poll(args.setup_timeout) else ("error", "set-up timed out")
        if reply[0] == "ready":
            running.append((result, parent, proc))
            if reply[1]:
                result.warm_up = reply[1]
        else:
            result.error = reply[1].strip().splitlines()[0]
            proc.kill()

    i = 0
    while any(len(r.times_ms) < args.iters for r, _, _ in running if not r.error):
        warmup = i == 0 and args.warmup > 0  # one untimed turn of --warmup iterations first
        order = running[i % len(running):] + running[:i % len(running)]
        for result, conn, _ in order:
            if result.error:
                continue
            try:
                conn.send(("step", args.warmup, 0.0) if warmup else ("step", 1, args.turn_ms))
                times = conn.recv()
            except (EOFError, OSError, BrokenPipeError) as error:
                result.error = f"process died during a step ({type(error).__name__})"
                continue
            if not warmup:
                result.times_ms.extend(ms for ms, _ in times)
                result.cpu_ms.extend(cpu_ms for _, cpu_ms in times)
        i += 1
    for result, conn, proc in running:
        if not result.error:
            conn.send("memory")
            result.peak_bytes = conn.recv()[0]
            conn.send("stop")
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    return results


def format_table(workload: Workload, results: list[Result], tolerance: float, cache: str = ""
                 ) -> str:
    """Markdown table of one workload's results; ``cache``: the compile cache's state at the
    start (:func:`compile_cache_state`), for the footer of a background compile."""
    timed = [r for r in results if r.times_ms]
    peers = [r for r in timed if r.is_peer and r.grad_error is not None and r.grad_error <= tolerance]
    fastest = min(peers, key=lambda r: r.median) if peers else None
    fastest_cpu = min(peers, key=lambda r: statistics.median(r.cpu_ms)) if peers else None
    lines = [f"### {workload.name}: {workload.description}", "",
             "| implementation | ms/iter median (min-max) | speed-up vs fastest peer | CPU ms/iter "
             "| CPU speed-up vs fastest peer | peak memory MB | memory vs fastest peer "
             "| meta-gradient rel. error |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if not r.times_ms:
            lines.append(f"| {r.label} | not run: {r.error} | | | | | | |")
            continue
        speed = f"{fastest.median / r.median:.2f}x" if fastest else "n/a"
        cpu = statistics.median(r.cpu_ms)
        cpu_speed = f"{statistics.median(fastest_cpu.cpu_ms) / cpu:.2f}x" if fastest_cpu else "n/a"
        peak = r.peak_bytes / 2 ** 20
        mem = (f"{peak / max(fastest.peak_bytes / 2 ** 20, 1e-9):.2f}x" if fastest and fastest.peak_bytes
               else "n/a")
        flag = "" if r.grad_error is not None and r.grad_error <= tolerance else " MISMATCH"
        flag += " (expected)" if flag and r.expected_mismatch else ""
        lines.append(f"| {r.label} | {r.median:.1f} ({min(r.times_ms):.1f}-{max(r.times_ms):.1f}) "
                     f"| {speed} | {cpu:.1f} | {cpu_speed} | {peak:.1f} | {mem} | {r.grad_error:.1e}{flag} |")
    if fastest:
        counts = sorted(len(r.times_ms) for r in timed)
        lines.append(f"\nfastest peer: {fastest.label} (wall), {fastest_cpu.label} (CPU); "
                     f"{counts[0]}-{counts[-1]} timed iterations per implementation")
    for r in results:
        if r.warm_up:
            lines.append(f"\n{r.label}, before timing: {r.warm_up} ({cache})")
    return "\n".join(lines)


def compile_cache_state() -> str:
    """Where compiled artifacts are cached and whether the cache was empty when the run began
    (cold: every compile from scratch) or not (warm: a compile of shapes seen before reuses
    Inductor's FX-graph and AOT-autograd caches)."""
    from mamlkit.core.compiled import use_user_cache

    root = Path(use_user_cache())  # the directory the workers will use
    files = sum(1 for f in root.rglob("*") if f.is_file()) if root.exists() else 0
    state = "cold: empty at the start" if files == 0 else f"warm: {files} files at the start"
    return f"compile cache {root} ({state})"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-w", "--workloads", nargs="+", default=list(WORKLOADS),
                        help=f"workloads to run, from {list(WORKLOADS)}")
    parser.add_argument("--scaling", action="store_true",
                        help="also time the selected of W1/W2 at meta-batch sizes "
                             + str(SCALING["W1"]))
    parser.add_argument("--iters", type=int, default=20, help="timed meta-iterations (>= 1)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed meta-iterations first")
    parser.add_argument("--turn-ms", type=float, default=100.0,
                        help="each implementation's turn: back-to-back meta-iterations for at "
                             "least this long, at least one (0: strict alternation, where every "
                             "iteration pays a core's wake-up, see above)")
    parser.add_argument("--impls", nargs="+", default=["mamlkit", *PEERS],
                        help="implementations: mamlkit and peers " + str(PEERS))
    parser.add_argument("--metalearn", nargs="+", default=METALEARN_DEFAULT,
                        metavar="VARIANT",
                        help="parallel-metalearn variants to run, from " + str(METALEARN_VARIANTS)
                             + " (the +bn2d ones on CNN workloads only)")
    parser.add_argument("--mamlkit", nargs="+", default=["auto"], metavar="MODE",
                        help="mamlkit modes to time (plain: the defaults, compile='auto'): auto, "
                             "loop, vmap (batching); MODE/N sets "
                             "chunk_size=N (e.g. vmap/8); a +compile suffix turns on "
                             "torch.compile from the first call and +eager turns it off "
                             "(e.g. auto+compile, auto+eager; compiles happen before timing)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:index]")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch intra-op threads in every process (default: torch's)")
    parser.add_argument("--tolerance", type=float, default=1e-5,
                        help="largest relative meta-gradient difference to the plain loop")
    parser.add_argument("--check-dtype", default="float64", choices=["float64", "float32"],
                        help="precision of the gradient check (float64: differences are the "
                             "implementations', not float32 rounding amplified by the second "
                             "order)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--setup-timeout", type=float, default=1800.0,
                        help="seconds one implementation may take to set up and compute its "
                             "first meta-gradient")
    args = parser.parse_args(argv)
    unknown = [w for w in args.workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workloads {unknown}; choose from {list(WORKLOADS)}")
    bad = [i for i in args.impls if i not in MODULES]
    if bad:
        parser.error(f"unknown implementations {bad}; choose from {list(MODULES)}")
    bad_modes = [m for m in args.mamlkit
                 if not re.fullmatch(r"(auto|loop|vmap)(/[1-9][0-9]*)?(\+compile|\+eager)?", m)]
    if bad_modes:
        parser.error(f"unknown --mamlkit modes {bad_modes}; use auto, loop or vmap, optionally "
                     "with /N (chunk size) and +compile or +eager, e.g. vmap/8+compile")
    bad_variants = [v for v in args.metalearn if v not in METALEARN_VARIANTS]
    if bad_variants:
        parser.error(f"unknown --metalearn variants {bad_variants}; choose from {list(METALEARN_VARIANTS)}")
    if args.iters < 1 or args.warmup < 0 or args.turn_ms < 0:
        parser.error("--iters must be >= 1, --warmup and --turn-ms >= 0")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda was asked for but torch.cuda.is_available() is False; "
                     "run on a GPU machine or use --device cpu")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the selected workloads and print one table per workload; 1 if a gradient mismatched."""
    args = parse_args(argv)
    impls = [f"mamlkit:{m}" for m in args.mamlkit] if "mamlkit" in args.impls else []
    for name in args.impls:
        if name == "metalearn":
            impls += [f"metalearn:{v}" for v in args.metalearn]
        elif name != "mamlkit":
            impls.append(name)
    workloads = [WORKLOADS[w] for w in args.workloads]
    if args.scaling:
        workloads += [WORKLOADS[w].with_tasks(n) for w, sizes in SCALING.items() for n in sizes
                      if w in args.workloads and n != WORKLOADS[w].tasks]
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    print(f"torch {torch.__version__}, device {args.device}, {args.threads} threads, "
          f"{os.cpu_count()} CPUs, load average at start {load[0]:.2f}", flush=True)
    cache = compile_cache_state()
    print(cache)
    mismatch = False
    tables = []
    present: dict[str, str] = {}
    for workload in workloads:
        selected = [i for i in impls if workload.model == "cnn" or "+bn2d" not in i]
        results = run_workload(workload, selected, args)
        for r in results:
            present[r.label] = f"{r.version} ({r.note})" if r.version else f"absent ({r.error})"
            if r.grad_error is not None and r.grad_error > args.tolerance and not r.expected_mismatch:
                mismatch = True
        table = format_table(workload, results, args.tolerance, cache)
        tables.append(table)
        print("\n" + table + "\n", flush=True)
    print("implementations:")
    for label, text in present.items():
        print(f"  {label}: {text}")
    end_load = os.getloadavg()[0] if hasattr(os, "getloadavg") else "?"
    print(f"load average at end {end_load}")
    if mismatch:
        print(f"meta-gradient MISMATCH above relative tolerance {args.tolerance}", file=sys.stderr)
    return 1 if mismatch else 0


if __name__ == "__main__":
    sys.exit(main())
