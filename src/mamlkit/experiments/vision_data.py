"""Data and models of the image experiments: where each dataset's files are, its class split,
the episode-shape checks, the network, and the pretrained classifier's mini-batches.

Built-in datasets (Omniglot, miniImageNet, CIFAR-FS) and your own folder tree (the ``images``
task, :mod:`mamlkit.experiments.images`) are all described by an :class:`ImageDataset`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mamlkit.config import TrainConfig
from mamlkit.datasets.class_images import ClassImages
from mamlkit.experiments.common import baseline_settings
from mamlkit.experiments.protocol import TEST_SEED, VAL_SEED  # noqa: F401 - also named here
from mamlkit.tasks.base import TaskBatch

ROLES = ("train", "val", "test")
"""Meta-training, meta-validation and meta-test class sets."""
OFFICIAL_VAL_CHARACTERS = 100
"""Background characters held out for validation in Omniglot's official split."""
OFFICIAL_VAL_SEED = 0
"""Seed choosing those characters."""


# ---------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class ImageDataset:
    """How an experiment finds, loads and models one image dataset.

    ``load(config, folder, role)`` returns the :class:`ClassImages` of one role
    (``train``/``val``/``test``); ``folder`` is ``<data root>/<folder>``.
    """

    name: str
    """Display name (in messages and tables)."""
    folder: str
    """Sub-folder of the data root holding the files."""
    files: str
    """The published files, as named in error messages."""
    in_channels: int
    """Image channels (1 for Omniglot, 3 for RGB)."""
    image_size: int
    """Side of the square images."""
    hidden: int
    """Filters per convolution of MAML's network for this dataset."""
    class_splits: tuple[str, ...]
    """Accepted ``--class-split`` values, the default first (empty: any form
    :func:`mamlkit.datasets.class_split.split_classes` reads)."""
    load: Callable[[TrainConfig, Path, str], ClassImages]
    """``load(config, folder, role)``."""
    resolve: Callable[[TrainConfig], TrainConfig] | None = None
    """Fills in settings that depend on the data (e.g. channels read from the images) before a
    run saves its configuration."""


class ClassSubset(ClassImages):
    """Some classes of another :class:`ClassImages` (e.g. held-out validation characters)."""

    def __init__(self, images: np.ndarray, class_names: list[str], split: str) -> None:
        self.images = images
        self.class_names = class_names
        self.split = split


def _load_omniglot(config: TrainConfig, folder: Path, role: str) -> ClassImages:
    from mamlkit.datasets.omniglot import PAPER_ROTATIONS, Omniglot

    download = config.download
    if class_split(config) == "paper":
        return Omniglot(folder, split=role, rotations=PAPER_ROTATIONS, download=download)
    if role == "test":
        return Omniglot(folder, split="evaluation", rotations=PAPER_ROTATIONS, download=download)
    background = Omniglot(folder, split="background", rotations=PAPER_ROTATIONS, download=download)
    order = np.random.default_rng(OFFICIAL_VAL_SEED).permutation(background.num_base_classes)
    held_out = np.isin(background.class_base, order[:OFFICIAL_VAL_CHARACTERS])
    keep = held_out if role == "val" else ~held_out
    names = [n for n, k in zip(background.class_names, keep) if k]
    return ClassSubset(np.ascontiguousarray(background.images[keep]), names, f"background-{role}")


def _load_miniimagenet(config: TrainConfig, folder: Path, role: str) -> ClassImages:
    from mamlkit.datasets.miniimagenet import MiniImageNet

    return MiniImageNet(folder, split=role, download=config.download)


def _load_cifar_fs(config: TrainConfig, folder: Path, role: str) -> ClassImages:
    from mamlkit.datasets.cifar_fs import CIFARFS

    return CIFARFS(folder, split=role, download=config.download)


DATASETS: dict[str, ImageDataset] = {
    "omniglot": ImageDataset("Omniglot", "omniglot", "images_background.zip and "
                             "images_evaluation.zip", 1, 28, 64, ("paper", "official"),
                             _load_omniglot),
    "miniimagenet": ImageDataset("miniImageNet", "miniimagenet",
                                 "mini-imagenet-cache-{train,val,test}.pkl", 3, 84, 32,
                                 ("ravi",), _load_miniimagenet),
    "cifar-fs": ImageDataset("CIFAR-FS", "cifar100", "cifar-100-python/ or cifar-100-python.tar.gz",
                             3, 32, 32, ("bertinetto",), _load_cifar_fs),
}
"""Experiment name -> its dataset."""


