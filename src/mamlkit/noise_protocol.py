"""The noisy-support evaluation protocol: every method on the same episodes, the same corruption.

For each noise setting (a rate and a kind, :class:`mamlkit.noise.SupportNoise`) every batch of
fixed test episodes is corrupted once, with a seed that depends only on the evaluation seed and
the batch's position, and every method scores exactly that corrupted batch; queries stay clean.
The table reports the score (accuracy or MSE) of each method at each rate, mean ± 95% CI over
episodes, and the paired drop from the clean episodes (per-episode differences, so the CI of the
drop is not inflated by how hard each episode is).

A *method* is any callable ``TaskBatch -> Tensor [tasks]`` of per-episode query scores;
:func:`adapted_score` and :func:`prototype_score` build the two the library reports: a
meta-learner after ``steps`` adaptation steps, and nearest-prototype classification (Snell et
al., NeurIPS 2017) on the same network's features, the metric baseline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mamlkit.core.learner import MetaLearner
from mamlkit.core.support_weights import captured_input, last_linear
from mamlkit.evaluate import Estimate, episode_scores, mean_ci
from mamlkit.noise import SupportNoise, corrupt_support, same_episode_seed
from mamlkit.tasks.base import TaskBatch

Method = Callable[[TaskBatch], Tensor]
"""``method(batch) -> [tasks]`` query score of every episode of the batch."""


def adapted_score(learner: MetaLearner, steps: int, metric: str | None = None) -> Method:
    """Query ``metric`` (accuracy for classification, else loss) of ``learner`` after ``steps``
    adaptation steps on each episode's support set."""
    if metric not in (None, "query_accuracy", "query_loss"):
        raise ValueError(f"metric must be query_accuracy or query_loss, got {metric!r}.")
    use_accuracy = metric == "query_accuracy" or (metric is None and learner.classification)
    key = "query_accuracy" if use_accuracy else "query_loss"

    def score(batch: TaskBatch) -> Tensor:
        return episode_scores(learner, batch, [steps])[key][0]  # only that step is scored

    return score


def network_features(learner: MetaLearner, x: Tensor) -> Tensor:
    """The input of the model's last ``nn.Linear`` for examples ``x`` ``[n, ...]`` (no graph)."""
    params = {n: p.detach() for n, p in learner.meta_params().items()}
    with torch.no_grad(), captured_input(learner.model.get_submodule(last_linear(learner.model))) \
            as captured:
        learner.functional_forward(params, x)
    return captured[-1].reshape(x.shape[0], -1)


def prototype_score(learner: MetaLearner, ways: int) -> Method:
    """Query accuracy of nearest-prototype classification (squared Euclidean distance to the
    class means of the support features) on the features of ``learner``'s network, unadapted.
    A class left without support examples by the corruption can never be predicted."""

    def score(batch: TaskBatch) -> Tensor:
        results = []
        for i in range(batch.num_tasks):
            support = network_features(learner, batch.support_x[i])
            query = network_features(learner, batch.query_x[i])
            onehot = F.one_hot(batch.support_y[i], ways).to(support.dtype)
            counts = onehot.sum(0)
            centroids = onehot.T @ support / counts.clamp(min=1).unsqueeze(-1)
            distance = torch.cdist(query, centroids).pow(2)
            distance[:, counts == 0] = float("inf")
            results.append((distance.argmin(-1) == batch.query_y[i]).float().mean())
        return torch.stack(results)

    return score


@dataclass(frozen=True)
class NoiseResult:
    """Per-episode scores of every method under every noise setting (``[episodes]`` each)."""

    scores: dict[str, dict[SupportNoise, Tensor]]
    clean: SupportNoise
    higher_is_better: bool = True

    def estimate(self, method: str, noise: SupportNoise) -> Estimate:
        """Mean ± 95% CI of ``method``'s score under ``noise``."""
        return mean_ci(self.scores[method][noise])

    def drop(self, method: str, noise: SupportNoise) -> Estimate:
        """Paired degradation from the clean episodes (positive = worse): clean minus noisy for
        an accuracy, noisy minus clean for a loss."""
        change = self.scores[method][self.clean] - self.scores[method][noise]
        return mean_ci(change if self.higher_is_better else -change)


def evaluate_under_noise(methods: Mapping[str, Method], episodes: Iterable[TaskBatch],
                         noises: Sequence[SupportNoise], seed: int = 0,
                         ways: int | None = None, higher_is_better: bool = True) -> NoiseResult:
    """Score every method on every batch of ``episodes`` under every noise setting.

    The clean setting (rate 0, the kind of the first noise) is always included. Each batch is
    corrupted once per setting (seed :func:`mamlkit.noise.same_episode_seed`) and the same
    corrupted batch goes to every method. ``higher_is_better``: the scores are accuracies (True)
    or losses (False), which sets the sign of :meth:`NoiseResult.drop`.
    """
    if not noises:
        raise ValueError("Give at least one noise setting, e.g. SupportNoise(0.2, 'symmetric').")
    clean = SupportNoise(0.0, noises[0].kind, noises[0].scale)
    settings = [clean] + list(dict.fromkeys(n for n in noises if n.rate > 0))
    parts: dict[str, dict[SupportNoise, list[Tensor]]] = {
        name: {n: [] for n in settings} for name in methods}
    for index, batch in enumerate(episodes):
        for noise in settings:
            noisy = corrupt_support(batch, noise, same_episode_seed(seed, index), ways)[0]
            for name, method in methods.items():
                parts[name][noise].append(method(noisy).detach().cpu())
    scores = {name: {n: torch.cat(v) for n, v in per.items()} for name, per in parts.items()}
    return NoiseResult(scores, clean, higher_is_better)


def noise_table(result: NoiseResult, percent: bool = True, title: str = "") -> str:
    """A Markdown table: one row per method and noise kind, score ± CI at every rate, then the
    paired drop at every non-zero rate."""
    kinds = list(dict.fromkeys(n.kind for n in next(iter(result.scores.values()))))
    rows = []
    for kind in kinds:
        noisy = sorted({n for n in next(iter(result.scores.values())) if n.kind == kind
                        and n.rate > 0}, key=lambda n: n.rate)
        header = (["method", "noise"] + ["p = 0"] + [f"p = {n.rate:g}" for n in noisy]
                  + [f"{'drop' if result.higher_is_better else 'increase'} at {n.rate:g}"
                     for n in noisy])
        if not rows:
            rows += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        scale = 100.0 if percent else 1.0
        for method in result.scores:
            cells = [method, kind]
            for noise in [result.clean, *noisy]:
                e = result.estimate(method, noise)
                cells.append(_cell(e, scale, percent))
            for noise in noisy:
                cells.append(_cell(result.drop(method, noise), scale, percent))
            rows.append("| " + " | ".join(cells) + " |")
    return (title + "\n\n" if title else "") + "\n".join(rows)


def _cell(estimate: Estimate, scale: float, percent: bool) -> str:
    digits = 2 if percent else 3
    return f"{scale * estimate.mean:.{digits}f} ± {scale * estimate.ci95:.{digits}f}"
