"""Support corruption: seeded, identical across methods, never on queries, the requested fraction."""

from __future__ import annotations

import pytest
import torch

from mamlkit import TaskBatch
from mamlkit.noise import (
    NoisySupportSampler,
    SupportNoise,
    corrupt_support,
    corrupted_count,
    parse_rates,
)
from mamlkit.noise_protocol import evaluate_under_noise, noise_table


def episodes(tasks: int = 6, ways: int = 5, shots: int = 5, queries: int = 3, seed: int = 0
             ) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    support_y = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1).clone()
    query_y = torch.arange(ways).repeat_interleave(queries).expand(tasks, -1).clone()
    return TaskBatch(torch.randn(tasks, ways * shots, 4, generator=g), support_y,
                     torch.randn(tasks, ways * queries, 4, generator=g), query_y)


@pytest.mark.parametrize("kind", ["symmetric", "pair"])
@pytest.mark.parametrize("rate", [0.0, 0.2, 0.4, 1.0])
def test_label_noise_hits_the_requested_fraction_of_every_task_and_only_those(kind, rate):
    batch = episodes()
    noisy, mask = corrupt_support(batch, SupportNoise(rate, kind), seed=3, ways=5)
    assert mask.sum(1).tolist() == [round(rate * 25)] * 6
    changed = noisy.support_y != batch.support_y
    assert torch.equal(changed, mask)  # every chosen label changed, no other did
    if kind == "pair":
        assert torch.equal(noisy.support_y[mask], (batch.support_y[mask] + 1) % 5)
    assert torch.equal(noisy.query_y, batch.query_y) and torch.equal(noisy.query_x, batch.query_x)
    assert torch.equal(noisy.support_x, batch.support_x)
    assert int(noisy.support_y.min()) >= 0 and int(noisy.support_y.max()) < 5


def test_symmetric_flips_reach_every_other_class_uniformly():
    batch = episodes(tasks=400)
    noisy, mask = corrupt_support(batch, SupportNoise(0.4, "symmetric"), seed=0, ways=5)
    shift = ((noisy.support_y - batch.support_y) % 5)[mask]
    counts = torch.bincount(shift, minlength=5).float()
    assert counts[0] == 0
    assert torch.allclose(counts[1:] / counts[1:].sum(), torch.full((4,), 0.25), atol=0.03)


def test_the_corruption_is_seeded_and_a_function_of_batch_and_seed_only():
    batch = episodes()
    noise = SupportNoise(0.4, "symmetric")
    a, mask_a = corrupt_support(batch, noise, seed=11, ways=5)
    torch.manual_seed(123)  # the global generator must not matter
    b, mask_b = corrupt_support(batch, noise, seed=11, ways=5)
    c, _ = corrupt_support(batch, noise, seed=12, ways=5)
    assert torch.equal(a.support_y, b.support_y) and torch.equal(mask_a, mask_b)
    assert not torch.equal(a.support_y, c.support_y)


