"""Batching tasks: what ``torch.func.vmap`` cannot batch, chunks of a meta-batch, and the
inner learning rates' checks.

``vmap`` runs one task's code on all tasks at once. It cannot when the model mutates state that
is shared by the tasks, or calls kernels without batching rules that do not fall back correctly:

- ``nn.RNN``, ``nn.GRU`` and ``nn.LSTM`` (``nn.RNNBase``) call fused ``_VF`` kernels whose
  in-place output writes fail under ``vmap`` (``output with shape [5, 3] doesn't match the
  broadcast shape [3, 5, 3]``);
- Hugging Face ``transformers`` models test their attention masks for padding (data-dependent
  control flow) before attention;
- a BatchNorm layer under the ``module`` policy in train mode updates its running statistics in
  place, one copy for all tasks.

For these, ``batching="auto"`` uses the per-task loop from the start and ``batching="vmap"``
refuses with the reason; any other failure under ``vmap`` makes ``auto`` fall back to the loop
with a warning naming the cause.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from numbers import Real

from torch import Tensor, nn

from mamlkit.tasks.base import TaskBatch


def layer_vmap_blocker(model: nn.Module) -> str | None:
    """Why ``model``'s layers cannot be batched over tasks whatever their mode (RNNs, Hugging
    Face models), or None. Depends only on which layers the model has, so a caller may keep it."""
    rnn = next((m for m in model.modules() if isinstance(m, nn.RNNBase)), None)
    if rnn is not None:
        return (f"The model contains {type(rnn).__name__} layers, whose fused kernels "
                "torch.func.vmap cannot batch over tasks; pass batching='loop' (or 'auto', "
                "which picks it).")
    hf = next((m for m in model.modules() if type(m).__module__.startswith("transformers.")
               and hasattr(m, "config")), None)
    if hf is not None:
        return (f"{type(hf).__name__} (Hugging Face) builds its attention masks with "
                "data-dependent control flow (it tests whether the mask has padding), which "
                "torch.func.vmap cannot batch over tasks; pass batching='loop' (or 'auto', which "
                "picks it).")
    return None


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The model's BatchNorm layers (the ones :func:`running_stats_blocker` looks at)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def running_stats_blocker(norms: list[nn.modules.batchnorm._BatchNorm], batchnorm: str
                          ) -> str | None:
    """Why vmap cannot run now: under the ``module`` policy a BatchNorm layer in train mode that
    tracks running statistics updates them in place, one copy for all tasks; None otherwise.
    Depends on the layers' current mode, so it is asked at every call."""
    if batchnorm != "module":
        return None
    norm = next((m for m in norms if m.training and m.track_running_stats), None)
    if norm is None:
        return None
    return (f"BatchNorm ({type(norm).__name__}) in train mode under batchnorm='module' "
            "updates its running statistics in place, which torch.func.vmap cannot do "
            "for all tasks at once; pass batching='loop' (or 'auto'), put the model in "
            "eval mode, or use batchnorm='transductive'.")


def refuse_vmap(error: Exception) -> RuntimeError:
    """The error raised when an explicit ``batching="vmap"`` fails: the cause and the fix."""
    return RuntimeError(
        f"batching='vmap' failed: torch.func.vmap cannot batch this model over tasks "
        f"({type(error).__name__}: {error}). Pass batching='loop' (or 'auto', which falls back "
        "to the loop).")


def iterate_chunks(batch: TaskBatch, size: int) -> Iterator[TaskBatch]:
    """The batch's tasks in consecutive chunks of at most ``size`` tasks."""
    if size >= batch.num_tasks:
        yield batch
        return
    for start in range(0, batch.num_tasks, size):
        yield batch.slice(slice(start, start + size))


def check_inner_lr(inner_lr: float | Tensor | Mapping[str, float | Tensor],
                   adapted: tuple[str, ...], aliases: Mapping[str, str]) -> dict[str, float]:
    """``{adapted name: rate}`` from one rate for all or a dict of rates (keys may be any name
    of a tied parameter); ``ValueError`` naming the problem when a rate is missing, unknown,
    not a number or not positive. A 0-dim tensor counts as a number."""
    if isinstance(inner_lr, Mapping):
        values: dict[str, float | Tensor] = {}
        unknown = []
        for name, value in inner_lr.items():
            canonical = aliases.get(name)
            if canonical not in adapted:
                unknown.append(name)
            elif canonical in values and _number(values[canonical]) != _number(value):
                raise ValueError(f"inner_lr gives two rates for one (tied) parameter: "
                                 f"{name!r} is also named {canonical!r}.")
            else:
                values[canonical] = value
        missing = [n for n in adapted if n not in values]
        if missing or unknown:
            raise ValueError(
                f"inner_lr dict must give a rate for exactly the adapted parameters; missing "
                f"{missing}, not adapted or unknown {unknown}."
            )
    else:
        values = dict.fromkeys(adapted, inner_lr)
    rates = {}
    for name, value in values.items():
        rate = _number(value)
        if rate is None:
            raise ValueError(f"inner_lr for {name!r} must be a number or a 0-dim tensor, got "
                             f"{type(value).__name__} {value!r}.")
        if not rate > 0:
            raise ValueError(f"inner_lr for {name!r} must be a positive number, got {rate!r}.")
        rates[name] = rate
    return rates


def _number(value: object) -> float | None:
    if isinstance(value, Tensor):
        return float(value) if value.dim() == 0 and not value.is_complex() else None
    if isinstance(value, Real) and not isinstance(value, bool):
        return float(value)
    return None
