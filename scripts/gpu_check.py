"""One short GPU check of mamlkit: correctness against the CPU, then meta-iteration timings.

Correctness (CPU result vs CUDA result of the same computation, second-order MAML):
  1. sinusoid meta-gradient, MLP 1-40-40-1, float64 (tight tolerance) and float32;
  2. Omniglot-shaped CNN meta-gradient (4 conv blocks with BatchNorm, 5-way 1-shot), float64 and
     float32 (TF32 off), with vmap and with the per-task loop on the GPU;
  3. bf16 autocast on the GPU: meta-gradient close to float32, far closer than first order;
  4. the training loop on ``cuda`` (batches from a CPU sampler go through pinned memory) ends at
     the same parameters as on the CPU; ``mamlkit train sinusoid --device cuda`` runs end to end.
Timings (ms per meta-iteration: host-to-device copy of the batch, meta-gradient, Adam step;
median of ``--iterations`` after ``--warmup``, synchronised):
  - sinusoid: 25 tasks, MLP 1-40-40-1, 10 support + 10 query points, 1 inner step, second order;
  - Omniglot 5-way 1-shot: 32 tasks, 4-block CNN with 64 filters, 1 inner step, second order,
    ``--queries`` query images per class (1, as MAML's Omniglot code), vmap vs loop, and vmap
    with bf16 autocast. Images are random (timings do not depend on pixel values).
Prints a table with the GPU model and exits with status 1 if any check fails. Takes well under
four minutes on an H100. ``--cpu-dry-run`` runs the whole script with the CPU standing in for
the GPU (to check the script itself on a machine without one).

    python scripts/gpu_check.py [--iterations 25] [--warmup 5] [--queries 1]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from mamlkit import MAML, ConvNet, Sinusoid, TaskBatch, omniglot_cnn, sinusoid_mlp
from mamlkit.config import make_config
from mamlkit.train import autocast_factory, meta_train, move_batch

RESULTS: list[tuple[str, bool, str]] = []


def check(name: str, passed: bool, detail: str) -> None:
    """Record and print one correctness result."""
    RESULTS.append((name, passed, detail))
    print(f"[{'PASS' if passed else 'FAIL'}] {name}: {detail}", flush=True)


def meta_gradient(make_model: Callable[[], nn.Module], batch: TaskBatch, device: str,
                  dtype: torch.dtype, loss: str, inner_lr: float, batching: str = "auto",
                  first_order: bool = False, amp: str = "none") -> torch.Tensor:
    """The flattened second-order (or first-order) meta-gradient of ``batch`` on ``device``."""
    torch.manual_seed(0)
    model = make_model().to(device=device, dtype=dtype)
    learner = MAML(model, inner_lr=inner_lr, inner_steps=1, first_order=first_order, loss=loss,
                   batching=batching)
    moved = batch.to(device)
    if dtype != torch.float32:
        moved = TaskBatch(moved.support_x.to(dtype), _cast_targets(moved.support_y, dtype),
                          moved.query_x.to(dtype), _cast_targets(moved.query_y, dtype))
    with autocast_factory(amp, torch.device(device))():
        learner.meta_backward(moved)
    return torch.cat([p.grad.flatten() for p in learner.parameters()]).double().cpu()


def _cast_targets(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return y.to(dtype) if y.dtype.is_floating_point else y


def compare(name: str, cpu: torch.Tensor, gpu: torch.Tensor, rtol: float) -> None:
    """Relative error ||gpu - cpu|| / ||cpu|| against ``rtol``."""
    error = float((gpu - cpu).norm() / cpu.norm())
    check(name, error <= rtol and bool(torch.isfinite(gpu).all()),
          f"relative error {error:.2e} (tolerance {rtol:.0e}), |grad| {float(cpu.norm()):.3e}")


def omniglot_batch(tasks: int, queries: int, seed: int = 0) -> TaskBatch:
    """Random 28x28 images shaped like 5-way 1-shot Omniglot episodes (labels grouped by class)."""
    generator = torch.Generator().manual_seed(seed)
    support_y = torch.arange(5).expand(tasks, -1).contiguous()
    query_y = torch.arange(5).repeat_interleave(queries).expand(tasks, -1).contiguous()
    return TaskBatch(torch.rand(tasks, 5, 1, 28, 28, generator=generator), support_y,
                     torch.rand(tasks, 5 * queries, 1, 28, 28, generator=generator), query_y)


def correctness(device: str, queries: int) -> None:
    """CPU vs ``device`` results (see the module docstring)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    sine = Sinusoid(seed=0).sample(25)
    for dtype, rtol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        cpu = meta_gradient(sinusoid_mlp, sine, "cpu", dtype, "mse", 0.01, "vmap")
        gpu = meta_gradient(sinusoid_mlp, sine, device, dtype, "mse", 0.01, "vmap")
        compare(f"sinusoid meta-gradient {str(dtype)[6:]}", cpu, gpu, rtol)
    images = omniglot_batch(4, queries)

    def small_cnn() -> nn.Module:
        return ConvNet(in_channels=1, ways=5, hidden=16, image_size=28, blocks=4)

    for dtype, rtol in ((torch.float64, 1e-9), (torch.float32, 1e-3)):
        cpu = meta_gradient(small_cnn, images, "cpu", dtype, "cross_entropy", 0.4, "loop")
        for batching in ("vmap", "loop"):
            gpu = meta_gradient(small_cnn, images, device, dtype, "cross_entropy", 0.4, batching)
            compare(f"Omniglot CNN meta-gradient {str(dtype)[6:]} ({batching} on GPU)", cpu, gpu,
                    rtol)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        check("bf16 autocast", False, "this GPU does not support bfloat16")
    else:
        def gradients(make, batch, loss, lr):
            return {(order, amp): meta_gradient(make, batch, device, torch.float32, loss, lr,
                                                "vmap", first_order=order == "first", amp=amp)
                    for order in ("second", "first") for amp in ("none", "bf16")}

        def relative(a: torch.Tensor, b: torch.Tensor) -> float:
            return float((a - b).norm() / b.norm())

        # sinusoid: bf16 must stay within 5% and far closer than the first-order approximation
        g = gradients(sinusoid_mlp, sine, "mse", 0.01)
        error = relative(g["second", "bf16"], g["second", "none"])
        term = relative(g["first", "none"], g["second", "none"])
        check("bf16 autocast sinusoid (second order)", 1e-5 < error < 0.05 and error < 0.25 * term,
              f"relative error {error:.2e} vs float32; first-order gap {term:.2e}")
        # a deep CNN with 1-shot BatchNorm on random images: bf16 is coarse for the plain
        # (first-order) gradient already; the second-order path must not add to that
        g = gradients(small_cnn, images, "cross_entropy", 0.4)
        error = relative(g["second", "bf16"], g["second", "none"])
        first_error = relative(g["first", "bf16"], g["first", "none"])
        check("bf16 autocast Omniglot CNN (second order)", error <= max(0.12, 1.5 * first_error),
              f"relative error {error:.2e} vs float32; bf16 error of the first-order gradient "
              f"{first_error:.2e} (CPU dry run: 0.33 and 0.45)")
    loop_check(device)


