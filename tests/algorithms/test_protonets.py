"""Prototypical Networks: mean support embeddings, logits = -squared distance, episodic loss."""

from __future__ import annotations

import pytest
import torch
from algorithm_checks import bn_cnn, flat_grad, image_batch, mlp
from test_proto_maml import classification_batch
from torch import nn

from mamlkit.algorithms import ProtoNets, make_algorithm
from mamlkit.algorithms.protonets import PROTOTYPES


def plain_protonets_gradient(model: nn.Sequential, batch, embed) -> torch.Tensor:
    """The meta-gradient written out: per task, class means of the embedded support set,
    cross-entropy of the queries' negative squared distances; mean over tasks."""
    total = 0
    for t in range(batch.num_tasks):
        sy = batch.support_y[t]
        z = embed(batch.support_x[t])
        c = torch.stack([z[sy == k].mean(0) for k in range(int(sy.max()) + 1)])
        q = embed(batch.query_x[t])
        logits = -torch.stack([((q - ck) ** 2).sum(1) for ck in c], dim=1)
        total = total + nn.functional.cross_entropy(logits, batch.query_y[t])
    params = list(model.parameters())
    grads = torch.autograd.grad(total / batch.num_tasks, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten()
                      for p, g in zip(params, grads)])


@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_meta_gradient_matches_a_plain_autograd_loop(batching: str) -> None:
    model, batch = mlp(outputs=3), classification_batch()
    learner = ProtoNets(model, batching=batching, inner_steps=3)
    expected = plain_protonets_gradient(model, batch, lambda x: torch.tanh(model[0](x)))
    got = flat_grad(learner, batch)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert got[:24].abs().sum() > 0 and got[24:].abs().sum() == 0  # the classifier is unused


def test_the_output_can_be_the_embedding() -> None:
    model, batch = mlp(outputs=4), classification_batch()
    with pytest.raises(ValueError, match="pass ways=<int>"):
        ProtoNets(model, embedding="output")
    learner = ProtoNets(model, embedding="output", ways=3)
    torch.testing.assert_close(flat_grad(learner, batch),
                               plain_protonets_gradient(model, batch, model), rtol=1e-10, atol=1e-12)


def test_adapt_predict_and_a_flat_adaptation_curve() -> None:
    model, batch = bn_cnn(), image_batch()
    learner = make_algorithm("protonets", model)
    params = learner.adapt(batch.support_x[0], batch.support_y[0])
    assert params[PROTOTYPES].shape == (3, 12)
    logits = learner.predict(params, batch.query_x[0])
    assert logits.shape == (6, 3) and torch.all(logits <= 0)
    curve = learner.adaptation_curve(batch, steps=2)["query_accuracy"]
    assert curve.shape == (3, 2) and torch.equal(curve[0], curve[2])
    with pytest.raises(ValueError, match="learner.adapt"):
        learner.predict(dict(model.named_parameters()), batch.query_x[0])


def test_training_separates_the_classes() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 8), nn.Linear(8, 3)).double()
    learner = ProtoNets(model)
    optimizer = torch.optim.Adam(learner.parameters(), lr=0.01)

    def episodes(seed: int):
        batch = classification_batch(tasks=8, shots=5, seed=seed)
        centres = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
        perm = torch.stack([torch.randperm(3) for _ in range(8)])  # labels re-drawn per episode
        shift = lambda y: centres[torch.gather(perm, 1, y)]  # noqa: E731
        return type(batch)(batch.support_x * 0.3 + shift(batch.support_y), batch.support_y,
                           batch.query_x * 0.3 + shift(batch.query_y), batch.query_y)

    first = learner.meta_loss(episodes(0))[0].item()
    for i in range(30):
        optimizer.zero_grad()
        learner.meta_backward(episodes(i))
        optimizer.step()
    loss, metrics = learner.meta_loss(episodes(100))
    assert loss.item() < 0.5 * first and metrics["query_accuracy"] > 0.9


def test_refuses_what_does_not_apply() -> None:
    with pytest.raises(ValueError, match="for regression use maml, boil or cavia"):
        ProtoNets(mlp(outputs=3), loss="mse")
    with pytest.raises(ValueError, match="first_order does not apply"):
        ProtoNets(mlp(outputs=3), first_order=True)
    with pytest.raises(ValueError, match="embedding="):
        ProtoNets(mlp(outputs=3), embedding="logits")


def test_the_text_experiment_runs_and_reports_it(tmp_path, data_root, capsys) -> None:
    from mamlkit.cli import main

    run = tmp_path / "run"
    assert main(["train", "banking77", "--encoder", "bag", "--algo", "protonets", "--data-root",
                 str(data_root), "--run-dir", str(run), "--iterations", "2", "--meta-batch-size",
                 "2", "--val-every", "2", "--val-tasks", "2", "--test-tasks", "3",
                 "--eval-inner-steps", "1", "--queries", "2", "--max-per-class", "8",
                 "--threads", "1", "--no-tensorboard"]) == 0
    assert "protonets (1 step)" in capsys.readouterr().out
    assert (run / "protonets" / "checkpoints" / "best.pt").is_file()
