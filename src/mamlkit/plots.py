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
                         support_y: Tensor, fits: Mapping[str, Tensor]) -> Path:
    """The paper's Figure 2: per task, the true function, the K points and each model's fit.

    ``grid`` is ``[points]``; ``truth`` and every ``fits`` value are ``[tasks, points]``;
    ``support_x``/``support_y`` are ``[tasks, K]``.
    """
    plt = _pyplot()
    tasks = truth.shape[0]
    fig, axes = plt.subplots(1, tasks, figsize=(4.2 * tasks, 3.4), squeeze=False)
    styles = ["-", "--", "-.", ":"]
    for t, ax in enumerate(axes[0]):
        ax.plot(grid, truth[t], color="red", linewidth=2, label="ground truth")
        ax.scatter(support_x[t], support_y[t], color="purple", marker="^", zorder=3,
                   label=f"{support_x.shape[1]} points used for gradient")
        for i, (label, fit) in enumerate(fits.items()):
            ax.plot(grid, fit[t], styles[i % len(styles)], label=label)
        ax.set_xlabel("x")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return _save(fig, path)


def plot_adaptation_curves(path: Path, curves: Mapping[str, Sequence[Estimate]], ylabel: str,
                           title: str = "") -> Path:
    """The paper's Figure 3: a metric (mean ± 95% CI) vs number of adaptation steps."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for label, estimates in curves.items():
        steps = list(range(len(estimates)))
        means = [e.mean for e in estimates]
        ci = [e.ci95 for e in estimates]
        ax.errorbar(steps, means, yerr=ci, marker="o", markersize=3, capsize=2, label=label)
    ax.set_xlabel("number of gradient steps")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def plot_learning_curve(path: Path, metrics_csv: Path, metric: str = "val_accuracy") -> Path:
    """Validation metric vs meta-iteration and vs wall-clock seconds, from ``metrics.csv``."""
    plt = _pyplot()
    rows = [r for r in csv.DictReader(metrics_csv.open()) if r.get(metric)]
    if not rows:
        raise ValueError(f"{metrics_csv} has no {metric} values to plot (was validation on?).")
    iterations = [int(r["iteration"]) for r in rows]
    seconds = [float(r["elapsed_s"]) for r in rows]
    values = [float(r[metric]) for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    left.plot(iterations, values, marker="o", markersize=3)
    left.set_xlabel("meta-iteration")
    left.set_ylabel(metric.replace("_", " "))
    right.plot([s / 60 for s in seconds], values, marker="o", markersize=3)
    right.set_xlabel("wall-clock (minutes)")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