def loop_check(device: str) -> None:
    """The training loop on the CPU and on ``device`` ends at the same parameters."""
    finals = {}
    for where in ("cpu", device):
        config = make_config({"iterations": 5, "meta_batch_size": 25, "val_every": 5,
                              "val_tasks": 10, "checkpoint_every": 5, "tensorboard": False,
                              "eval_inner_steps": 2, "device": where})
        torch.manual_seed(0)
        learner = MAML(sinusoid_mlp(), inner_lr=0.01, inner_steps=1, loss="mse").to(where)
        with tempfile.TemporaryDirectory() as run_dir:
            meta_train(learner, Sinusoid(seed=0), config, run_dir, progress=False,
                       val_batch=Sinusoid().fixed_tasks(10, seed=1))
        finals[where] = torch.cat([p.detach().flatten().cpu() for p in learner.parameters()])
    diff = float((finals[device] - finals["cpu"]).abs().max())
    check("training loop cpu vs device (5 Adam steps, pinned CPU batches)", diff < 1e-4,
          f"max parameter difference {diff:.2e}")
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "mamlkit.cli", "train", "sinusoid", "--device",
                   device.split(":")[0], "--run-dir", str(Path(tmp) / "run"), "--iterations", "20",
                   "--meta-batch-size", "5", "--val-every", "10", "--val-tasks", "10",
                   "--test-tasks", "20", "--eval-inner-steps", "2", "--no-plots",
                   "--no-tensorboard"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        check(f"mamlkit train sinusoid --device {device.split(':')[0]}", done.returncode == 0,
              "exit 0" if done.returncode == 0 else done.stderr[-800:])


