"""MAML++: every trick alone -- MSL weights, LSLR gradients, per-step BatchNorm, DA, cosine lr."""

from __future__ import annotations

import copy

import pytest
import torch
from algorithm_checks import (
    bn_cnn,
    directional_check,
    flat_grad,
    image_batch,
    meta_loss_fd,
    mlp,
    regression_batch,
)
from torch import nn

from mamlkit import MAML
from mamlkit.algorithms import MAMLPlusPlus, cosine_meta_lr, msl_weights


def _code_schedule(steps: int, epoch: int, epochs: int) -> list[float]:
    """The per-epoch formula as written in the MAML++ code (epoch / epochs = progress)."""
    weights = [1.0 / steps] * steps
    decay = 1.0 / steps / epochs
    floor = 0.03 / steps
    for i in range(steps - 1):
        weights[i] = max(weights[i] - epoch * decay, floor)
    weights[-1] = min(weights[-1] + epoch * (steps - 1) * decay, 1.0 - (steps - 1) * floor)
    return weights


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_msl_weights_sum_to_one_anneal_and_follow_the_papers_code(steps: int) -> None:
    previous = None
    for epoch in range(0, 16):
        weights = msl_weights(steps, epoch / 15)
        assert sum(weights) == pytest.approx(1.0, abs=1e-12)
        assert weights == pytest.approx(_code_schedule(steps, epoch, 15), abs=1e-12)
        if previous is not None and steps > 1:
            assert weights[-1] >= previous[-1] and weights[0] <= previous[0]
        previous = weights
    assert msl_weights(steps, 0.0) == pytest.approx([1.0 / steps] * steps)
    with pytest.raises(ValueError, match="at least one inner step"):
        msl_weights(0, 0.5)
    if steps > 1:
        assert msl_weights(steps, 1.0)[0] == pytest.approx(0.03 / steps)
        assert msl_weights(steps, 0.5)[-1] > msl_weights(steps, 0.1)[-1]


def test_msl_applies_while_annealing_in_training_only() -> None:
    learner = MAMLPlusPlus(mlp(), inner_steps=3, msl_iterations=10)
    assert learner.current_msl_weights() == pytest.approx([1 / 3] * 3)
    learner.set_iteration(5)
    assert learner.current_msl_weights() == pytest.approx(msl_weights(3, 0.5))
    learner.set_iteration(10)
    assert learner.current_msl_weights() is None
    learner.set_iteration(0)
    learner.eval()
    assert learner.current_msl_weights() is None
    with pytest.raises(ValueError, match="iteration must be"):
        learner.set_iteration(-1)


def test_msl_loss_is_the_weighted_sum_of_per_step_query_losses() -> None:
    model = mlp()
    batch = regression_batch()
    learner = MAMLPlusPlus(model, inner_lr=0.1, inner_steps=3, learn_inner_lrs=False, msl_iterations=4)
    learner.set_iteration(1)
    weights = msl_weights(3, 0.25)
    expected = sum(w * MAML(model, inner_lr=0.1, inner_steps=k).meta_loss(batch)[0]
                   for k, w in zip(range(1, 4), weights))
    torch.testing.assert_close(learner.meta_loss(batch)[0], expected, rtol=1e-12, atol=1e-14)
    learner.set_iteration(4)  # annealing over: final step only
    torch.testing.assert_close(learner.meta_loss(batch)[0],
                               MAML(model, inner_lr=0.1, inner_steps=3).meta_loss(batch)[0])


@pytest.mark.parametrize("msl", [False, True])
def test_lslr_gradients_match_finite_differences(msl: bool) -> None:
    learner = MAMLPlusPlus(mlp(), inner_lr=0.1, inner_steps=3, multi_step_loss=msl, msl_iterations=10)
    learner.set_iteration(3)
    with torch.no_grad():  # different rate per step and per parameter
        for p in learner.inner_lr_params.values():
            p.copy_(torch.tensor([0.05, 0.1, 0.15], dtype=torch.float64))
        learner.inner_lr_params["2__bias"].mul_(2)
    assert tuple(learner.inner_lr_params["0__weight"].shape) == (3,)
    batch = regression_batch()
    torch.testing.assert_close(flat_grad(learner, batch), meta_loss_fd(learner, batch), rtol=1e-6, atol=1e-8)


