"""EpisodeSampler: shapes, labels, determinism, resume, prefetch, ragged classes, bad input."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from mamlkit import TaskBatch
from mamlkit.datasets import EpisodeSampler


def labelled_data(classes: int = 12, per_class: int = 10, size: int = 4) -> torch.Tensor:
    """uint8 data whose every pixel of example e of class c equals c * per_class + e (< 256)."""
    values = torch.arange(classes * per_class, dtype=torch.uint8).reshape(classes, per_class)
    return values[:, :, None, None].expand(classes, per_class, size, size).contiguous()


def test_shapes_dtypes_and_scaling():
    sampler = EpisodeSampler(labelled_data(), ways=5, shots=2, queries=3, seed=0)
    batch = sampler.sample(7)
    assert isinstance(batch, TaskBatch)
    assert batch.support_x.shape == (7, 10, 4, 4) and batch.query_x.shape == (7, 15, 4, 4)
    assert batch.support_y.shape == (7, 10) and batch.query_y.shape == (7, 15)
    assert batch.support_x.dtype == torch.float32 and batch.support_y.dtype == torch.int64
    assert batch.support_x.max() <= 1.0 and batch.support_x.min() >= 0.0
    assert batch.info["classes"].shape == (7, 5)


def test_labels_balanced_and_match_the_classes():
    data = labelled_data(classes=12, per_class=10)
    sampler = EpisodeSampler(data, ways=4, shots=3, queries=5, seed=3)
    batch = sampler.sample(20)
    for t in range(20):
        assert torch.bincount(batch.support_y[t], minlength=4).tolist() == [3] * 4
        assert torch.bincount(batch.query_y[t], minlength=4).tolist() == [5] * 4
        classes = batch.info["classes"][t]
        assert len(set(classes.tolist())) == 4
        pairs = ((batch.support_x[t], batch.support_y[t]), (batch.query_x[t], batch.query_y[t]))
        for x, y in pairs:
            raw = torch.round(x[:, 0, 0] * 255).long()
            # each example's value encodes its class: value // per_class must be the labelled class
            assert torch.equal(raw // 10, classes[y])
        # support and query examples of one class are distinct (drawn without replacement)
        raw_all = torch.round(torch.cat([batch.support_x[t], batch.query_x[t]])[:, 0, 0] * 255)
        assert raw_all.unique().numel() == raw_all.numel()


def test_classes_appear_in_random_order():
    sampler = EpisodeSampler(labelled_data(classes=12), ways=5, shots=1, queries=1, seed=0)
    classes = sampler.sample(200).info["classes"]
    # label 0 is not always the smallest class index: the order is random
    assert (classes[:, 0] == classes.min(dim=1).values).float().mean() < 0.5
    # every class gets used
    assert set(classes.flatten().tolist()) == set(range(12))


def test_same_seed_same_episodes_and_different_seed_differs():
    data = labelled_data()
    a = EpisodeSampler(data, 5, 1, 2, seed=11).sample(8)
    b = EpisodeSampler(data, 5, 1, 2, seed=11).sample(8)
    c = EpisodeSampler(data, 5, 1, 2, seed=12).sample(8)
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
    assert not torch.equal(a.query_x, c.query_x)


def test_state_dict_resumes_exactly():
    sampler = EpisodeSampler(labelled_data(), 5, 2, 3, seed=0)
    sampler.sample(4)
    state = sampler.state_dict()
    expected = [sampler.sample(4) for _ in range(3)]
    resumed = EpisodeSampler(labelled_data(), 5, 2, 3, seed=999)
    resumed.load_state_dict(state)
    for want in expected:
        got = resumed.sample(4)
        assert torch.equal(got.support_x, want.support_x) and torch.equal(got.query_x, want.query_x)


def test_fixed_episodes_are_fixed_and_leave_the_sampler_state_alone():
    sampler = EpisodeSampler(labelled_data(), 5, 1, 3, seed=0)
    state = sampler.state_dict()["generator"].clone()
    test_a = sampler.fixed_episodes(50, seed=7, meta_batch_size=16)
    test_b = EpisodeSampler(labelled_data(), 5, 1, 3, seed=42).fixed_episodes(50, seed=7,
                                                                            meta_batch_size=50)
    assert torch.equal(sampler.state_dict()["generator"], state)
    assert len(test_a) == 4 and test_a.num_episodes == 50
    chunks = list(test_a)
    assert [c.num_tasks for c in chunks] == [16, 16, 16, 2]
    whole = test_b.all()
    assert torch.equal(torch.cat([c.query_x for c in chunks]), whole.query_x)
    assert torch.equal(torch.cat([c.support_x for c in test_a]), whole.support_x)  # re-iterable
    other = sampler.fixed_episodes(50, seed=8).all()
    assert not torch.equal(other.query_x, whole.query_x)


def test_stream_yields_the_same_batches_as_sample_and_resumes():
    data = labelled_data()
    plain = EpisodeSampler(data, 5, 1, 2, seed=5)
    expected = [plain.sample(6) for _ in range(6)]
    sampler = EpisodeSampler(data, 5, 1, 2, seed=5)
    with sampler.stream(6, prefetch=3) as stream:
        got = [next(stream) for _ in range(3)]
        state = sampler.state_dict()  # the thread is ahead, but the state is that of batch 3
    for g, e in zip(got, expected):
        assert torch.equal(g.query_x, e.query_x)
    resumed = EpisodeSampler(data, 5, 1, 2, seed=0)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.sample(6).query_x, expected[3].query_x)
    assert torch.equal(sampler.sample(6).query_x, expected[3].query_x)
    finite = list(EpisodeSampler(data, 5, 1, 2, seed=5).stream(6, num_batches=2))
    assert len(finite) == 2 and torch.equal(finite[1].support_x, expected[1].support_x)


def test_stream_surfaces_errors_from_the_transform():
    def broken(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("transform failed")

    sampler = EpisodeSampler(labelled_data(), 5, 1, 1, transform=broken)
    with pytest.raises(RuntimeError, match="transform failed"):
        next(iter(sampler.stream(2)))


def test_transform_applies_to_whole_batches():
    sampler = EpisodeSampler(labelled_data(), 3, 1, 1, transform=lambda x: x * 0 + 0.5)
    batch = sampler.sample(2)
    assert torch.all(batch.support_x == 0.5) and torch.all(batch.query_x == 0.5)


def test_ragged_classes_and_numpy_input():
    rng = np.random.default_rng(0)
    sizes = [5, 9, 30, 6, 7]
    classes = [np.full((n, 3), c, dtype=np.float32) + rng.random((n, 3), dtype=np.float32) * 0.1
               for c, n in enumerate(sizes)]
    sampler = EpisodeSampler(classes, ways=3, shots=2, queries=3, seed=1)
    batch = sampler.sample(300)
    assert batch.support_x.dtype == torch.float32
    chosen = batch.info["classes"]
    assert torch.equal(batch.query_x[..., 0].floor().long(), torch.gather(chosen, 1, batch.query_y))
    # rows drawn for the 5-example class are exactly its own rows: none past its end
    original = torch.from_numpy(classes[0])
    drawn = torch.cat([batch.support_x[torch.gather(chosen, 1, batch.support_y) == 0],
                       batch.query_x[torch.gather(chosen, 1, batch.query_y) == 0]])
    matches = (drawn[:, None, :] == original[None, :, :]).all(-1)
    assert matches.any(1).all() and matches.any(0).all()
    dense = EpisodeSampler(np.zeros((4, 6, 2), dtype=np.uint8), 2, 1, 1).sample(3)
    assert dense.support_x.shape == (3, 2, 2)


def test_read_only_memory_map_input(tmp_path):
    path = tmp_path / "data.npy"
    np.save(path, labelled_data().numpy())
    mapped = np.load(path, mmap_mode="r")
    batch = EpisodeSampler(mapped, 5, 1, 1).sample(2)
    assert batch.support_x.shape == (2, 5, 4, 4)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"ways": 13, "shots": 1, "queries": 1}, ValueError, "only 12 classes"),
        ({"ways": 5, "shots": 6, "queries": 5}, ValueError, "shots \\+ queries <= 10"),
        ({"ways": 0, "shots": 1, "queries": 1}, ValueError, "ways >= 1"),
        ({"ways": 5, "shots": 0, "queries": 1}, ValueError, "shots >= 1"),
        ({"ways": 5, "shots": 1, "queries": 0}, ValueError, "queries >= 1"),
        ({"ways": 5.0, "shots": 1, "queries": 1}, TypeError, "ways must be an int"),
    ],
)
def test_bad_episode_settings(kwargs, error, message):
    with pytest.raises(error, match=message):
        EpisodeSampler(labelled_data(classes=12, per_class=10), **kwargs)


def test_bad_data_and_arguments():
    with pytest.raises(ValueError, match="expected \\[classes, examples_per_class"):
        EpisodeSampler(torch.zeros(10, dtype=torch.uint8), 2, 1, 1)
    with pytest.raises(TypeError, match="uint8 images"):
        EpisodeSampler(torch.zeros(4, 4, 2, dtype=torch.bool), 2, 1, 1)
    with pytest.raises(ValueError, match="classes \\[1\\] have no examples"):
        EpisodeSampler([torch.zeros(3, 2), torch.zeros(0, 2)], 1, 1, 1)
    with pytest.raises(ValueError, match="same example shape"):
        EpisodeSampler([torch.zeros(3, 2), torch.zeros(3, 4)], 1, 1, 1)
    with pytest.raises(ValueError, match="the smallest has 2"):
        EpisodeSampler([torch.zeros(3, 2), torch.zeros(2, 2)], 2, 1, 2)
    with pytest.raises(ValueError, match="keep it on the CPU"):
        EpisodeSampler(torch.zeros(4, 4, 2, device="meta"), 2, 1, 1)
    with pytest.raises(TypeError, match="torch.Tensor or numpy.ndarray"):
        EpisodeSampler([[1.0, 2.0], [3.0, 4.0]], 1, 1, 1)
    sampler = EpisodeSampler(labelled_data(), 2, 1, 1)
    with pytest.raises(ValueError, match="num_tasks must be a positive int"):
        sampler.sample(0)
    with pytest.raises(KeyError, match="EpisodeSampler.state_dict"):
        sampler.load_state_dict({})
    with pytest.raises(ValueError, match="prefetch must be >= 1"):
        sampler.stream(4, prefetch=0)


def test_closing_or_dropping_an_endless_stream_stops_its_thread():
    sampler = EpisodeSampler(labelled_data(), 5, 1, 2, seed=0)
    stream = sampler.stream(4, prefetch=1)
    next(stream)
    stream.close()
    with pytest.raises(StopIteration):
        next(stream)
    dropped = sampler.stream(4, prefetch=1)
    next(dropped)
    thread = dropped._thread
    del dropped
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()
