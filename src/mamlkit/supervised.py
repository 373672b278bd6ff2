"""The supervised meta-iteration: sample tasks, meta-gradient, outer optimizer step.

:class:`SupervisedStep` is what :func:`mamlkit.train.meta_train` hands to the shared training
loop for regression, images and text: the algorithm only supplies ``meta_backward`` (see
:class:`mamlkit.core.learner.MetaLearner`) and the domain only supplies a task sampler with
``sample(n)`` and ``state_dict()``/``load_state_dict()``. Data-parallel when a
``torch.distributed`` process group is initialised: each process samples its share of the
meta-batch from its own task stream, the meta-gradients are averaged with an all-reduce
(:mod:`mamlkit.distributed`) and validation is sharded.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch

from mamlkit.checkpoint import rng_state, set_rng_state
from mamlkit.core.learner import MetaLearner
from mamlkit.core.model_io import first_leaf, index_tree, select_output
from mamlkit.distributed import (
    SINGLE_PROCESS,
    DistributedContext,
    all_reduce_sums,
    broadcast_module,
    check_divisible,
    gather_to_main,
    rank_seed,
    seed_sampler_for_rank,
    shard_bounds,
    synchronize_step,
)
from mamlkit.loop_config import LoopConfig
from mamlkit.outer_optimizer import meta_optimizer
from mamlkit.run_guard import Outcome, StopFlags, all_finite
from mamlkit.schedules import lr_factor
from mamlkit.tasks.base import TaskBatch


class TaskSampler(Protocol):
    """What the loop needs from a task distribution."""

    def sample(self, num_tasks: int) -> TaskBatch: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def build_optimizer(config: LoopConfig, params: Iterator[torch.nn.Parameter]
                    ) -> torch.optim.Optimizer:
    """The outer optimizer named by ``config.optimizer``
    (:func:`mamlkit.meta_optimizer`: fused, AdamW when adam has weight decay)."""
    return meta_optimizer(config.optimizer, params, config.meta_lr, config.weight_decay)


def apply_training_options(config: LoopConfig, optimizer: torch.optim.Optimizer,
                           params: list[torch.nn.Parameter], iteration: int) -> dict[str, float]:
    """Before the outer step of ``iteration``: set the scheduled learning rate
    (:mod:`mamlkit.schedules`) and clip the meta-gradient (``grad_clip``); returns what a run
    logs about it (``grad_norm``, the norm before clipping, when clipping)."""
    factor = lr_factor(config.lr_schedule, iteration, config.iterations, config.warmup_iterations,
                       config.lr_step_size, config.lr_gamma)
    for group in optimizer.param_groups:
        group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor
    if not config.grad_clip:
        return {}
    norm = torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None],
                                          config.grad_clip)
    return {"grad_norm": float(norm)}


def autocast_factory(amp: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A callable that opens the mixed-precision context of ``amp`` (``none`` or ``bf16``).

    bf16 autocast runs matrix products and convolutions in bfloat16 while the parameters, the
    fast weights of the inner loop and their gradients stay float32 (autograd returns gradients
    in the dtype of the tensor they are taken with respect to), and losses are computed in
    float32; so the second-order meta-gradient is built from float32 inner-loop updates.
    """
    if amp == "none":
        return contextlib.nullcontext
    if amp != "bf16":
        raise ValueError(f"amp must be 'none' or 'bf16', got {amp!r}.")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"amp='bf16' was requested but {device} does not support bfloat16; "
                         "use --amp none.")
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def move_batch(batch: TaskBatch, device: torch.device) -> TaskBatch:
    """``batch`` on ``device``, moved once; CPU tensors go through pinned memory to a GPU so the
    copy is asynchronous."""
    if device.type == "cuda" and first_leaf(batch.support_x).device.type == "cpu":
        batch = pin_batch(batch)
    return batch.to(device, non_blocking=True)


def pin_batch(batch: TaskBatch) -> TaskBatch:
    """A copy of a CPU ``batch`` in page-locked memory (fast, asynchronous host-to-GPU copies);
    every tensor of pytree inputs and targets is pinned."""
    return batch.map_tensors(lambda tensor: tensor.pin_memory())