def time_workload(learner: MAML, batches: list[TaskBatch], device: str, iterations: int,
                  warmup: int, amp: str = "none") -> tuple[float, float]:
    """Median ms per meta-iteration and peak GPU memory in MiB."""
    dev = torch.device(device)
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    autocast = autocast_factory(amp, dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + iterations):
        sync()
        start = time.perf_counter()
        batch = move_batch(batches[i % len(batches)], dev)
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            learner.meta_backward(batch)
        optimizer.step()
        sync()
        times.append((time.perf_counter() - start) * 1000)
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else float("nan")
    return statistics.median(times[warmup:]), peak


def timings(device: str, iterations: int, warmup: int, queries: int) -> list[tuple]:
    """The timing table's rows."""
    torch.backends.cudnn.benchmark = True
    rows = []
    sines = [Sinusoid(seed=s).sample(25) for s in range(4)]
    for where, batching in ((device, "vmap"), (device, "loop"), ("cpu", "vmap")):
        torch.manual_seed(0)
        learner = MAML(sinusoid_mlp(), inner_lr=0.01, inner_steps=1, loss="mse",
                       batching=batching).to(where)
        ms, peak = time_workload(learner, sines, where, iterations, warmup)
        rows.append(("sinusoid 25 tasks, MLP 1-40-40-1", where, batching, "fp32", ms, peak))
    images = [omniglot_batch(32, queries, seed=s) for s in range(4)]
    bf16 = torch.device(device).type != "cuda" or torch.cuda.is_bf16_supported()
    for batching, amp in (("vmap", "none"), ("loop", "none"), ("vmap", "bf16")):
        if amp == "bf16" and not bf16:
            continue
        torch.manual_seed(0)
        learner = MAML(omniglot_cnn(5), inner_lr=0.4, inner_steps=1, loss="cross_entropy",
                       batching=batching).to(device)
        ms, peak = time_workload(learner, images, device, iterations, warmup, amp)
        rows.append((f"Omniglot 5w1s 32 tasks, CNN 64f, {queries} q/class", device, batching,
                     amp if amp != "none" else "fp32", ms, peak))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--queries", type=int, default=1)
    parser.add_argument("--no-timings", action="store_true", help="correctness checks only")
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="use the CPU in place of the GPU (checks the script, not the GPU)")
    args = parser.parse_args()
    if args.iterations < 20 and not args.cpu_dry_run:
        parser.error("--iterations must be >= 20 for a meaningful median")
    started = time.perf_counter()
    if args.cpu_dry_run:
        device, model = "cpu", "CPU (dry run, no GPU)"
    elif not torch.cuda.is_available():
        print("CUDA is not available: run this on a GPU machine (or pass --cpu-dry-run).")
        return 2
    else:
        device, model = "cuda", torch.cuda.get_device_name(0)
    print(f"mamlkit GPU check on {model}; torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"cuDNN {torch.backends.cudnn.version()}", flush=True)
    correctness(device, args.queries)
    rows = [] if args.no_timings else timings(device, args.iterations, args.warmup, args.queries)
    print(f"\nms per meta-iteration (median of {args.iterations} after {args.warmup} warm-up), "
          f"second-order MAML, 1 inner step, Adam; GPU: {model}")
    print(f"{'workload':<44} {'device':<6} {'batching':<8} {'precision':<9} {'ms/iter':>9} "
          f"{'peak MiB':>9}")
    for workload, where, batching, precision, ms, peak in rows:
        print(f"{workload:<44} {where:<6} {batching:<8} {precision:<9} {ms:>9.2f} {peak:>9.0f}")
    failed = [name for name, passed, _ in RESULTS if not passed]
    print(f"\n{len(RESULTS) - len(failed)}/{len(RESULTS)} checks passed"
          + (f"; FAILED: {', '.join(failed)}" if failed else "")
          + f"; total {time.perf_counter() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
