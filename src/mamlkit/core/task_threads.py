"""Worker threads that process a meta-batch's tasks side by side on the CPU.

The tasks of a meta-batch are independent until their gradients are summed. On a CPU the per-task
work of a few-shot CNN is made of small kernels (5-image convolutions) that PyTorch's intra-op
threads split poorly: on two cores they make an eager per-task loop 1.3-1.6x faster and a
compiled one 1.0-1.2x (docs/performance.md). Giving each core its
own tasks instead (one intra-op thread per worker, tasks ``k, k + n, ...`` on worker ``k``) keeps
every core busy on kernels of the same size. Python's GIL limits this to code that spends its time
in kernels that release it, such as a ``torch.compile``d meta-gradient (see
:class:`~mamlkit.core.learner.MetaLearner`'s ``task_threads``).

Workers run under the caller's grad mode and autocast state (both thread-local in PyTorch), so a
job behaves as it would on the calling thread.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")

_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()
_AUTOCAST_DEVICES = ("cpu", "cuda")


def task_pool(workers: int) -> ThreadPoolExecutor:
    """The process's pool of ``workers`` threads, each with one torch intra-op thread.

    Started on first use and shared by every learner. The calling thread's own intra-op thread
    count, and the default of threads started later, are left as they were.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}.")
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = _POOLS[workers] = _start_pool(workers)
    return pool


def _start_pool(workers: int) -> ThreadPoolExecutor:
    caller_threads = torch.get_num_threads()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="mamlkit-task")
    started = threading.Barrier(workers)

    def one_intra_op_thread() -> None:
        # A thread's first parallel kernel would reset its count to the process-wide one, unless
        # that lazy initialisation has happened: get_num_threads() does it, then set the count.
        torch.get_num_threads()
        torch.set_num_threads(1)
        started.wait()  # every job on its own thread: all workers are started

    for job in [pool.submit(one_intra_op_thread) for _ in range(workers)]:
        job.result()
    # torch.set_num_threads is per thread for OpenMP, but it also sets the count that threads
    # started later begin with: restore that.
    torch.set_num_threads(caller_threads)
    return pool


def _forget_pools_after_fork() -> None:
    # A forked child (a DataLoader worker) has none of the parent's threads.
    _POOLS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools_after_fork)


def map_interleaved(fn: Callable[[list[T]], R], items: Sequence[T], workers: int) -> list[R]:
    """``fn`` of each interleaved share ``items[k::workers]``, run on the pool's workers.

    Returns the results in share order (``k = 0, 1, ...``), so whatever the threads' timing, the
    caller can combine them in a fixed order. Exceptions are re-raised in the caller.
    """
    shares = [list(items[k::workers]) for k in range(workers)]
    shares = [share for share in shares if share]
    if not shares:
        return []
    run = _in_caller_state(fn)
    jobs = [task_pool(workers).submit(run, share) for share in shares]
    return [job.result() for job in jobs]


def _in_caller_state(fn: Callable[[list[T]], R]) -> Callable[[list[T]], R]:
    """``fn`` wrapped to run under the calling thread's grad mode and autocast state."""
    grad_enabled = torch.is_grad_enabled()
    autocast = [(device, torch.get_autocast_dtype(device)) for device in _AUTOCAST_DEVICES
                if torch.is_autocast_enabled(device)]

    def run(share: list[T]) -> R:
        with ExitStack() as stack:
            stack.enter_context(torch.set_grad_enabled(grad_enabled))
            for device, dtype in autocast:
                stack.enter_context(torch.autocast(device, dtype=dtype))
            return fn(share)

    return run