def preflight(learner: MetaLearner, batch: TaskBatch) -> None:
    """Check that the model fits the task before the first meta-iteration of a session.

    Runs the engine's input check and :func:`check_model_fits_task` with the random state put back
    afterwards: their forward passes would otherwise consume random numbers (dropout) at the
    start of every session, and a resumed run would drift from an uninterrupted one.
    """
    device = batch.support_x.device
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        check_inputs = getattr(learner, "_check_batch", None)  # the engine's cached shape check
        if check_inputs is not None:
            check_inputs(batch)
        check_model_fits_task(learner, batch)


def check_model_fits_task(learner: MetaLearner, batch: TaskBatch) -> None:
    """Raise ``ValueError`` when a classifier's outputs cannot score the task's labels.

    Run once on the first batch: a model with fewer logits than the episode has classes would
    otherwise fail deep inside the loss (on a GPU, as an opaque device-side assertion).
    """
    if (not learner.classification or not isinstance(batch.support_y, torch.Tensor)
            or batch.support_y.dtype.is_floating_point):
        return
    buffers = {n: b.clone() for n, b in learner.model.named_buffers()}  # not a task's forward
    with torch.no_grad():
        outputs = select_output(learner.functional_forward(
            learner.meta_params(), index_tree(batch.support_x, 0), buffers), learner.output)
    classes = int(max(batch.support_y.max(), batch.query_y.max())) + 1
    if outputs.dim() < 2 or outputs.shape[-1] < classes:
        raise ValueError(
            f"The model outputs shape {tuple(outputs.shape)} for {batch.support_y.shape[1]} "
            f"examples but the task's labels go up to {classes - 1}: a classifier needs "
            f"[examples, {classes}] logits. Build the model with as many outputs as ways "
            f"({classes}).")


def validate(learner: MetaLearner, batch: TaskBatch, steps: int,
             context: DistributedContext = SINGLE_PROCESS) -> dict[str, float]:
    """Mean query loss (and accuracy) after ``steps`` adaptation steps on held-out tasks.

    ``batch`` is this process's share of the validation tasks; the per-task sums are added up
    over all processes, so every process gets the mean over all validation tasks.
    """
    keys = ["val_loss"] + (["val_accuracy"] if learner.classification else [])
    sums = dict.fromkeys(keys, 0.0)
    sums["count"] = float(batch.num_tasks)
    if batch.num_tasks:
        curve = learner.adaptation_curve(batch, steps)
        sums["val_loss"] = float(curve["query_loss"][-1].double().sum())
        if "val_accuracy" in sums:
            sums["val_accuracy"] = float(curve["query_accuracy"][-1].double().sum())
    totals = all_reduce_sums(sums, context, batch.support_x.device)
    return {k: totals[k] / totals["count"] for k in keys}


