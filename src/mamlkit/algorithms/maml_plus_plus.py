"""MAML++: the training tricks of "How to train your MAML", each a separate switch.

Antoniou, Edwards & Storkey, "How to train your MAML", ICLR 2019. The tricks, all optional:

- **MSL** (multi-step loss): the outer loss is a weighted sum of the query losses after every
  inner step; the weights start uniform and anneal towards the final step (the schedule of the
  paper's code, :func:`msl_weights`) over ``msl_iterations``; after that only the final step counts.
- **LSLR**: a learnable inner learning rate per adapted parameter tensor *and per step*.
- **BNRS / BNWB**: per-step BatchNorm running statistics and per-step BatchNorm weights and
  biases (see :mod:`mamlkit.algorithms.per_step_norm`). BNRS makes evaluation non-transductive
  (``learner.eval()`` normalises with the running statistics, as the paper describes; the
  published code always normalised with batch statistics), so it is off unless asked for: the
  meta-learned adaptation relies on batch-normalised support sets, and on Omniglot 5-way 1-shot
  after a short training run it measured at chance level in evaluation (docs/algorithms.md).
- **DA** (derivative-order annealing): first-order meta-gradients for the first
  ``first_order_iterations`` iterations, second order afterwards.
- **CA** (cosine annealing of the meta learning rate): :func:`cosine_meta_lr`, a scheduler for the
  outer optimizer.

Annealing needs the training iteration: the training loop calls ``learner.set_iteration(i)``
(``i = 0, 1, ...``, the index of the meta-iteration about to run) before each meta-update. The
schedules are expressed in whatever unit it counts; pass epochs and ``msl_iterations`` in epochs
to reproduce the paper's per-epoch steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mamlkit.algorithms.per_step_norm import PerStepNorms, batchnorm_layers, check_batchnorm_layers
from mamlkit.core.inner_loop import InnerProblem
from mamlkit.core.inner_optim import SGD, FixedRates, PerStepRates, learned_rate_table, parameter_key
from mamlkit.core.learner import MetaLearner, TaskOutput
from mamlkit.core.params import Params, named_buffers

BatchStats = dict[str, tuple[Tensor, Tensor]]
"""``layer name -> (batch mean, unbiased batch variance)`` of one forward pass."""

_MIN_NON_FINAL = 0.03


def msl_weights(steps: int, progress: float) -> list[float]:
    """Per-step weights of the multi-step loss (the schedule of the MAML++ code).

    ``progress`` is the fraction of the annealing period elapsed (iteration / msl_iterations).
    At 0 every step weighs ``1/steps``; non-final weights decay linearly to ``0.03/steps`` and
    the final one grows to ``1 - (steps - 1) * 0.03/steps``, reached at ``progress = 0.97``. The
    weights always sum to 1.
    """
    if steps < 1:
        raise ValueError(f"The multi-step loss needs at least one inner step, got {steps}.")
    progress = max(0.0, float(progress))
    floor = _MIN_NON_FINAL / steps
    non_final = max(1.0 / steps - progress / steps, floor)
    final = min(1.0 / steps + progress * (steps - 1) / steps, 1.0 - (steps - 1) * floor)
    return [non_final] * (steps - 1) + [final]


def cosine_meta_lr(optimizer: torch.optim.Optimizer, total_iterations: int,
                   min_lr: float = 1e-5) -> torch.optim.lr_scheduler.CosineAnnealingLR:
    """MAML++'s cosine annealing of the meta learning rate (CA): call ``.step()`` once per
    iteration (or per epoch, with ``total_iterations`` in epochs, as the paper's code does)."""
    if total_iterations < 1:
        raise ValueError(f"total_iterations must be >= 1, got {total_iterations}.")
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_iterations, eta_min=min_lr)