def is_image_task(task: str) -> bool:
    """Whether ``task`` is one of the image experiments (built-in datasets or ``images``)."""
    return task in DATASETS or task == "images"


def dataset_spec(config: TrainConfig) -> ImageDataset:
    """The :class:`ImageDataset` of ``config.task`` (the ``images`` task's depends on the
    image options)."""
    if config.task == "images":
        from mamlkit.experiments.images import images_spec

        return images_spec(config)
    if config.task not in DATASETS:
        raise ValueError(f"{config.task!r} is not an image experiment; use one of "
                         f"{', '.join(DATASETS)}.")
    return DATASETS[config.task]


def resolve_config(config: TrainConfig) -> TrainConfig:
    """``config`` with the dataset's data-dependent settings filled in (see
    :attr:`ImageDataset.resolve`)."""
    spec = dataset_spec(config)
    return spec.resolve(config) if spec.resolve else config


def check_data(config: TrainConfig) -> None:
    """Load and check every split before a run folder is made (``Experiment.check``)."""
    load_all(resolve_config(config))


def class_split(config: TrainConfig) -> str:
    """The class split to use: ``config.class_split``, or the dataset's first (default) one."""
    spec = dataset_spec(config)
    if not spec.class_splits:
        return config.class_split
    chosen = config.class_split or spec.class_splits[0]
    if chosen not in spec.class_splits:
        raise ValueError(f"--class-split {chosen!r} is not a split of {spec.name}; use one of "
                         f"{', '.join(spec.class_splits)}.")
    return chosen


def data_folder(config: TrainConfig) -> Path:
    """``<data root>/<dataset folder>``, the data root being ``--data-root`` or ``$MAMLKIT_DATA``.

    Raises ``FileNotFoundError`` naming the expected files when the folder is missing and
    ``--download`` is off.
    """
    spec = dataset_spec(config)
    if not spec.folder:  # your own tree: the data root is the tree itself
        folder = Path(config.data_root).expanduser()
        if not config.data_root or not folder.is_dir():
            raise FileNotFoundError(
                f"the {config.task} task needs --data-root DIR, a folder laid out "
                f"DIR/<class>/<image>{f' ({folder} does not exist)' if config.data_root else ''}.")
        return folder
    root = config.data_root or os.environ.get("MAMLKIT_DATA", "")
    if not root:
        raise FileNotFoundError(
            f"no data folder given: pass --data-root FOLDER (holding {spec.folder}/ with "
            f"{spec.files}) or set the MAMLKIT_DATA environment variable.")
    folder = Path(root).expanduser() / spec.folder
    if not folder.is_dir() and not config.download:
        raise FileNotFoundError(
            f"{spec.name} not found: {folder} does not exist. Put {spec.files} there, point "
            f"--data-root at the folder that holds {spec.folder}/, or pass --download.")
    return folder


def load_split(config: TrainConfig, role: str) -> ClassImages:
    """The images of one role (``train``/``val``/``test``) of the experiment's dataset."""
    spec = dataset_spec(config)
    class_split(config)  # an unknown split name is refused before any file is read
    folder = data_folder(config)
    try:
        return spec.load(config, folder, role)
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"{error} (From the command line: put the files into {folder}, point --data-root at "
            f"the folder holding {spec.folder}/, or pass --download.)") from None


def eval_queries(config: TrainConfig) -> int:
    """Query examples per class in validation and test episodes (0 = as many as shots)."""
    return config.eval_queries or config.shots


def check_episodes(config: TrainConfig, data: Mapping[str, ClassImages]) -> None:
    """Raise ``ValueError`` before any training when a split cannot give the episodes asked for:
    fewer classes than ``ways`` or fewer examples per class than shots plus queries."""
    spec = dataset_spec(config)
    data = {role: images for role, images in data.items() if len(images) or role != "val"}
    for role, images in data.items():
        if len(images) < config.ways:
            raise ValueError(
                f"ways={config.ways} but the meta-{role} split of {spec.name} has only "
                f"{len(images)} classes; use --ways {len(images)} or fewer.")
    for role, images in data.items():
        queries = config.queries if role == "train" else eval_queries(config)
        flag = "--queries" if role == "train" else "--eval-queries"
        counts = images.class_sizes()
        smallest = int(counts.min())
        if config.shots + queries > smallest:
            small = np.flatnonzero(counts < config.shots + queries)
            raise ValueError(
                f"shots + queries = {config.shots} + {queries} = {config.shots + queries} "
                f"examples per class are needed in the meta-{role} split of {spec.name}, but a "
                f"class there has only {smallest}; lower --shots or {flag} so that their sum is "
                f"at most {smallest}, or remove the {len(small)} smaller class(es) (e.g. "
                f"{images.class_names[small[0]]!r} with {int(counts[small[0]])} examples).")