def test_lslr_rates_are_per_step() -> None:
    learner = MAMLPlusPlus(mlp(), inner_lr=0.1, inner_steps=2, multi_step_loss=False)
    with torch.no_grad():
        for p in learner.inner_lr_params.values():
            p.copy_(torch.tensor([0.1, 0.0], dtype=torch.float64))
    batch = regression_batch()
    one = learner.adapt(batch.support_x[0], batch.support_y[0], steps=1)
    two = learner.adapt(batch.support_x[0], batch.support_y[0], steps=2)
    assert all(torch.equal(one[n], two[n]) for n in one)  # the second step's rate is zero
    three = learner.adapt(batch.support_x[0], batch.support_y[0], steps=3)
    assert all(torch.equal(one[n], three[n]) for n in one)  # beyond training: the last rate again


def test_derivative_order_annealing_switches_from_first_to_second_order() -> None:
    model = mlp()
    batch = regression_batch()
    kwargs = dict(inner_lr=0.1, inner_steps=2, multi_step_loss=False, learn_inner_lrs=False)
    first = flat_grad(MAMLPlusPlus(model, first_order=True, **kwargs), batch)
    second = flat_grad(MAMLPlusPlus(model, **kwargs), batch)
    annealed = MAMLPlusPlus(model, first_order_iterations=5, **kwargs)
    annealed.set_iteration(4)
    assert annealed.uses_first_order()
    torch.testing.assert_close(flat_grad(annealed, batch), first)
    annealed.set_iteration(5)
    assert not annealed.uses_first_order()
    torch.testing.assert_close(flat_grad(annealed, batch), second)
    assert (first - second).abs().max() > 1e-4


@pytest.mark.parametrize("batching,bnrs", [("vmap", True), ("loop", True), ("vmap", False)])
def test_all_tricks_on_batchnorm_cnn_match_finite_differences(batching: str, bnrs: bool) -> None:
    learner = MAMLPlusPlus(bn_cnn(), inner_lr=0.3, inner_steps=2, loss="cross_entropy", batching=batching,
                           msl_iterations=10, per_step_bn_stats=bnrs)
    learner.set_iteration(2)
    assert learner.per_step_bn_stats == bnrs and learner.per_step_bn_weights
    with torch.no_grad():  # distinct per-step BatchNorm weights so a wrong step index would show
        for p in learner.bn_step_params.values():
            p.add_(torch.linspace(0, 0.3, p.shape[0], dtype=p.dtype).reshape(-1, *[1] * (p.dim() - 1)))
    batch = image_batch()
    analytic, numeric = directional_check(learner, batch, directions=4)
    torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-8)
    named = dict(learner.named_parameters())
    assert named["model.1.weight"].grad is None  # replaced by the per-step weights
    assert torch.all(named["bn_step_params.1__weight"].grad.abs().sum(-1) > 0)  # every step's set used
    assert "1.weight" not in learner.adapted_names


def _stat(learner: MAMLPlusPlus, name: str) -> torch.Tensor:
    return getattr(learner.bn_step_stats, name)


