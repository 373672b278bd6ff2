"""Omniglot loader on the real files: splits, rotations, cache, pixel values, and bad input."""

from __future__ import annotations

import csv
import io
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mamlkit.datasets.omniglot as omniglot_module
from mamlkit.datasets import EpisodeSampler, Omniglot, omniglot_tasks


def load(root: Path, cache: Path, split: str, **kwargs) -> Omniglot:
    return Omniglot(root, split=split, cache_dir=cache, **kwargs)


def test_first_run_decodes_within_budget_then_cache_is_reused(omniglot_root, omniglot_cache,
                                                              monkeypatch):
    start = time.perf_counter()
    background = load(omniglot_root, omniglot_cache, "background")
    evaluation = load(omniglot_root, omniglot_cache, "evaluation")
    first_run = time.perf_counter() - start
    assert first_run < 60, f"decoding 32,460 PNGs took {first_run:.1f}s"
    assert len(list(omniglot_cache.glob("*.npy"))) == 2

    def no_decoding(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(omniglot_module, "_decode_source", no_decoding)
    start = time.perf_counter()
    again = load(omniglot_root, omniglot_cache, "background")
    assert time.perf_counter() - start < 5
    assert np.array_equal(again.images, background.images)
    assert again.class_names == background.class_names
    assert len(evaluation) == 659


def test_official_split_counts(omniglot_root, omniglot_cache):
    background = load(omniglot_root, omniglot_cache, "background")
    evaluation = load(omniglot_root, omniglot_cache, "evaluation")
    assert len(background) == 964 and len(evaluation) == 659
    assert background.images.shape == (964, 20, 1, 28, 28)
    assert background.images.dtype == np.uint8
    assert len({n.split("/")[1] for n in background.class_names}) == 30
    assert len({n.split("/")[1] for n in evaluation.class_names}) == 20
    rotated = load(omniglot_root, omniglot_cache, "background", rotations=(0, 90, 180, 270))
    assert len(rotated) == 4 * 964


def test_paper_split_counts_and_disjointness(omniglot_root, omniglot_cache):
    base = {s: load(omniglot_root, omniglot_cache, s, rotations=(0,))
            for s in ("train", "val", "trainval", "test")}
    assert {s: len(d) for s, d in base.items()} == {
        "train": 1100, "val": 100, "trainval": 1200, "test": 423}
    names = {s: set(d.class_names) for s, d in base.items()}
    assert not names["train"] & names["val"]
    assert not names["train"] & names["test"] and not names["val"] & names["test"]
    assert names["train"] | names["val"] == names["trainval"]
    assert len(names["trainval"] | names["test"]) == 1623
    # both official sets contribute to every part of the shuffled split
    for split_names in names.values():
        assert {n.split("/")[0] for n in split_names} == {"images_background", "images_evaluation"}
    rotated = {s: load(omniglot_root, omniglot_cache, s) for s in ("train", "val", "test")}
    assert [len(rotated[s]) for s in ("train", "val", "test")] == [4400, 400, 1692]
    base_of = {s: {n.split("@")[0] for n in d.class_names} for s, d in rotated.items()}
    assert not base_of["train"] & base_of["val"] and not base_of["train"] & base_of["test"]
    assert not base_of["val"] & base_of["test"]
    # a different split seed gives a different assignment
    other = load(omniglot_root, omniglot_cache, "test", rotations=(0,), split_seed=2)
    assert set(other.class_names) != names["test"]


def test_rotated_classes_are_rot90_of_their_base(omniglot_root, omniglot_cache):
    data = load(omniglot_root, omniglot_cache, "val")
    n = data.num_base_classes
    assert data.rotations == (0, 90, 180, 270) and len(data) == 4 * n
    for r, angle in enumerate(data.rotations):
        block = slice(r * n, (r + 1) * n)
        assert np.all(data.class_rotation[block] == angle)
        assert np.array_equal(data.class_base[block], np.arange(n))
        expected = np.rot90(data.images[:n], angle // 90, axes=(-2, -1))
        assert np.array_equal(data.images[block], expected)
        assert data.class_names[r * n + 5].split("@")[0] == data.class_names[5]
    assert not np.array_equal(data.images[n], data.images[0])  # rotation changed the pixels


def test_pixels_match_the_npz_copy_of_the_images(omniglot_root, omniglot_cache):
    """The zip decode must put each drawing under the right character: compare with the npz."""
    npz_path = omniglot_root / "npz" / "images_evaluation.npz"
    if not npz_path.is_file():
        pytest.skip(f"{npz_path} absent")
    with open(omniglot_root / "alphabets.tsv", newline="") as handle:
        first_id = {row["alphabet"]: int(row["first_id"])
                    for row in csv.DictReader(handle, delimiter="\t")}
    reference = np.load(npz_path)["images"]  # bool, True = background, in character-id order
    data = load(omniglot_root, omniglot_cache, "evaluation")
    for c in (0, 123, 658):
        _, alphabet, character = data.class_names[c].split("/")
        char_id = first_id[alphabet] + int(character.removeprefix("character")) - 1
        for d in (0, 19):
            source = Image.fromarray(reference[char_id - 965, d]).convert("L")
            small = np.asarray(source.resize((28, 28), Image.Resampling.LANCZOS))
            assert np.array_equal(data.images[c, d, 0], 255 - small)
    ink = data.images.mean() / 255
    assert 0.03 < ink < 0.15  # ink is bright (MAML's 1 - pixel/255); mostly background


def test_nearest_resampling_is_binary_like_the_papers_inputs(tmp_path):
    subset = tmp_path / "root"
    subset.mkdir()
    write_fixture_zip(subset / "images_background.zip", characters=3, drawings=2)
    nearest = Omniglot(subset, "background", resample="nearest", cache_dir=False)
    lanczos = Omniglot(subset, "background", resample="lanczos", cache_dir=False)
    assert set(np.unique(nearest.images)) <= {0, 255}
    assert len(np.unique(lanczos.images)) > 2


def test_factory_gives_a_sampler_with_the_literature_defaults(omniglot_root, omniglot_cache):
    sampler = omniglot_tasks(omniglot_root, split="train", seed=3, cache_dir=omniglot_cache)
    assert isinstance(sampler, EpisodeSampler)
    assert (sampler.ways, sampler.shots, sampler.queries) == (5, 1, 15)
    assert sampler.num_classes == 4400
    batch = sampler.sample(32)
    assert batch.support_x.shape == (32, 5, 1, 28, 28)
    assert batch.query_x.shape == (32, 75, 1, 28, 28)
    assert torch.equal(batch.query_y[0], torch.arange(5).repeat_interleave(15))
    again = omniglot_tasks(omniglot_root, split="train", seed=3, cache_dir=omniglot_cache)
    assert torch.equal(again.sample(32).query_x, batch.query_x)


# ------------------------------------------------------------------------- small fixtures
def fixture_png(rng: np.random.Generator) -> bytes:
    """A 105x105 1-bit PNG like Omniglot's: white background with a few black strokes."""
    pixels = np.ones((105, 105), dtype=bool)
    for _ in range(3):
        r, c = rng.integers(10, 90, size=2)
        pixels[r : r + 4, c : c + 30] = False
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_fixture_zip(path: Path, characters: int = 3, drawings: int = 4,
                      set_name: str = "images_background", seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(path, "w") as archive:
        for c in range(characters):
            alphabet = "Alpha" if c % 2 == 0 else "Beta"
            for d in range(drawings):
                member = f"{set_name}/{alphabet}/character{c + 1:02d}/{c + 1:04d}_{d + 1:02d}.png"
                archive.writestr(member, fixture_png(rng))


def test_extracted_folder_gives_the_same_images_as_the_zip(tmp_path):
    zipped, extracted = tmp_path / "zipped", tmp_path / "extracted"
    zipped.mkdir()
    write_fixture_zip(zipped / "images_background.zip", characters=5, drawings=3)
    with zipfile.ZipFile(zipped / "images_background.zip") as archive:
        archive.extractall(extracted)
    from_zip = Omniglot(zipped, "background", cache_dir=tmp_path / "c1")
    from_folder = Omniglot(extracted, "background", cache_dir=tmp_path / "c2")
    assert from_zip.class_names == from_folder.class_names
    assert from_zip.class_names[0] == "images_background/Alpha/character01"
    assert np.array_equal(from_zip.images, from_folder.images)
    assert from_zip.images.shape == (5, 3, 1, 28, 28)


def test_cache_is_keyed_by_the_source_checksum(tmp_path):
    root, cache = tmp_path / "root", tmp_path / "cache"
    root.mkdir()
    write_fixture_zip(root / "images_background.zip", seed=0)
    first = Omniglot(root, "background", cache_dir=cache)
    write_fixture_zip(root / "images_background.zip", seed=1)  # different content, same name
    second = Omniglot(root, "background", cache_dir=cache)
    assert len(list(cache.glob("*.npy"))) == 2
    assert not np.array_equal(first.images, second.images)


def test_download_fetches_and_verifies_sha256(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    write_fixture_zip(mirror / "images_background.zip")
    digest = omniglot_module.sha256_file(mirror / "images_background.zip")
    monkeypatch.setitem(omniglot_module.OMNIGLOT_SHA256, "images_background", digest)
    root = tmp_path / "root"
    data = Omniglot(root, "background", download=True, mirror=mirror.as_uri(), cache_dir=False)
    assert (root / "images_background.zip").is_file() and len(data) == 3


# ------------------------------------------------------------------------- bad input
def test_missing_files_without_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="images_background.zip.*download=True"):
        Omniglot(tmp_path, "background", cache_dir=False)
    write_fixture_zip(tmp_path / "images_background.zip")
    with pytest.raises(FileNotFoundError, match="images_evaluation.zip"):
        Omniglot(tmp_path, "train", cache_dir=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Omniglot(tmp_path / "nowhere", "background")


def test_download_with_wrong_checksum_is_rejected_and_discarded(omniglot_root, tmp_path):
    # the staged zips were re-packed, so their sha256 is not the official one
    root = tmp_path / "root"
    with pytest.raises(ValueError, match="checksum mismatch.*discarded"):
        Omniglot(root, "evaluation", download=True, mirror=omniglot_root.as_uri(), cache_dir=False)
    assert not any(root.glob("*.zip")) and not any(root.glob("*.part"))


def test_verify_always_rejects_repacked_zips(omniglot_root, tmp_path):
    with pytest.raises(ValueError, match="not the official.*verify='download'"):
        Omniglot(omniglot_root, "evaluation", verify="always", cache_dir=tmp_path)


def test_corrupt_zip(tmp_path):
    (tmp_path / "images_background.zip").write_bytes(b"this is not a zip file" * 100)
    with pytest.raises(ValueError, match="not a valid zip archive.*download it again"):
        Omniglot(tmp_path, "background", cache_dir=False)


def test_truncated_real_zip(omniglot_root, tmp_path):
    data = (omniglot_root / "images_evaluation.zip").read_bytes()
    (tmp_path / "images_evaluation.zip").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a valid zip archive"):
        Omniglot(tmp_path, "evaluation", cache_dir=False)


def test_corrupt_image_inside_the_zip(tmp_path):
    write_fixture_zip(tmp_path / "good.zip")
    with zipfile.ZipFile(tmp_path / "good.zip") as good, \
            zipfile.ZipFile(tmp_path / "images_background.zip", "w") as bad:
        for i, member in enumerate(good.namelist()):
            bad.writestr(member, b"garbage" if i == 2 else good.read(member))
    with pytest.raises(ValueError, match="cannot read .*0001_03.png.*corrupt"):
        Omniglot(tmp_path, "background", cache_dir=False)


def test_wrong_layout_and_uneven_characters(tmp_path):
    with zipfile.ZipFile(tmp_path / "images_background.zip", "w") as archive:
        archive.writestr("some/other/file.png", b"x")
    with pytest.raises(ValueError, match="no images found"):
        Omniglot(tmp_path, "background", cache_dir=False)
    write_fixture_zip(tmp_path / "images_background.zip", characters=2, drawings=3)
    with zipfile.ZipFile(tmp_path / "images_background.zip", "a") as archive:
        archive.writestr("images_background/Alpha/character01/0001_09.png",
                         fixture_png(np.random.default_rng(0)))
    with pytest.raises(ValueError, match="different numbers of drawings"):
        Omniglot(tmp_path, "background", cache_dir=False)


def test_unwritable_cache_only_warns(tmp_path):
    write_fixture_zip(tmp_path / "images_background.zip")
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(UserWarning, match="could not write the Omniglot cache"):
        data = Omniglot(tmp_path, "background", cache_dir=blocker)
    assert len(data) == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "training"}, "split='training' is unknown"),
        ({"rotations": (0, 45)}, "rotations=\\(0, 45\\) is invalid"),
        ({"rotations": ()}, "is invalid"),
        ({"resample": "bicubic"}, "resample='bicubic' is unknown"),
        ({"verify": "never"}, "verify='never' is unknown"),
        ({"split": "train", "num_train": 5000}, "num_train \\(5000\\) < number of characters"),
        ({"split": "val", "num_val": 0}, "need 0 < num_val \\(0\\)"),
    ],
)
def test_bad_arguments(omniglot_root, omniglot_cache, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Omniglot(omniglot_root, cache_dir=omniglot_cache, **{"split": "background", **kwargs})


def test_episodes_too_big_for_omniglot(omniglot_root, omniglot_cache):
    data = load(omniglot_root, omniglot_cache, "val", rotations=(0,))
    with pytest.raises(ValueError, match="only 100 classes"):
        data.sampler(ways=101, shots=1, queries=1)
    with pytest.raises(ValueError, match="shots \\+ queries <= 20"):
        data.sampler(ways=5, shots=5, queries=16)


def test_extracted_folder_with_verify_always_is_refused(tmp_path):
    write_fixture_zip(tmp_path / "f.zip")
    with zipfile.ZipFile(tmp_path / "f.zip") as archive:
        archive.extractall(tmp_path / "root")
    with pytest.raises(ValueError, match="extracted folder"):
        Omniglot(tmp_path / "root", "background", verify="always", cache_dir=False)
    shutil.rmtree(tmp_path / "root")
