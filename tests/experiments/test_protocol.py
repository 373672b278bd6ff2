"""The shared evaluation protocol: curves over adaptation steps, the fine-tuning rate choice and
the results files, checked against hand-written computations."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mamlkit.algorithms import MAML
from mamlkit.experiments import protocol
from mamlkit.tasks.regression import Sinusoid


def test_curves_match_a_plain_per_task_adapt_loop_over_one_or_many_batches():
    torch.manual_seed(0)
    learner = MAML(nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)), inner_lr=0.05)
    batch = Sinusoid(shots=5, queries=7, seed=3).fixed_tasks(6, 11)
    whole = protocol.curves(learner, batch, 3)["query_loss"]
    parts = protocol.curves(learner, [batch.slice(slice(0, 2)), batch.slice(slice(2, 6))],
                            3)["query_loss"]
    assert whole.shape == (4, 6)
    torch.testing.assert_close(parts, whole)
    expected = torch.empty(4, 6)
    for t in range(6):  # independent: plain SGD on one task's support set with autograd.grad
        params = [p.detach().clone().requires_grad_() for p in learner.model.parameters()]
        model = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1))
        for step in range(4):
            with torch.no_grad():
                for target, value in zip(model.parameters(), params):
                    target.copy_(value)
                expected[step, t] = nn.functional.mse_loss(model(batch.query_x[t]),
                                                          batch.query_y[t])
            loss = nn.functional.mse_loss(torch.func.functional_call(
                model, dict(zip([n for n, _ in model.named_parameters()], params)),
                (batch.support_x[t],)), batch.support_y[t])
            grads = torch.autograd.grad(loss, params)
            params = [(p - 0.05 * g).detach().requires_grad_() for p, g in zip(params, grads)]
    torch.testing.assert_close(whole, expected, rtol=1e-5, atol=1e-6)


def test_choose_rate_takes_the_best_step_of_each_rate_and_the_earlier_rate_on_a_tie():
    table = {0.1: torch.tensor([0.5, 0.7, 0.6]), 0.2: torch.tensor([0.7, 0.4, 0.7]),
             0.3: torch.tensor([0.2, 0.3, 0.1])}
    high = protocol.choose_rate((0.1, 0.2, 0.3), table.__getitem__, maximize=True)
    assert high.rate == 0.1 and high.best_step == {0.1: 1, 0.2: 0, 0.3: 1}
    assert high.scores == pytest.approx({0.1: 0.7, 0.2: 0.7, 0.3: 0.3})
    low = protocol.choose_rate((0.1, 0.2, 0.3), table.__getitem__, maximize=False)
    assert low.rate == 0.3 and low.best_step[0.3] == 2


def test_write_results_writes_json_and_table(tmp_path, capsys):
    path = protocol.write_results(tmp_path, {"a": 1}, "the table")
    assert path == tmp_path / "eval" / "results.json"
    assert json.loads(path.read_text()) == {"a": 1, "table": "the table"}
    assert (tmp_path / "eval" / "table.txt").read_text() == "the table\n"
    other = protocol.write_results(tmp_path, {}, "t2", "cross")
    assert other.name == "cross.json" and (tmp_path / "eval" / "cross.txt").is_file()
    assert capsys.readouterr().out == "the table\nt2\n"


def test_every_domain_documents_its_baselines_in_the_train_help(capsys):
    from mamlkit.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for domain in ("regression (sinusoid, linear)", "vision (omniglot", "text (banking77"):
        assert domain in text
    assert "pretrained" in text and "random init" in text and "prototypes" in text