def load_all(config: TrainConfig, roles: tuple[str, ...] = ROLES) -> dict[str, ClassImages]:
    """Every requested role's images, checked against the episode shape (errors come first)."""
    data = {role: load_split(config, role) for role in roles}
    check_episodes(config, data)
    return data


# --------------------------------------------------------------------------------------- models
def build_model(config: TrainConfig, outputs: int) -> nn.Module:
    """The experiment's network with ``outputs`` logits: MAML's ConvNet (``--model cnn``, the
    default; ``--hidden`` filters) or its fully connected network (``--model mlp``)."""
    from mamlkit.models import MLP, ConvNet

    spec = dataset_spec(config)
    name = config.model or "cnn"
    if name == "cnn":
        return ConvNet(spec.in_channels, outputs, hidden=config.hidden or spec.hidden,
                       image_size=spec.image_size)
    if name == "mlp":
        if config.hidden:
            raise ValueError("--hidden sets the filters of the cnn model; the mlp model has "
                             "MAML's fixed widths 256-128-64-64. Drop --hidden or use --model cnn.")
        inputs = spec.in_channels * spec.image_size ** 2
        return MLP((inputs, 256, 128, 64, 64, outputs), batch_norm=True, flatten=True)
    raise ValueError(f"--model {name!r} is unknown for {spec.name}; use cnn or mlp.")


def head_names(model: nn.Module) -> list[str]:
    """Parameter names of the network's output layer (its last ``nn.Linear``)."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        raise ValueError(f"{type(model).__name__} has no nn.Linear output layer to replace.")
    return [f"{last}.{p}" for p, _ in model.get_submodule(last).named_parameters()]


# --------------------------------------------------------------------- the pretrained classifier
class ClassifierBatches:
    """Mini-batches for an ordinary classifier over every class of a split (labels = class ids).

    Each "task" of a :class:`TaskBatch` is one mini-batch of ``batch_size`` images drawn
    uniformly from all images, split in half into support and query (the joint-training
    baseline trains on both halves), so the shared training loop can run it. Deterministic from
    ``seed``, with :meth:`state_dict` / :meth:`load_state_dict` for exact resumption.
    """

    def __init__(self, data: ClassImages, batch_size: int, seed: int = 0) -> None:
        if batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (support and query halves), got "
                             f"{batch_size}.")
        images = data.images
        if isinstance(images, np.ndarray):
            self.flat = images.reshape(-1, *images.shape[2:])
        else:  # ragged classes in memory, or images read on demand
            self.flat = np.concatenate(images) if isinstance(images, list) else images
        self.labels = np.repeat(np.arange(len(data)), data.class_sizes())
        self.transform = data.transform
        self.num_classes = len(data)
        self.batch_size = batch_size
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, num_tasks: int) -> TaskBatch:
        """``num_tasks`` mini-batches of random images with their class labels."""
        rows = torch.randint(len(self.flat), (num_tasks, self.batch_size),
                             generator=self.generator).numpy()
        x = torch.from_numpy(self.flat.take(rows.reshape(-1), axis=0))
        x = x.float().div_(255.0).view(num_tasks, self.batch_size, *self.flat.shape[1:])
        if self.transform is not None:
            x = self.transform(x)
        y = torch.from_numpy(self.labels[rows].astype(np.int64))
        half = self.batch_size // 2
        return TaskBatch(x[:, :half], y[:, :half], x[:, half:], y[:, half:], info={})

    def state_dict(self) -> dict[str, Any]:
        """The random state (resumption continues with the same mini-batches)."""
        return {"seed": self.seed, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`."""
        self.generator.set_state(state["generator"])


def baseline_config(config: TrainConfig) -> TrainConfig:
    """Settings of the pretrained classifier: one mini-batch per step, no inner loop, no
    validation episodes (its head has the training classes, not ``ways`` outputs)."""
    iterations = config.baseline_iterations or config.iterations
    return baseline_settings(config, "pretrained", inner_steps=0, meta_batch_size=1,
                             iterations=iterations, val_every=0, seed=config.seed + 1)


def classifier_batch_size(config: TrainConfig) -> int:
    """Images per classifier step: as many as one MAML meta-batch holds."""
    return config.meta_batch_size * config.ways * (config.shots + config.queries)

