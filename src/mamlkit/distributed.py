"""Data-parallel meta-training on ``torch.distributed`` (one process per device, launched by torchrun).

The meta-batch is split evenly across the processes ("ranks"): each rank samples its own tasks
(from a task stream seeded per rank, so no two ranks draw the same tasks), runs their inner loops
and accumulates the meta-gradient of its tasks' mean loss. :func:`synchronize_step` then averages
``.grad`` of every meta-parameter with one explicit all-reduce, so every rank holds the gradient of
the whole meta-batch and takes the same optimizer step. Averaging after the backward pass is exact
for second-order MAML too: each rank's ``.grad`` already contains its tasks' full (Hessian-vector
product) meta-gradient, and the meta-gradient of a mean over tasks is the mean of the per-task
meta-gradients.

Rank 0 logs and writes checkpoints; the per-rank task-sampler and random states are gathered to it
so one atomic checkpoint file resumes every rank exactly. The process group is set up from the
environment that ``torchrun`` provides (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``): gloo on CPUs, NCCL on GPUs. See ``docs/distributed.md``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

T = TypeVar("T")

_REBUILT_ERRORS: dict[str, type[Exception]] = {
    "ValueError": ValueError, "FileNotFoundError": FileNotFoundError,
    "FileExistsError": FileExistsError, "TypeError": TypeError, "KeyError": KeyError,
}


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a data-parallel run (``world_size == 1``: not distributed)."""

    rank: int = 0
    """Global index of this process, ``0 .. world_size - 1``."""
    world_size: int = 1
    """Number of processes sharing each meta-batch."""
    local_rank: int = 0
    """Index of this process on its machine (picks the GPU ``cuda:local_rank``)."""
    backend: str = ""
    """``gloo`` or ``nccl`` when distributed, empty otherwise."""

    @property
    def enabled(self) -> bool:
        """Whether gradients, metrics and decisions must be exchanged between processes."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process logs and writes checkpoints (rank 0)."""
        return self.rank == 0


SINGLE_PROCESS = DistributedContext()
"""The context of an ordinary single-process run."""


# ---------------------------------------------------------------------------------- set-up
def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"Environment variable {name}={raw!r} is not an integer; launch with "
                         "torchrun, which sets it, or unset it.") from None
    if value < 0:
        raise ValueError(f"Environment variable {name}={raw!r} must be >= 0.")
    return value


def environment_world_size() -> int:
    """``WORLD_SIZE`` as set by torchrun (1 when the variable is absent)."""
    return max(1, _env_int("WORLD_SIZE", 1))


def check_divisible(meta_batch_size: int, world_size: int) -> int:
    """Tasks per process; ``ValueError`` when the meta-batch cannot be split evenly.

    An even split is required so that the average of the processes' mean gradients equals the
    mean gradient over the whole meta-batch.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}.")
    if meta_batch_size % world_size:
        lower = meta_batch_size - meta_batch_size % world_size
        options = f"{lower} or {lower + world_size}" if lower else f"{world_size}"
        raise ValueError(
            f"meta_batch_size={meta_batch_size} cannot be split evenly across {world_size} "
            f"processes (WORLD_SIZE={world_size}): every process must get the same number of "
            f"tasks. Use a meta_batch_size that is a multiple of {world_size} (e.g. {options}), "
            "or launch a number of processes that divides it.")
    return meta_batch_size // world_size


def process_device(device: str, world_size: int, local_rank: int) -> str:
    """The device of this process: ``cuda`` means ``cuda:LOCAL_RANK`` in a distributed run.

    :func:`init_from_environment` makes that GPU the current CUDA device, so ``"cuda"`` (no index)
    in the configuration and in every ``.to("cuda")`` resolves to it, and the saved configuration
    stays the same for every process.
    """
    parsed = torch.device(device)
    if world_size <= 1 or parsed.type != "cuda":
        return device
    if parsed.index is not None:
        raise ValueError(
            f"device={device!r} pins every process to one GPU, but {world_size} processes run "
            "and each needs its own. Pass --device cuda: process LOCAL_RANK uses cuda:LOCAL_RANK "
            "(restrict the GPUs with CUDA_VISIBLE_DEVICES).")
    return f"cuda:{local_rank}"


def init_from_environment(device: str) -> DistributedContext:
    """Join the process group that torchrun describes in the environment, if any.

    Without ``WORLD_SIZE > 1`` nothing is initialised and the single-process context is returned.
    The backend is NCCL for CUDA devices (each process on ``cuda:LOCAL_RANK``, made the current
    device, see :func:`process_device`) and gloo otherwise.
    """
    world_size = environment_world_size()
    if world_size <= 1:
        return SINGLE_PROCESS
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={world_size} is set but {', '.join(missing)} is not: launch distributed "
            "runs with torchrun (e.g. torchrun --nproc-per-node 2 -m mamlkit.cli train ...), "
            "or unset WORLD_SIZE for a single process.")
    local_device = process_device(device, world_size, local_rank)
    backend = "nccl" if torch.device(local_device).type == "cuda" else "gloo"
    if backend == "nccl":
        if not torch.cuda.is_available() or local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"Process with LOCAL_RANK={local_rank} needs {local_device} but "
                f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} GPU(s) are "
                "visible; launch at most one process per GPU (--nproc-per-node).")
        torch.cuda.set_device(torch.device(local_device))
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistributedContext(rank, world_size, local_rank, backend)


def current_context() -> DistributedContext:
    """The context of the initialised default process group (single process when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE_PROCESS
    return DistributedContext(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0),
                              str(dist.get_backend()))