class SupervisedStep:
    """One supervised meta-iteration of ``learner`` on tasks from ``tasks`` (a ``MetaStep``).

    Samples this process's share of the meta-batch, runs ``meta_backward`` (under ``amp``),
    averages the meta-gradient over processes, then applies the learning-rate schedule, clipping
    and the outer optimizer's step when the loss and gradient are finite (else drops the
    gradient). ``val_batch``, when given, is validated by :meth:`validate`.
    """

    shown = {"query_accuracy": "acc"}
    """Metrics the progress bar shows besides the loss (name -> label)."""

    def __init__(self, learner: MetaLearner, tasks: TaskSampler, config: LoopConfig,
                 context: DistributedContext, val_batch: TaskBatch | None = None) -> None:
        self.learner, self.tasks, self.config, self.context = learner, tasks, config, context
        self.local_tasks = check_divisible(config.meta_batch_size, context.world_size)
        self.device = torch.device(config.device)
        self.autocast = autocast_factory(config.amp, self.device)
        self.params = list(learner.parameters())
        self.optimizer = build_optimizer(config, iter(self.params))
        self.val_batch = val_batch
        self.val_part: TaskBatch | None = None
        self.validates = val_batch is not None
        self.higher_is_better = learner.classification and self.validates
        self.say: Callable[[str], None] = lambda _: None
        self.first = True

    def begin(self, resumed: bool, say: Callable[[str], None]) -> None:
        """Start a session: on a new data-parallel run, give every process rank 0's weights and
        its own task and dropout streams; move this process's validation share to the device."""
        self.say, self.first = say, True
        if not resumed and self.context.enabled:
            broadcast_module(self.learner, self.context)
            seed_sampler_for_rank(self.tasks, self.config.seed, self.context.rank)
            if self.context.rank:
                torch.manual_seed(rank_seed(self.config.seed, self.context.rank))
        if self.val_batch is not None:
            bounds = shard_bounds(self.val_batch.num_tasks, self.context)
            self.val_part = move_batch(self.val_batch.slice(bounds), self.device)

    def run(self, iteration: int, stop: StopFlags) -> Outcome:
        """Meta-iteration ``iteration`` (1-based); see the class docstring."""
        learner, config = self.learner, self.config
        if hasattr(learner, "set_iteration"):
            learner.set_iteration(iteration - 1)
        tick = time.perf_counter()
        batch = move_batch(self.tasks.sample(self.local_tasks), self.device)
        if self.first:
            preflight(learner, batch)
            tasks_word = "task" if batch.num_tasks == 1 else "tasks"
            self.say(f"meta-batch of {batch.num_tasks} {tasks_word}: "
                     f"{learner.execution_summary(batch)}")
            if learner.use_compile:
                self.say("compiling the meta-gradient with torch.compile (seconds for an MLP, "
                         "minutes for a CNN on a small CPU) ...")
        self.optimizer.zero_grad(set_to_none=True)
        learner.expect_meta_batches(config.iterations - iteration)
        with self.autocast():
            metrics = learner.meta_backward(batch)
        for line in learner.compile_messages():
            self.say(line)
        if self.first and learner.use_compile:
            self.say(f"first meta-iteration done in {time.perf_counter() - tick:.1f} s "
                     f"({learner.execution_summary(batch)})")
        self.first = False
        del batch
        synced = synchronize_step(self.params, metrics, stop.signal, stop.budget, self.context)
        metrics = synced.metrics
        finite = all_finite(metrics["loss"], self.params)
        if finite:
            metrics.update(apply_training_options(config, self.optimizer, self.params, iteration))
            self.optimizer.step()
        else:
            self.optimizer.zero_grad(set_to_none=True)
        metrics["meta_lr"] = self.optimizer.param_groups[0]["lr"]
        agreed = StopFlags(synced.stop_signal, synced.stop_budget) if self.context.enabled else None
        return Outcome(metrics, finite, agreed)

    def validate(self) -> dict[str, float]:
        """``val_loss`` (and ``val_accuracy``) on the held-out tasks, over all processes."""
        steps = self.config.val_inner_steps
        if steps is None:
            steps = self.learner.eval_inner_steps
        return validate(self.learner, self.val_part, steps, self.context)

    def state_dict(self) -> dict[str, Any]:
        """The learner, optimizer, task sampler and random states (collective: every process
        hands its sampler and random states to rank 0, which returns them all)."""
        per_rank = gather_to_main({"sampler": self.tasks.state_dict(), "rng": rng_state()},
                                  self.context)
        if not self.context.is_main:
            return {}
        state = {"learner": self.learner.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "sampler": per_rank[0]["sampler"], "rng": per_rank[0]["rng"]}
        if self.context.enabled:
            state["ranks"] = per_rank
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (this process's sampler and random states)."""
        self.learner.load_state_dict(state["learner"])
        self.optimizer.load_state_dict(state["optimizer"])
        per_rank = state.get("ranks") or [{"sampler": state["sampler"], "rng": state["rng"]}]
        mine = per_rank[self.context.rank]
        self.tasks.load_state_dict(mine["sampler"])
        set_rng_state(mine["rng"])
