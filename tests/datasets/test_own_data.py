"""Your own data through the library: image folders (real digits written as PNGs), any torch or
Hugging Face dataset, DataLoader episodes (worker seeding, resume), class splits, evaluation of
chosen step counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from image_trees import write_digits
from PIL import Image
from torch.utils.data import Dataset, TensorDataset

from mamlkit import MAML, ConvNet, TaskBatch, evaluate_episodes
from mamlkit.datasets import (
    DatasetClasses,
    EpisodeLoader,
    EpisodeSampler,
    HFClasses,
    ImageFolder,
    ImageOptions,
    collate_tasks,
    preprocess_image,
    split_classes,
)


@pytest.fixture(scope="module")
def digits_tree(tmp_path_factory: pytest.TempPathFactory):
    return write_digits(tmp_path_factory.mktemp("digits"), per_class=30)


def test_folder_images_are_decoded_lazily_through_a_content_cache(digits_tree, tmp_path) -> None:
    folder = ImageFolder(digits_tree, ImageOptions(size=16), cache_dir=tmp_path / "cache")
    assert folder.summary.classes == 10 and folder.summary.images == 300
    examples = folder.examples()
    assert not list((tmp_path / "cache").glob("??/*.u8"))  # nothing decoded by the scan
    sampler = EpisodeSampler(examples, ways=5, shots=1, queries=2, seed=0)
    batch = sampler.sample(3)
    assert batch.support_x.shape == (3, 5, 1, 16, 16) and batch.query_x.shape == (3, 10, 1, 16, 16)
    assert len(list((tmp_path / "cache").glob("??/*.u8"))) <= 3 * 5 * 3
    # each image equals an independent decode of its file; a label names its class folder
    classes = batch.info["classes"][0]
    path = folder.classes[folder.class_names[int(classes[0])]]
    decoded = [np.asarray(Image.open(p).convert("L").resize((16, 16), Image.Resampling.LANCZOS))
               for p, _ in path]
    assert any(np.allclose(batch.support_x[0, 0, 0].numpy() * 255, d, atol=1e-3) for d in decoded)


def test_bad_files_are_named_skipped_or_ignored(digits_tree, tmp_path) -> None:
    root = write_digits(tmp_path / "tree", per_class=5, classes=range(3))
    (root / "digit0" / "notes.txt").write_text("not an image")
    (root / "digit1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    Image.new("RGBA", (20, 12), (255, 0, 0, 128)).save(root / "digit2" / "colour.png")
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.png.*--on-bad-image skip"):
        ImageFolder(root, cache_dir=tmp_path / "c")
    folder = ImageFolder(root, ImageOptions(size=8), cache_dir=tmp_path / "c", on_bad_image="skip")
    assert folder.summary.ignored_files == 1 and len(folder.summary.skipped_images) == 1
    assert "1 non-image files ignored" in str(folder.summary)
    assert not folder.summary.grey  # the RGBA image: channels would default to 3
    colour = folder.examples(["digit2"]).take(np.arange(6))  # mixed modes and sizes converted
    assert colour.shape == (6, 1, 8, 8) and colour.dtype == np.uint8
    (root / "empty").mkdir()
    with pytest.raises(ValueError, match="hold no readable image.*empty"):
        ImageFolder(root, cache_dir=tmp_path / "c", on_bad_image="skip")


def test_preprocess_image_converts_modes_and_inverts() -> None:
    image = Image.new("1", (30, 20), 1)  # white 1-bit page
    grey = preprocess_image(image, ImageOptions(size=10, channels=1, invert=True))
    assert grey.shape == (1, 10, 10) and int(grey.max()) == 0  # white -> 0 once inverted
    rgb = preprocess_image(Image.new("L", (5, 5), 100), ImageOptions(size=4, channels=3))
    assert rgb.shape == (3, 4, 4) and (rgb == 100).all()


@pytest.mark.parametrize("spec,sizes", [("0.6,0.2,0.2", (6, 2, 2)), ("5,0,5", (5, 0, 5)),
                                        ("4,3,3", (4, 3, 3))])
def test_class_splits_are_seeded_and_disjoint(spec, sizes) -> None:
    names = [f"c{i}" for i in range(10)]
    parts = split_classes(names, spec, seed=3)
    assert tuple(len(parts[r]) for r in ("train", "val", "test")) == sizes
    assert not set(parts["train"]) & set(parts["test"])
    assert parts == split_classes(names, spec, seed=3) != split_classes(names, spec, seed=4)


def test_class_split_files_and_folders(tmp_path) -> None:
    names = ["train/a", "train/b", "val/c", "test/d"]
    assert split_classes(names, "", 0) == {"train": ["train/a", "train/b"], "val": ["val/c"],
                                           "test": ["test/d"]}
    files = []
    for role, chosen in (("train", "x\ny"), ("val", ""), ("test", "z")):
        files.append(tmp_path / f"{role}.txt")
        files[-1].write_text(chosen)
    parts = split_classes(["x", "y", "z"], ",".join(map(str, files)), 0)
    assert parts == {"train": ["x", "y"], "val": [], "test": ["z"]}
    with pytest.raises(ValueError, match="fractions must sum to 1"):
        split_classes(["x", "y", "z"], "0.5,0.2,0.2", 0)


class _CountingDataset(Dataset):
    """A map-style dataset that counts how often each example is read."""

    def __init__(self, n: int, classes: int) -> None:
        self.x = torch.arange(n, dtype=torch.float32).view(n, 1).expand(n, 3).contiguous()
        self.targets = [i % classes for i in range(n)]
        self.reads = 0

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        self.reads += 1
        return self.x[i], self.targets[i]


def test_any_torch_dataset_without_loading_every_example() -> None:
    data = _CountingDataset(1000, classes=20)
    examples = DatasetClasses(data)  # labels from .targets: no example is read to group them
    assert data.reads == 0
    batch = EpisodeSampler(examples, ways=5, shots=2, queries=3, seed=0).sample(2)
    assert data.reads == 1 + 2 * 5 * 5  # one probe of the example shape, then the episodes
    for task in range(2):  # every example sits in its class: value % 20 == original class
        classes = batch.info["classes"][task].repeat_interleave(2)
        assert torch.equal(batch.support_x[task, :, 0].long() % 20, classes)
    by_pass = DatasetClasses(TensorDataset(torch.randn(40, 2), torch.arange(40) % 4))
    assert by_pass.counts.tolist() == [10, 10, 10, 10]
    by_function = DatasetClasses(data, labels=lambda i: data.targets[i] // 10)
    assert by_function.counts.tolist() == [500, 500]


def test_hugging_face_dataset_labels_come_from_the_column() -> None:
    datasets = pytest.importorskip("datasets")
    rows = {"image": [np.full((1, 4, 4), i, dtype=np.float32) for i in range(30)],
            "label": [i % 3 for i in range(30)]}
    hf = datasets.Dataset.from_dict(rows).with_format("numpy")
    examples = HFClasses(hf)
    assert examples.counts.tolist() == [10, 10, 10]
    batch = EpisodeSampler(examples, ways=3, shots=1, queries=1, seed=1).sample(4)
    values = batch.query_x[:, :, 0, 0, 0].long()
    assert torch.equal(values % 3, batch.info["classes"])


def _augmented() -> EpisodeSampler:
    data = TensorDataset(torch.rand(120, 1, 6, 6), torch.arange(120) % 12)
    noisy = DatasetClasses(data, transform=lambda x: x + 0.1 * torch.randn_like(x))
    return EpisodeSampler(noisy, ways=4, shots=1, queries=2)


def test_workers_give_the_stream_of_zero_workers_and_resume_exactly() -> None:
    sampler = _augmented()
    reference = EpisodeLoader(sampler, 3, num_workers=0, seed=7)
    stream = [reference.sample(3) for _ in range(4)]
    workers = EpisodeLoader(sampler, 3, num_workers=2, seed=7)
    for expected in stream[:2]:
        got = workers.sample(3)
        assert torch.equal(got.support_x, expected.support_x)  # augmentation included
        assert torch.equal(got.info["classes"], expected.info["classes"])
    state = workers.state_dict()
    resumed = EpisodeLoader(sampler, 3, num_workers=2, seed=7)
    resumed.load_state_dict(state)
    for expected in stream[2:]:
        assert torch.equal(resumed.sample(3).query_x, expected.query_x)
    other = EpisodeLoader(sampler, 3, num_workers=0, seed=8).sample(3)
    assert not torch.equal(other.support_x, stream[0].support_x)


def test_collate_tasks_concatenates_task_batches() -> None:
    parts = [TaskBatch(torch.randn(1, 2, 3), torch.zeros(1, 2, dtype=torch.long),
                       torch.randn(1, 4, 3), torch.ones(1, 4, dtype=torch.long),
                       info={"classes": torch.tensor([[i, i + 1]])}) for i in range(3)]
    batch = collate_tasks(parts)
    assert batch.num_tasks == 3 and torch.equal(batch.support_x[1], parts[1].support_x[0])
    assert batch.info["classes"].tolist() == [[0, 1], [1, 2], [2, 3]]
    with pytest.raises(TypeError, match="TaskBatch items"):
        collate_tasks([torch.zeros(1)])


def test_evaluate_episodes_scores_only_the_requested_steps() -> None:
    torch.manual_seed(0)
    learner = MAML(ConvNet(1, 3, hidden=4, image_size=8, blocks=2), inner_lr=0.3, loss="cross_entropy",
                   batching="loop")
    batch = TaskBatch(torch.rand(4, 3, 1, 8, 8), torch.arange(3).repeat(4, 1),
                      torch.rand(4, 6, 1, 8, 8), torch.arange(3).repeat_interleave(2).repeat(4, 1))
    calls = {"n": 0}
    original = learner.task_loss

    def counting(params, x, y):
        calls["n"] += 1
        return original(params, x, y)

    learner.task_loss = counting
    full = learner.adaptation_curve(batch, 6)["query_accuracy"]
    every_step = calls["n"]
    calls["n"] = 0
    result = evaluate_episodes(learner, batch, steps=[6, 2])
    assert calls["n"] < every_step  # 6 support + 2 query losses per task, not 6 + 7
    assert calls["n"] == 4 * (6 + 2) and every_step == 4 * (6 + 7)
    for step in (2, 6):
        assert result[step]["query_accuracy"].mean == pytest.approx(float(full[step].mean()))
        assert result[step]["query_accuracy"].n == 4


def test_episode_loader_follows_the_batch_size_asked_for() -> None:
    sampler = _augmented()
    five = EpisodeLoader(sampler, 5, seed=3).sample(5)
    split = EpisodeLoader(sampler, 3, seed=3)
    parts = collate_tasks([split.sample(3), split.sample(2)])  # e.g. a rank's share
    assert torch.equal(parts.query_x, five.query_x) and split.state_dict()["consumed"] == 5
