"""PNG figures of the paper (matplotlib, imported only when a plot is made)."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from mamlkit.evaluate import Estimate


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError('Plots need matplotlib: pip install "mamlkit[plots]"') from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_regression_fits(path: Path, grid: Tensor, truth: Tensor, support_x: Tensor,
                         support_y: Tensor, fits: Mapping[str, Mapping[str, Tensor]],
                         title: str = "") -> Path:
    """The paper's Figure 2: one row per model (MAML, pretrained), one panel per task, each with
    the true function, the K points used for the gradient and the model's curves (pre-update and
    after each number of gradient steps).

    ``grid`` is ``[points]``; ``truth`` and every curve of ``fits[model][curve]`` are
    ``[tasks, points]``; ``support_x``/``support_y`` are ``[tasks, K]``.
    """
    plt = _pyplot()
    tasks, rows = truth.shape[0], len(fits)
    fig, axes = plt.subplots(rows, tasks, figsize=(3.6 * tasks, 2.9 * rows), squeeze=False,
                             sharex=True)
    styles = [(":", "tab:green"), ("--", "tab:blue"), ("-", "tab:orange"), ("-.", "tab:purple")]
    for r, (model, curves) in enumerate(fits.items()):
        for t, ax in enumerate(axes[r]):
            ax.plot(grid, truth[t], color="red", linewidth=2, label="ground truth")
            for i, (label, curve) in enumerate(curves.items()):
                style, color = styles[i % len(styles)]
                ax.plot(grid, curve[t], style, color=color, label=label)
            ax.scatter(support_x[t], support_y[t], color="purple", marker="^", zorder=3,
                       label=f"{support_x.shape[1]} points used for gradient")
            ax.set_title(f"{model}, task {t + 1} (K={support_x.shape[1]})", fontsize=9)
            if t == 0:
                ax.set_ylabel("y")
            if r == rows - 1:
                ax.set_xlabel("x")
        axes[r][0].legend(fontsize=6, loc="lower left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_adaptation_curves(path: Path, curves: Mapping[str, Sequence[Estimate]], ylabel: str,
                           title: str = "", percent: bool = False) -> Path:
    """The paper's Figure 3: a metric (mean ± 95% CI) vs number of adaptation steps (integer
    ticks); ``percent`` shows fractions as percentages, as the tables do."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    scale = 100.0 if percent else 1.0
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for label, estimates in curves.items():
        steps = list(range(len(estimates)))
        means = [scale * e.mean for e in estimates]
        ci = [scale * e.ci95 for e in estimates]
        ax.errorbar(steps, means, yerr=ci, marker="o", markersize=3, capsize=2, label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("number of gradient steps")
    ax.set_ylabel(f"{ylabel} (%)" if percent else ylabel)
    if title:
        ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def plot_learning_curve(path: Path, metrics_csv: Path, metric: str = "val_accuracy",
                        title: str = "") -> Path:
    """Training and validation metric vs meta-iteration and vs wall-clock, from ``metrics.csv``
    (the training metric is the meta-batch's query accuracy, or its loss for ``val_loss``);
    accuracies in percent."""
    plt = _pyplot()
    with Path(metrics_csv).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    train_metric = "query_accuracy" if metric == "val_accuracy" else "loss"
    scale = 100.0 if metric.endswith("accuracy") else 1.0
    series = {}
    for label, key in (("training (meta-batch)", train_metric), ("validation", metric)):
        points = [(int(r["iteration"]), float(r["elapsed_s"]) / 60, scale * float(r[key]))
                  for r in rows if r.get(key)]
        if points:
            series[label] = points
    if "validation" not in series:
        raise ValueError(f"{metrics_csv} has no {metric} values to plot (was validation on?).")
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for label, points in series.items():
        iterations, minutes, values = zip(*points)
        marker = "o" if label == "validation" else None
        left.plot(iterations, values, marker=marker, markersize=3, label=label)
        right.plot(minutes, values, marker=marker, markersize=3, label=label)
    left.set_xlabel("meta-iteration")
    name = metric.removeprefix("val_").replace("_", " ")
    left.set_ylabel(f"query {name} (%)" if scale == 100.0 else f"query {name}")
    right.set_xlabel("wall-clock (minutes)")
    left.legend(fontsize=8)
    fig.suptitle(title or f"learning curve: {name}")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