class MAMLPlusPlus(MetaLearner):
    """MAML++ (Antoniou et al., ICLR 2019), every trick switchable alone.

    Args:
        model: any ``nn.Module``.
        multi_step_loss: MSL on/off.
        msl_iterations: length of the MSL annealing period (in ``set_iteration`` units); MSL
            applies while ``iteration < msl_iterations``.
        learn_inner_lrs: LSLR on/off; ``inner_lr`` is the initial value of every rate.
        per_step_bn_stats: BNRS on/off (off by default; see the module docstring).
        per_step_bn_weights: BNWB on/off; ``None``: on when the model has BatchNorm layers. The
            per-step weights and biases are meta-learned only, so BatchNorm affine parameters leave
            the inner loop, and the model's own BatchNorm weight and bias are unused.
        first_order_iterations: DA: first order while ``iteration < first_order_iterations``
            (0: never).
        **kwargs: the driver's arguments (:class:`~mamlkit.core.learner.MetaLearner`).

    Per-step quantities exist for the ``inner_steps`` of meta-training (learning rates for steps
    ``0..inner_steps-1``, BatchNorm sets for parameters after ``0..inner_steps`` updates); adapting
    for more steps (``eval_inner_steps``) reuses the last trained rate and BatchNorm set, since
    per-step quantities that training never reached would be untrained.
    """

    inner_checkpointable = False  # its inner problem is its own

    custom_support_loss = False  # per-step BatchNorm sets in its own inner-loop loss
    # The compiled objective is backpropagated by autograd instead: MSL weights and DA are
    # Python numbers that change with set_iteration, so a torch.func.grad graph (the heavier
    # compile) would be recompiled at every meta-iteration of the annealing periods.
    compiled_meta_gradient = False

    def __init__(self, model: nn.Module, *, multi_step_loss: bool = True, msl_iterations: int = 5000,
                 learn_inner_lrs: bool = True, per_step_bn_stats: bool = False,
                 per_step_bn_weights: bool | None = None, first_order_iterations: int = 0,
                 inner_lr: float | Mapping[str, float] = 0.01, **kwargs: Any) -> None:
        for name, value in (("msl_iterations", msl_iterations),
                            ("first_order_iterations", first_order_iterations)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}.")
        super().__init__(model, inner_lr=inner_lr, **kwargs)
        layers = batchnorm_layers(model)
        self.per_step_bn_stats = bool(per_step_bn_stats)
        self.per_step_bn_weights = bool(layers) if per_step_bn_weights is None else per_step_bn_weights
        if self.per_step_bn_stats or self.per_step_bn_weights:
            check_batchnorm_layers(layers, self.per_step_bn_stats)
            if self.per_step_bn_stats and self.batchnorm != "transductive":
                raise ValueError("Per-step running statistics replace the batchnorm policy; keep "
                                 "batchnorm='transductive' or pass per_step_bn_stats=False.")
        self.multi_step_loss = multi_step_loss
        self.msl_iterations = msl_iterations
        self.learn_inner_lrs = learn_inner_lrs
        self.first_order_iterations = first_order_iterations
        self.iteration = 0
        self.num_step_sets = max(self.inner_steps, 1)
        self._recorder: dict[str, tuple[Tensor, Tensor]] | None = None
        params = self.meta_params()

        affine = [f"{layer}.{p}" for layer, m in layers.items() for p in ("weight", "bias")
                  if getattr(m, p, None) is not None]
        if self.per_step_bn_weights:
            self.adapted_names = tuple(n for n in self.adapted_names if n not in affine)
            if not self.adapted_names:
                raise ValueError("With per-step BatchNorm weights no adapted parameter is left; adapt more "
                                 "than the BatchNorm layers or pass per_step_bn_weights=False.")
            self.inner_lr = {n: self.inner_lr[n] for n in self.adapted_names}
        self.bn_step_params = nn.ParameterDict({
            parameter_key(name): nn.Parameter(
                params[name].detach().unsqueeze(0).repeat(self.num_step_sets + 1, *[1] * params[name].dim()))
            for name in (affine if self.per_step_bn_weights else [])
        })
        self.bn_step_stats = nn.Module()
        self._stat_layers = list(layers) if self.per_step_bn_stats else []
        self._momentum = {name: (m.momentum if m.momentum is not None else 0.1) for name, m in layers.items()}
        for layer in self._stat_layers:
            for stat in ("running_mean", "running_var"):
                buffer = getattr(layers[layer], stat).detach()
                self.bn_step_stats.register_buffer(
                    parameter_key(f"{layer}.{stat}"),
                    buffer.unsqueeze(0).repeat(self.num_step_sets + 1, 1).clone())
        self._step_param_names = tuple(affine) if self.per_step_bn_weights else ()
        self._step_stat_names = tuple(f"{layer}.{stat}" for layer in self._stat_layers
                                      for stat in ("running_mean", "running_var"))
        self.inner_lr_params = learned_rate_table(
            params, self.adapted_names if learn_inner_lrs else (), self.inner_lr,
            steps=self.num_step_sets)
        self.inner_optimizer = SGD(
            PerStepRates(self.inner_lr_params, self.adapted_names, self.num_step_sets)
            if learn_inner_lrs else FixedRates(self.inner_lr))
        self.register_load_state_dict_pre_hook(_resize_per_step_entries)

    # ------------------------------------------------------------------ schedules
    def set_iteration(self, iteration: int) -> None:
        """Tell the learner which meta-iteration is about to run (drives MSL and DA annealing)."""
        if not isinstance(iteration, int) or iteration < 0:
            raise ValueError(f"iteration must be an integer >= 0, got {iteration!r}.")
        self.iteration = iteration

    def uses_first_order(self) -> bool:
        """Whether the current iteration uses first-order meta-gradients (``first_order`` or DA)."""
        return self.first_order or self.iteration < self.first_order_iterations

    def current_msl_weights(self) -> list[float] | None:
        """The multi-step-loss weights for the current iteration, or ``None`` when MSL is off."""
        if not (self.multi_step_loss and self.training and self.inner_steps > 0
                and self.iteration < self.msl_iterations):
            return None
        return msl_weights(self.inner_steps, self.iteration / self.msl_iterations)

    # ------------------------------------------------------------------ per-step pieces
    def step_entries(self, step: int) -> Params:
        """Per-step BatchNorm weights/biases and running statistics for parameters after ``step``
        updates, keyed by the model's parameter and buffer names."""
        index = min(step, self.num_step_sets)
        entries = {}
        for name in self._step_param_names:
            entries[name] = self.bn_step_params[parameter_key(name)][index]
        for name in self._step_stat_names:
            entries[name] = getattr(self.bn_step_stats, parameter_key(name))[index]
        return entries

    def functional_forward(self, params: Params, x: Any, buffers: Params | None = None) -> Any:
        """The driver's forward, with per-step running statistics when ``params`` carries them."""
        stat_names = self._step_stat_names
        stats = {n: v for n, v in params.items() if n in stat_names}
        if not stats:
            return super().functional_forward(params, x, buffers)
        model_params = {n: v for n, v in params.items() if n not in stat_names}
        buffers = named_buffers(self.model) if buffers is None else buffers
        buffers = {n: None if n.endswith("num_batches_tracked") else b for n, b in buffers.items()}
        buffers.update(stats)
        layer_of = {id(v): n.rsplit(".", 1)[0] for n, v in stats.items() if n.endswith("running_mean")}
        return self.run_model(model_params, buffers, x, PerStepNorms(
            layer_of, use_running=not self.training, recorder=self._recorder))

    def _recorded_loss(self, params: Params, x: Any, y: Tensor, record: bool
                       ) -> tuple[Tensor, Tensor, BatchStats]:
        self._recorder = {} if record else None
        try:
            loss, outputs = self.task_loss(params, x, y)
            recorded = self._recorder or {}
        finally:
            self._recorder = None
        return loss, outputs, recorded

    # ------------------------------------------------------------------ the inner loop
    def recording(self) -> bool:
        """Whether forward passes report their batch statistics (BNRS while training)."""
        return bool(self._stat_layers) and self.training

    def inner_problem(self, params: Params, support_x: Any, support_y: Any, first_order: bool
                      ) -> InnerProblem:
        """The adapted parameters on the support loss with BatchNorm set ``k`` at step ``k``;
        each step's auxiliary value is its support batch statistics (BNRS while training)."""
        frozen = {n: p for n, p in params.items() if n not in self.adapted_names}
        frozen_inner = {n: p.detach() for n, p in frozen.items()} if first_order else frozen
        record = self.recording()

        def loss(fast: Params, step: int) -> tuple[Tensor, BatchStats]:
            loss, _, stats = self._recorded_loss({**frozen_inner, **fast, **self.step_entries(step)},
                                                 support_x, support_y, record)
            return loss, stats

        return InnerProblem(
            start={n: params[n] for n in self.adapted_names}, loss=loss,
            assemble=lambda fast, step: {**frozen, **fast, **self.step_entries(step)})

    def task_objective(self, params: Params, support_x: Any, support_y: Tensor, query_x: Any,
                       query_y: Tensor) -> TaskOutput:
        """Query loss after the inner loop (MSL: weighted over every step); the state is the
        batch statistics of every BatchNorm set when training with BNRS (:meth:`absorb`)."""
        record = self.recording()
        result = self.run_inner_loop(params, support_x, support_y, self.inner_steps,
                                     self.uses_first_order())
        trajectory, support_losses = result.trajectory, result.losses
        recorded: list[BatchStats] = [stats or {} for stats in result.aux] + [{}]
        weights = self.current_msl_weights()
        scored = range(1, self.inner_steps + 1) if weights is not None else [self.inner_steps]
        total = None
        for k in scored:
            loss, outputs, stats = self._recorded_loss(trajectory[k], query_x, query_y, record)
            weighted = loss if weights is None else weights[k - 1] * loss
            total = weighted if total is None else total + weighted
            for layer, pair in stats.items():  # merge with the support statistics of the same set
                recorded[k][layer] = _average_pairs(recorded[k].get(layer), pair)
        metrics = self.query_metrics(loss, outputs, query_y, support_losses)
        state = {str(k): stats for k, stats in enumerate(recorded) if stats}
        return total, state, metrics

    @torch.no_grad()
    def absorb(self, state: dict[str, BatchStats]) -> None:
        """Fold each BatchNorm set's batch statistics (mean over the tasks) into its running
        averages, while training with BNRS."""
        if not self.training:
            return
        for step, layers in state.items():
            for layer, (mean, var) in layers.items():
                for stat, values in (("running_mean", mean), ("running_var", var)):
                    buffer = getattr(self.bn_step_stats, parameter_key(f"{layer}.{stat}"))
                    momentum = self._momentum[layer]
                    buffer[int(step)].mul_(1 - momentum).add_(values.mean(0).to(buffer.dtype),
                                                              alpha=momentum)