def test_per_step_running_statistics_follow_each_step_and_are_used_in_eval() -> None:
    model = bn_cnn()
    learner = MAMLPlusPlus(model, inner_lr=0.3, inner_steps=2, loss="cross_entropy", multi_step_loss=False,
                           per_step_bn_weights=False, per_step_bn_stats=True)
    batch = image_batch(tasks=3)
    before = _stat(learner, "1__running_mean").clone()
    assert before.shape == (3, 3) and torch.all(before == 0)
    learner.meta_loss(batch)
    after = _stat(learner, "1__running_mean")
    # Set 0 = support forward with the meta-parameters: fold in the tasks' mean conv activations.
    with torch.no_grad():
        conv = torch.stack([model[0](batch.support_x[t]).mean(dim=(0, 2, 3)) for t in range(3)]).mean(0)
    torch.testing.assert_close(after[0], 0.9 * before[0] + 0.1 * conv)
    assert not torch.allclose(after[1], after[2]) and not torch.allclose(after[0], after[1])

    learner.eval()
    frozen = {k: v.clone() for k, v in learner.bn_step_stats.named_buffers()}
    params = learner.adapt(batch.support_x[0], batch.support_y[0], steps=2)
    out = learner.predict(params, batch.query_x[0])
    learner.meta_loss(batch)
    # Evaluation writes nothing.
    assert all(torch.equal(v, frozen[k]) for k, v in learner.bn_step_stats.named_buffers())
    beyond = learner.adapt(batch.support_x[0], batch.support_y[0], steps=4)
    assert torch.equal(beyond["1.running_mean"], _stat(learner, "1__running_mean")[2])  # last set
    reference = copy.deepcopy(model).eval()
    with torch.no_grad():
        for name, p in reference.named_parameters():
            p.copy_(params[name])
        reference[1].running_mean.copy_(_stat(learner, "1__running_mean")[2])
        reference[1].running_var.copy_(_stat(learner, "1__running_var")[2])
        torch.testing.assert_close(out, reference(batch.query_x[0]))
    assert "bn_step_stats.1__running_var" in learner.state_dict()


def test_per_step_batchnorm_options_are_checked() -> None:
    assert not MAMLPlusPlus(mlp()).per_step_bn_weights  # auto: no BatchNorm, no per-step BN
    default = MAMLPlusPlus(bn_cnn())  # BNWB on with BatchNorm; BNRS (non-transductive) only on request
    assert default.per_step_bn_weights and not default.per_step_bn_stats
    assert not list(default.bn_step_stats.buffers())
    with pytest.raises(ValueError, match="has none"):
        MAMLPlusPlus(mlp(), per_step_bn_weights=True)
    with pytest.raises(ValueError, match="track_running_stats=True"):
        MAMLPlusPlus(nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4, track_running_stats=False),
                                   nn.Linear(4, 1)), per_step_bn_stats=True)
    with pytest.raises(ValueError, match="batchnorm='transductive'"):
        MAMLPlusPlus(bn_cnn(), batchnorm="module", per_step_bn_stats=True)
    with pytest.raises(ValueError, match="no adapted parameter is left"):
        MAMLPlusPlus(bn_cnn(), adapt="1")
    with pytest.raises(ValueError, match="msl_iterations"):
        MAMLPlusPlus(mlp(), msl_iterations=-1)


def test_cosine_meta_lr_anneals_to_the_minimum() -> None:
    opt = torch.optim.Adam(MAMLPlusPlus(mlp()).parameters(), lr=1e-3)
    schedule = cosine_meta_lr(opt, total_iterations=10, min_lr=1e-5)
    lrs = []
    for _ in range(10):
        opt.step()
        schedule.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[4] == pytest.approx((1e-3 + 1e-5) / 2)
    assert lrs[-1] == pytest.approx(1e-5)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    with pytest.raises(ValueError, match="total_iterations"):
        cosine_meta_lr(opt, total_iterations=0)


@pytest.mark.parametrize("trained_steps, eval_steps", [(1, 4), (3, 2)])
def test_checkpoint_loads_into_a_learner_with_another_step_count(trained_steps: int,
                                                                 eval_steps: int) -> None:
    """Evaluation builds the learner with ``inner_steps=eval_inner_steps``: the trained per-step
    rates and BatchNorm sets load into it and it adapts exactly as the trained learner does."""
    torch.manual_seed(0)
    trained = MAMLPlusPlus(bn_cnn(), inner_lr=0.1, inner_steps=trained_steps, loss="cross_entropy")
    with torch.no_grad():  # stand-in for training: distinct per-step values
        for p in [*trained.inner_lr_params.values(), *trained.bn_step_params.values()]:
            p.add_(0.05 * torch.randn_like(p))
    evaluator = MAMLPlusPlus(copy.deepcopy(trained.model), inner_lr=0.1, inner_steps=eval_steps,
                             loss="cross_entropy")
    evaluator.load_state_dict(trained.state_dict())
    batch = image_batch()
    expected = trained.eval().adaptation_curve(batch, eval_steps)["query_loss"]
    got = evaluator.eval().adaptation_curve(batch, eval_steps)["query_loss"]
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
