"""One implementation of one workload, in its own process.

Each implementation runs in a separate process so that its peak memory is its own and nothing it
caches helps another. The parent drives all processes of a workload in turn, one meta-iteration
each per round, so a slow spell of a shared machine hits every implementation alike and the ratios
stay meaningful even when absolute times move.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import os
import resource
import time
import traceback
from dataclasses import asdict
from multiprocessing.connection import Connection
from typing import Any

import torch

from benchmarks._peers.workloads import Workload, build_model, make_batch

MODULES = {
    "mamlkit": "benchmarks._peers.mamlkit_engine",
    "learn2learn": "benchmarks._peers.learn2learn_maml",
    "higher": "benchmarks._peers.higher_loop",
    "torchopt": "benchmarks._peers.torchopt_loop",
    "metalearn": "benchmarks._peers.metalearn_maml",
    "plain": "benchmarks._peers.plain_loop",
}
"""Implementation name -> module; ``mamlkit:MODE`` selects a batching mode of mamlkit,
``metalearn:VARIANT`` a backend (and batch norm) of parallel-metalearn."""


def resident_bytes() -> int:
    """Current resident set size of this process (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - not Linux
        return 0


def peak_resident_bytes() -> int:
    """Peak resident set size of this process since the last :func:`reset_peak_resident` (Linux
    ``VmHWM``), or since it started where that cannot be read."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_resident() -> bool:
    """Hand freed heap memory back to the system and restart the peak from the current resident
    set, so that a later peak measures what the following work needs (Linux; False elsewhere).

    Without the trim, memory that warm-up iterations freed but the C allocator kept would already
    be resident and hide the iterations' own needs; without the reset, one-off set-up work (such
    as ``torch.compile``'s compiler) would set the peak."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # pragma: no cover - not glibc/Linux
        return False
    return True


COMPILE_SUFFIXES = {"compile": "on", "eager": "off"}
"""mamlkit mode suffixes: ``+compile`` compiles on the first call, ``+eager`` never; without one
the learner's default, ``compile="auto"``."""


def _prepare(impl: str, workload: Workload, model: torch.nn.Module) -> tuple[Any, str, str]:
    name, _, mode = impl.partition(":")
    module = importlib.import_module(MODULES[name])
    version, note = module.probe()
    if version is None:
        raise ModuleNotFoundError(note)
    if name == "mamlkit":
        mode, plus, extra = (mode or "auto").partition("+")
        if plus and extra not in COMPILE_SUFFIXES:
            raise ValueError(f"unknown mamlkit option +{extra}; use +compile or +eager")
        batching, _, chunk = mode.partition("/")
        step = module.prepare(model, workload, batching=batching,
                              chunk_size=int(chunk) if chunk else None,
                              compile=COMPILE_SUFFIXES[extra] if plus else "auto")
        return step, version, note
    if name == "metalearn":
        return module.prepare(model, workload, variant=mode or "vmap"), version, f"{note}, {mode}"
    return module.prepare(model, workload), version, note


def check_worker(conn: Connection, impl: str, workload_fields: dict, device: str, threads: int,
                 seed: int, dtype: str) -> None:
    """Process entry point: send the meta-gradient at the initial parameters in ``dtype``.

    A separate process from the timed one, so the check's memory does not count in the peak.
    Sends ``("ready", grads, version, note)`` or ``("error", text)``.
    """
    try:
        torch.set_num_threads(threads)
        workload = Workload(**workload_fields)
        model = build_model(workload, seed).to(device=device, dtype=getattr(torch, dtype)).train()
        batch = tuple(t.to(device=device, dtype=getattr(torch, dtype)) if t.is_floating_point()
                      else t.to(device) for t in make_batch(workload, seed + 1))
        meta_gradient, version, note = _prepare(impl, workload, model)
        warmed = _warm_up(meta_gradient, batch)
        learner = getattr(meta_gradient, "learner", None)
        if learner is not None:
            import mamlkit

            note += f"; {learner.execution_summary(mamlkit.TaskBatch(*batch))}"
            note += f"; {dtype} check: {warmed}" if warmed else ""
        model.zero_grad(set_to_none=True)
        meta_gradient(batch)
        # numpy arrays: plain pickles that outlive this process (tensors would be shared by fd)
        grads = [p.grad.detach().cpu().numpy().copy() if p.grad is not None else None
                 for p in model.parameters()]
        conn.send(("ready", grads, version, note))
    except Exception as error:  # noqa: BLE001 - reported in the table, not fatal for the others
        conn.send(("error", f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=3)}"))


def worker(conn: Connection, impl: str, workload_fields: dict, device: str, threads: int,
           seed: int) -> None:
    """Process entry point: set up, then time meta-iterations on request.

    Messages sent: ``("ready",)`` or ``("error", text)``; then, for a ``("step", n, ms)``
    request, the ``(wall, cpu)`` milliseconds of each meta-iteration of a turn: back to back (as
    training runs them), at least ``n`` of them and for at least ``ms`` milliseconds; and
    ``(peak_bytes,)`` for ``"memory"``. The peak counts from the resident memory (GPU: allocated
    memory) after the first turn, the warm-up (:func:`reset_peak_resident`), or after set-up when
    the peak cannot be reset.
    """
    try:
        torch.set_num_threads(threads)
        workload = Workload(**workload_fields)
        model = build_model(workload, seed).to(device).train()
        batch = tuple(t.to(device) for t in make_batch(workload, seed + 1))
        meta_gradient, _, _ = _prepare(impl, workload, model)
        warmed = _warm_up(meta_gradient, batch)
        # The same Adam for every implementation: PyTorch's fused kernel, mamlkit's trainer's choice.
        optimizer = torch.optim.Adam(model.parameters(), lr=workload.meta_lr, fused=True)
        cuda = device.startswith("cuda")

        def sync() -> None:
            if cuda:
                torch.cuda.synchronize()

        sync()
        baseline = torch.cuda.memory_allocated() if cuda else resident_bytes()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        conn.send(("ready", warmed))
    except Exception as error:  # noqa: BLE001
        conn.send(("error", f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=3)}"))
        return
    warmed_up = False
    while True:
        command = conn.recv()
        if isinstance(command, tuple) and command[0] == "step":
            _, count, turn_ms = command
            times: list[tuple[float, float]] = []
            turn_start = time.perf_counter()
            while len(times) < count or (time.perf_counter() - turn_start) * 1000.0 < turn_ms:
                sync()
                start, cpu_start = time.perf_counter(), time.process_time()
                optimizer.zero_grad(set_to_none=True)
                meta_gradient(batch)
                optimizer.step()
                sync()
                times.append(((time.perf_counter() - start) * 1000.0,
                              (time.process_time() - cpu_start) * 1000.0))
            conn.send(times)
            if not warmed_up:  # the first turn is the warm-up: measure memory from here on
                warmed_up = True
                sync()
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                    baseline = torch.cuda.memory_allocated()
                elif reset_peak_resident():
                    baseline = resident_bytes()
        elif command == "memory":
            peak = torch.cuda.max_memory_allocated() if cuda else peak_resident_bytes()
            conn.send((peak - baseline,))
        else:
            return


def _warm_up(meta_gradient: Any, batch: tuple) -> str:
    """An implementation's own warm-up before its gradient is checked or timed (mamlkit's
    background compile under ``compile="auto"``); what it reported, or ``""``."""
    warm_up = getattr(meta_gradient, "warm_up", None)
    return warm_up(batch) if warm_up is not None else ""


def workload_fields(workload: Workload) -> dict:
    """The workload as plain data for the child process."""
    return asdict(workload)