_PER_STEP_PREFIXES = ("inner_lr_params.", "bn_step_params.", "bn_step_stats.")


def _resize_per_step_entries(module: MAMLPlusPlus, state_dict: dict[str, Tensor], prefix: str,
                             *args: Any) -> None:
    """Load per-step tensors saved with another number of inner steps.

    A learner built for evaluation usually has more steps (``inner_steps=eval_inner_steps``)
    than the one that was trained. Saved per-step entries are cut to this learner's count or
    extended by repeating the last trained entry, which is what the trained learner itself does
    for the extra steps (see the class docstring), so both adapt identically.
    """
    own = {k: v for k, v in module.state_dict().items() if k.startswith(_PER_STEP_PREFIXES)}
    for key, target in own.items():
        saved = state_dict.get(prefix + key)
        if saved is None or saved.dim() == 0 or saved.shape[0] == target.shape[0]:
            continue
        count = target.shape[0]
        if saved.shape[0] > count:
            state_dict[prefix + key] = saved[:count]
        else:
            extra = saved[-1:].expand(count - saved.shape[0], *saved.shape[1:])
            state_dict[prefix + key] = torch.cat([saved, extra])


def _average_pairs(first: tuple[Tensor, Tensor] | None, second: tuple[Tensor, Tensor]
                   ) -> tuple[Tensor, Tensor]:
    if first is None:
        return second
    return (first[0] + second[0]) / 2, (first[1] + second[1]) / 2