def test_every_method_scores_the_same_corrupted_episodes_and_clean_queries():
    seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"a": [], "b": []}

    def recorder(name):
        def score(batch):
            seen[name].append((batch.support_y.clone(), batch.query_y.clone()))
            return torch.zeros(batch.num_tasks)
        return score

    batches = [episodes(seed=s) for s in range(3)]
    result = evaluate_under_noise({"a": recorder("a"), "b": recorder("b")}, batches,
                                  [SupportNoise(0.2), SupportNoise(0.4)], seed=5, ways=5)
    assert len(seen["a"]) == 9  # 3 batches x (clean, 0.2, 0.4)
    for (ya, qa), (yb, qb) in zip(seen["a"], seen["b"]):
        assert torch.equal(ya, yb) and torch.equal(qa, qb)
    for i, (_, query_y) in enumerate(seen["a"]):
        assert torch.equal(query_y, batches[i // 3].query_y)
    flipped = [int((y != batches[i // 3].support_y).sum()) for i, (y, _) in enumerate(seen["a"])]
    assert flipped == [0, 5 * 6, 10 * 6] * 3  # 6 tasks of 25 support examples
    table = noise_table(result)
    assert "drop at 0.4" in table and table.count("\n") == 3


def test_paired_drop_is_the_mean_per_episode_difference():
    def score(batch):  # accuracy = fraction of clean support labels (a stand-in method)
        return (batch.support_y == torch.arange(5).repeat_interleave(5)).float().mean(1)

    result = evaluate_under_noise({"m": score}, [episodes()], [SupportNoise(0.4)], ways=5)
    assert result.drop("m", SupportNoise(0.4)).mean == pytest.approx(0.4)
    assert result.estimate("m", result.clean).mean == 1.0


@pytest.mark.parametrize("kind", ["gaussian", "outliers"])
def test_regression_noise_changes_only_the_chosen_targets(kind):
    g = torch.Generator().manual_seed(0)
    batch = TaskBatch(torch.randn(4, 10, 1, generator=g), torch.randn(4, 10, 1, generator=g),
                      torch.randn(4, 5, 1, generator=g), torch.randn(4, 5, 1, generator=g))
    noisy, mask = corrupt_support(batch, SupportNoise(0.2, kind, scale=5.0), seed=1)
    assert mask.sum(1).tolist() == [2] * 4
    changed = (noisy.support_y != batch.support_y).squeeze(-1)
    assert torch.equal(changed, mask)
    if kind == "outliers":
        assert float(noisy.support_y[mask].abs().max()) <= 5.0
    assert torch.equal(noisy.query_y, batch.query_y)


def test_wrong_kind_for_the_targets_and_bad_rates_are_refused():
    with pytest.raises(ValueError, match="needs float regression targets"):
        corrupt_support(episodes(), SupportNoise(0.2, "gaussian"), seed=0)
    with pytest.raises(ValueError, match="fraction in"):
        SupportNoise(1.5)
    with pytest.raises(ValueError, match="Unknown support noise kind"):
        SupportNoise(0.2, "flip")
    with pytest.raises(ValueError, match="comma-separated"):
        parse_rates("0.2;0.4")
    assert parse_rates("0.2,0.4") == [0.2, 0.4]
    assert corrupted_count(5, 0.5) == 3 and corrupted_count(25, 0.2) == 5


class _Counter:
    """A sampler whose batches depend on its state (for the resume test)."""

    def __init__(self) -> None:
        self.drawn = 0

    def sample(self, num_tasks: int) -> TaskBatch:
        self.drawn += 1
        return episodes(tasks=num_tasks, seed=self.drawn)

    def state_dict(self):
        return {"drawn": self.drawn}

    def load_state_dict(self, state):
        self.drawn = state["drawn"]


def test_noise_aware_sampler_resumes_exactly_and_keeps_queries_clean():
    noise = SupportNoise(0.4, "symmetric")
    run = NoisySupportSampler(_Counter(), noise, seed=2, ways=5)
    first = [run.sample(3) for _ in range(2)]
    state = run.state_dict()
    expected = [run.sample(3) for _ in range(3)]
    resumed = NoisySupportSampler(_Counter(), noise, seed=2, ways=5)
    resumed.load_state_dict(state)
    for a, b in zip(expected, [resumed.sample(3) for _ in range(3)]):
        assert torch.equal(a.support_y, b.support_y) and torch.equal(a.query_y, b.query_y)
    clean = episodes(tasks=3, seed=1)
    assert torch.equal(first[0].query_y, clean.query_y)
    assert (first[0].support_y != clean.support_y).float().mean() == pytest.approx(0.4)


def test_reported_methods_score_adapted_learners_and_prototypes_on_the_network_features():
    import mamlkit
    from mamlkit.noise_protocol import adapted_score, prototype_score

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 5))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(4))
        model[0].bias.zero_()
    learner = mamlkit.MAML(model, inner_lr=0.3, loss="cross_entropy")
    centers = 10 * torch.eye(5, 4)
    y = torch.arange(5).repeat_interleave(3)
    batch = TaskBatch((centers[y] + 0.1 * torch.randn(15, 4)).unsqueeze(0), y.unsqueeze(0),
                      (centers[y] + 0.1 * torch.randn(15, 4)).unsqueeze(0), y.unsqueeze(0))
    assert prototype_score(learner, 5)(batch).tolist() == [1.0]  # features = inputs here
    flipped = TaskBatch(batch.support_x, (batch.support_y + 1) % 5, batch.query_x, batch.query_y)
    assert prototype_score(learner, 5)(flipped).tolist() == [0.0]
    expected = learner.adaptation_curve(batch, 4)["query_accuracy"][-1]
    assert torch.equal(adapted_score(learner, 4)(batch), expected)
