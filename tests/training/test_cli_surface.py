"""What the command line shows: ``mamlkit list`` in whole plain sentences, counts in the singular
where they are one, the example's ``--help``, and the figures' titles, labels and ticks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mamlkit.plots as plots
from mamlkit.cli import first_sentence, main
from mamlkit.evaluate import Estimate
from mamlkit.wording import count

REPO = Path(__file__).resolve().parents[2]


def test_list_prints_whole_first_sentences_without_markup(capsys) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "``" not in out and ":class:" not in out
    entries = " ".join(out.split())  # wrapped lines joined
    assert "the meta-gradient ignores the second-order term, i.e. it is the query-loss gradient " \
           "at the adapted parameters." in entries
    assert "minimise the loss of theta itself on the union of each task's support and query " \
           "sets; fine-tune at test time." in entries
    assert all(len(line) <= 100 for line in out.splitlines())


def test_first_sentence_stops_at_the_end_of_a_sentence_not_an_abbreviation() -> None:
    doc = """Reptile (Nichol et al., 2018) with ``k`` steps, e.g. five.

    More detail that is not shown."""
    assert first_sentence(doc) == "Reptile (Nichol et al., 2018) with k steps, e.g. five."
    assert first_sentence("See :class:`~mamlkit.MAML` and `x`.\nSecond.") == "See mamlkit.MAML and x."


def test_counts_are_singular_for_one() -> None:
    assert [count(n, "step") for n in (0, 1, 2)] == ["0 steps", "1 step", "2 steps"]
    assert count(1, "query") == "1 query" and count(15, "query") == "15 queries"


def test_example_help_prints_usage_and_does_not_train() -> None:
    result = subprocess.run([sys.executable, str(REPO / "examples" / "linear_regression.py"),
                             "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "--iterations" in result.stdout and "MSE on the new line" not in result.stdout


@pytest.fixture
def figures(monkeypatch) -> list:
    """The figures the plotting functions make, kept open instead of saved."""
    made = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: made.append(fig) or path)
    yield made
    import matplotlib.pyplot as plt

    for fig in made:
        plt.close(fig)


def test_accuracy_curve_has_integer_step_ticks_and_percent(figures) -> None:
    curves = {"MAML": [Estimate(0.2, 0.01, 10), Estimate(0.9, 0.02, 10)]}
    plots.plot_adaptation_curves(Path("a.png"), curves, "query accuracy", "t", percent=True)
    ax = figures[0].axes[0]
    ticks = [t for t in ax.get_xticks() if 0 <= t <= 1]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert ax.get_ylabel() == "query accuracy (%)"
    assert list(ax.lines[0].get_ydata()) == pytest.approx([20.0, 90.0])


def test_regression_fits_put_each_model_in_its_own_row_with_titles(figures) -> None:
    grid = torch.linspace(-5, 5, 20)
    curve = torch.zeros(2, 20)
    fits = {m: {"pre-update": curve, "after 1 grad step": curve} for m in ("MAML", "pretrained")}
    plots.plot_regression_fits(Path("f.png"), grid, curve, torch.zeros(2, 5), torch.zeros(2, 5),
                               fits, title="sinusoid")
    axes = figures[0].axes
    assert [ax.get_title() for ax in axes] == [
        "MAML, task 1 (K=5)", "MAML, task 2 (K=5)", "pretrained, task 1 (K=5)",
        "pretrained, task 2 (K=5)"]
    assert axes[0].get_ylabel() == "y" and axes[2].get_ylabel() == "y"
    labels = [line.get_label() for line in axes[0].lines]
    assert labels == ["ground truth", "pre-update", "after 1 grad step"]


def test_learning_curve_shows_training_and_validation_with_a_title(figures, tmp_path) -> None:
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text("iteration,elapsed_s,loss,query_accuracy,val_accuracy\n"
                        "10,1.0,1.2,0.5,\n20,2.0,1.0,0.6,0.55\n30,3.0,0.9,0.7,\n40,4.0,0.8,0.8,0.7\n")
    plots.plot_learning_curve(tmp_path / "c.png", csv_path, title="omniglot")
    left = figures[0].axes[0]
    assert [line.get_label() for line in left.lines] == ["training (meta-batch)", "validation"]
    assert list(left.lines[1].get_ydata()) == pytest.approx([55.0, 70.0])
    assert figures[0]._suptitle.get_text() == "omniglot"
