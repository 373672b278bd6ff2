"""Peak memory of one task's meta-gradient as ``torch.func.grad`` of the meta-loss, plain or checkpointed.

    python benchmarks/inner_checkpoint_transforms.py plain 10 eager
    python benchmarks/inner_checkpoint_transforms.py checkpointed 10 compile

``benchmarks/inner_memory.py`` measures the per-task loop with an outer autograd backward; this
script measures the other form an engine can take, ``torch.func.grad`` of one task's meta-loss
(eager, or inside ``torch.compile``), for the same Omniglot CNN (5-way 1-shot, 5+5 images). One
process per run; the peak resident memory of the second call above the memory after the first
(which compiles), as in ``inner_memory.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad

from benchmarks._peers.runner import peak_resident_bytes, reset_peak_resident, resident_bytes
from benchmarks.inner_memory import batch, build


def main(argv: list[str] | None = None) -> int:
    """Print one line: method, steps, mode, first-call seconds, CPU ms and peak MB of the second."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("method", choices=["plain", "checkpointed"])
    parser.add_argument("steps", type=int)
    parser.add_argument("mode", choices=["eager", "compile"])
    parser.add_argument("--inner-lr", type=float, default=0.1)
    args = parser.parse_args(argv)
    from mamlkit.core.inner_checkpoint import checkpointed_inner_loop

    torch.set_num_threads(1)
    model = build(0)
    support_x, support_y, query_x, query_y = (t[0] for t in batch(1, 1, 1))

    def task_loss(params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return nn.functional.cross_entropy(functional_call(model, params, (x,)), y)

    def meta_loss(params: dict[str, Tensor], sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        if args.method == "checkpointed":
            fast, _ = checkpointed_inner_loop(task_loss, params, {}, args.inner_lr, args.steps,
                                              data=(sx, sy))
        else:
            fast = params
            for _ in range(args.steps):
                grads = grad(task_loss)(fast, sx, sy)
                fast = {n: fast[n] - args.inner_lr * grads[n] for n in fast}
        return task_loss(fast, qx, qy)

    meta_gradient = grad(meta_loss)
    if args.mode == "compile":
        meta_gradient = torch.compile(meta_gradient)
    params = {n: p.detach() for n, p in model.named_parameters()}
    inputs = (params, support_x, support_y, query_x, query_y)
    start = time.perf_counter()
    meta_gradient(*inputs)
    first = time.perf_counter() - start
    reset_peak_resident()
    baseline = resident_bytes()
    cpu = time.process_time()
    meta_gradient(*inputs)
    cpu = time.process_time() - cpu
    peak = (peak_resident_bytes() - baseline) / 2 ** 20
    print(f"{args.method}, {args.steps} steps, {args.mode}: first call {first:.1f} s, second call "
          f"{cpu * 1e3:.0f} ms CPU, peak {peak:.1f} MB above the baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