def shutdown() -> None:
    """Leave the process group (no-op when none was initialised)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------- seeding
def rank_seed(seed: int, rank: int) -> int:
    """A seed for rank ``rank`` derived from the run's ``seed``; rank 0 keeps ``seed`` itself.

    Other ranks get a hash of ``(seed, rank)`` (numpy's ``SeedSequence``), so their streams are
    unrelated to each other and to any run started with a nearby seed.
    """
    if rank == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(rank)]).generate_state(1)[0])


def seed_sampler_for_rank(sampler: Any, seed: int, rank: int) -> None:
    """Give rank ``rank`` its own task stream (rank 0's stream is left as it is).

    Uses ``sampler.reseed(seed)`` when the sampler has it; otherwise replaces the torch generator
    state that the sampler's ``state_dict()`` keeps under ``"generator"`` (the convention of
    mamlkit's regression and episode samplers) by that of a generator seeded with
    :func:`rank_seed`.
    """
    if rank == 0:
        return
    reseed_sampler(sampler, rank_seed(seed, rank))


def reseed_sampler(sampler: Any, new_seed: int) -> None:
    """Start ``sampler``'s task stream afresh from ``new_seed`` (see :func:`seed_sampler_for_rank`
    for the two ways a sampler can be reseeded)."""
    if hasattr(sampler, "reseed"):
        sampler.reseed(new_seed)
        return
    state = sampler.state_dict()
    fresh = torch.Generator().manual_seed(new_seed).get_state()
    current = state.get("generator") if isinstance(state, dict) else None
    if not isinstance(current, Tensor) or current.shape != fresh.shape:
        raise ValueError(
            f"Cannot give each process its own tasks: {type(sampler).__name__}.state_dict() has no "
            "'generator' entry holding a CPU torch.Generator state. Add a reseed(seed) method to "
            "the sampler (or keep its randomness in such a generator).")
    sampler.load_state_dict({**state, "generator": fresh})


# ---------------------------------------------------------------------------------- collectives
def broadcast_module(module: nn.Module, context: DistributedContext) -> None:
    """Copy rank 0's parameters and buffers to every rank (identical starting points)."""
    if not context.enabled:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


@dataclass
class StepSync:
    """What every rank agrees on after a meta-iteration's backward pass."""

    metrics: dict[str, float]
    """Metrics averaged over all ranks (equal task counts, so the meta-batch's means)."""
    stop_signal: bool
    """Some rank received SIGINT/SIGTERM."""
    stop_budget: bool
    """Some rank ran out of its time budget."""


def synchronize_step(params: Sequence[nn.Parameter], metrics: dict[str, float], stop_signal: bool,
                     stop_budget: bool, context: DistributedContext) -> StepSync:
    """Average ``.grad`` of ``params`` and the metrics over all ranks; agree on stopping.

    The gradients of each dtype and device are flattened into one buffer and summed with a
    single all-reduce, then divided by the world size and written back as ``.grad`` (a parameter
    that has no gradient on any rank keeps ``None``; one that has a gradient on only some ranks
    counts as zero elsewhere). A second, tiny all-reduce carries the metrics and the stop flags.
    With one process nothing is exchanged.
    """
    if not context.enabled:
        return StepSync(dict(metrics), stop_signal, stop_budget)
    world = context.world_size
    groups: dict[tuple[torch.dtype, torch.device], list[nn.Parameter]] = {}
    for p in params:
        groups.setdefault((p.dtype, p.device), []).append(p)
    device = params[0].device if params else torch.device("cpu")
    keys = sorted(metrics)
    extras = torch.tensor(
        [1.0 if p.grad is not None else 0.0 for p in params]
        + [float(metrics[k]) for k in keys] + [float(len(keys)), float(stop_signal),
                                               float(stop_budget)],
        dtype=torch.float64, device=device)
    for group in groups.values():
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                          for p in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(world)
        offset = 0
        for p in group:
            p.grad = flat[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
    dist.all_reduce(extras, op=dist.ReduceOp.SUM)
    values = extras.tolist()
    has_grad, rest = values[:len(params)], values[len(params):]
    for p, count in zip(params, has_grad):
        if count == 0:
            p.grad = None
    if round(rest[len(keys)]) != len(keys) * world:
        raise RuntimeError(
            f"Ranks report different metrics ({keys} on rank {context.rank}); every rank must run "
            "the same algorithm with the same configuration.")
    averaged = {k: rest[i] / world for i, k in enumerate(keys)}
    return StepSync(averaged, rest[-2] > 0, rest[-1] > 0)


def all_reduce_sums(sums: dict[str, float], context: DistributedContext,
                    device: torch.device | str = "cpu") -> dict[str, float]:
    """Sum each value over all ranks (keys must be the same everywhere)."""
    if not context.enabled:
        return dict(sums)
    keys = sorted(sums)
    buffer = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    return dict(zip(keys, buffer.tolist()))


def shard_bounds(total: int, context: DistributedContext) -> slice:
    """This rank's contiguous share of ``total`` items (sizes differ by at most one)."""
    base, extra = divmod(total, context.world_size)
    start = context.rank * base + min(context.rank, extra)
    return slice(start, start + base + (1 if context.rank < extra else 0))


def gather_to_main(obj: T, context: DistributedContext) -> list[T] | None:
    """Every rank's ``obj`` as a list on rank 0 (``None`` elsewhere); ``[obj]`` with one process."""
    if not context.enabled:
        return [obj]
    out: list[Any] | None = [None] * context.world_size if context.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def run_on_main(fn: Callable[[], T], context: DistributedContext) -> T:
    """Run ``fn`` on rank 0 only and hand its result (or its error) to every rank.

    For work that must happen once (preparing the run folder, reading a checkpoint that may exist
    only on rank 0's disk): when ``fn`` raises on rank 0, every rank raises the same kind of error
    with the same message, so no rank waits forever for the others.
    """
    if not context.enabled:
        return fn()
    payload: list[Any] = [None]
    failure: Exception | None = None
    if context.is_main:
        try:
            payload[0] = ("ok", fn())
        except Exception as error:  # noqa: BLE001 - re-raised on every rank below
            failure = error
            payload[0] = ("error", type(error).__name__, str(error))
    dist.broadcast_object_list(payload, src=0)
    outcome = payload[0]
    if failure is not None:
        raise failure
    if outcome[0] == "error":
        kind = _REBUILT_ERRORS.get(outcome[1], RuntimeError)
        raise kind(outcome[2] if kind is not KeyError else outcome[2].strip("'\""))
    return outcome[1]


def barrier(context: DistributedContext) -> None:
    """Wait until every rank gets here (no-op with one process)."""
    if context.enabled:
        dist.barrier()
