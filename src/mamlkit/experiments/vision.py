"""Few-shot image classification: Omniglot, miniImageNet and CIFAR-FS (Finn et al. 2017, 5.2).

One code path for the three datasets; they differ only in where their files are, the image
shape, the network width and the literature's hyperparameters.

Meta-training follows MAML's released code: N-way K-shot episodes with as many query examples
per class as shots for Omniglot (15 for miniImageNet and CIFAR-FS), Adam with rate 1e-3, and the
four-block ConvNet normalising with batch statistics. Omniglot 5-way: meta-batch 32, one inner
step of 0.4; 20-way: meta-batch 16, five steps of 0.1 (these follow ``--ways`` unless given
explicitly). miniImageNet: meta-batch 4 (1-shot) or 2 (5-shot), five steps of 0.01, 32 filters.
Validation accuracy on fixed meta-validation episodes selects the best checkpoint.

Evaluation (``mamlkit eval RUN_DIR``) scores three models on the same ``test_tasks`` (600)
meta-test episodes, drawn with a fixed seed, after 0..``eval_inner_steps`` (10) gradient steps
on each support set, as mean query accuracy with a 95% confidence interval:

- MAML: the meta-learned initialisation, adapted with the inner learning rate;
- pretrained: the same network trained as an ordinary classifier over all meta-training classes
  (cross-entropy, Adam, ``meta_batch_size * ways * (shots + queries)`` images per step, so it
  sees as many images per iteration as MAML), then its output layer replaced by a fresh
  ``ways``-way layer initialised to zero (the first step then makes it a class-mean classifier,
  and no random draw is involved) and every parameter fine-tuned on the support set;
- random init: the same network from a random initialisation, fine-tuned the same way.

The baselines' fine-tuning rate is chosen among :data:`FINE_TUNE_LRS` by accuracy after
``eval_inner_steps`` steps on meta-validation episodes.

Class splits (``--class-split``): Omniglot ``paper`` (default; MAML's 1,100 / 100 / 423
characters, each in four rotations) or ``official`` (Lake et al.'s background set for training,
of which :data:`OFFICIAL_VAL_CHARACTERS` characters are held out for validation, and the
evaluation set for testing; four rotations as well). miniImageNet: Ravi & Larochelle's 64 / 16 /
20 classes; CIFAR-FS: Bertinetto et al.'s 64 / 16 / 20 classes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mamlkit.algorithms import algorithm_label
from mamlkit.algorithms.maml import MAML
from mamlkit.checkpoint import load_checkpoint
from mamlkit.config import TrainConfig
from mamlkit.core.learner import MetaLearner
from mamlkit.datasets.class_images import ClassImages
from mamlkit.datasets.episodic import FixedEpisodes
from mamlkit.evaluate import Estimate, summarize_curve
from mamlkit.experiments import Experiment
from mamlkit.experiments.common import build_learner, save_config, setup_torch
from mamlkit.tasks.base import TaskBatch
from mamlkit.train import meta_train
from mamlkit.wording import count

ROLES = ("train", "val", "test")
"""Meta-training, meta-validation and meta-test class sets."""
VAL_SEED, TEST_SEED = 1_000_003, 2_000_003
"""Seeds of the fixed meta-validation and meta-test episodes (the same episodes every run)."""
FINE_TUNE_LRS = (0.01, 0.04, 0.1, 0.4)
"""Fine-tuning step sizes tried for the baselines (chosen on meta-validation episodes)."""
TUNE_EPISODES = 100
"""At most this many meta-validation episodes are used to choose the fine-tuning step size."""
EVAL_CHUNK = 100
"""Episodes adapted at once in evaluation (bounds memory)."""
OFFICIAL_VAL_CHARACTERS = 100
"""Background characters held out for validation in Omniglot's official split."""
OFFICIAL_VAL_SEED = 0
"""Seed choosing those characters."""


# ---------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class ImageDataset:
    """How an experiment finds, loads and models one image dataset.

    ``load(folder, role, class_split, download)`` returns the :class:`ClassImages` of one role
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
    """Accepted ``--class-split`` values, the default first."""
    load: Callable[[Path, str, str, bool], ClassImages]
    """``load(folder, role, class_split, download)``."""


class ClassSubset(ClassImages):
    """Some classes of another :class:`ClassImages` (e.g. held-out validation characters)."""

    def __init__(self, images: np.ndarray, class_names: list[str], split: str) -> None:
        self.images = images
        self.class_names = class_names
        self.split = split


def _load_omniglot(folder: Path, role: str, class_split: str, download: bool) -> ClassImages:
    from mamlkit.datasets.omniglot import PAPER_ROTATIONS, Omniglot

    if class_split == "paper":
        return Omniglot(folder, split=role, rotations=PAPER_ROTATIONS, download=download)
    if role == "test":
        return Omniglot(folder, split="evaluation", rotations=PAPER_ROTATIONS, download=download)
    background = Omniglot(folder, split="background", rotations=PAPER_ROTATIONS, download=download)
    order = np.random.default_rng(OFFICIAL_VAL_SEED).permutation(background.num_base_classes)
    held_out = np.isin(background.class_base, order[:OFFICIAL_VAL_CHARACTERS])
    keep = held_out if role == "val" else ~held_out
    names = [n for n, k in zip(background.class_names, keep) if k]
    return ClassSubset(np.ascontiguousarray(background.images[keep]), names, f"background-{role}")


def _load_miniimagenet(folder: Path, role: str, class_split: str, download: bool) -> ClassImages:
    from mamlkit.datasets.miniimagenet import MiniImageNet

    return MiniImageNet(folder, split=role, download=download)


def _load_cifar_fs(folder: Path, role: str, class_split: str, download: bool) -> ClassImages:
    from mamlkit.datasets.cifar_fs import CIFARFS

    return CIFARFS(folder, split=role, download=download)


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


def dataset_spec(config: TrainConfig) -> ImageDataset:
    """The :class:`ImageDataset` of ``config.task``."""
    if config.task not in DATASETS:
        raise ValueError(f"{config.task!r} is not an image experiment; use one of "
                         f"{', '.join(DATASETS)}.")
    return DATASETS[config.task]


def class_split(config: TrainConfig) -> str:
    """The class split to use: ``config.class_split``, or the dataset's first (default) one."""
    spec = dataset_spec(config)
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
    folder = data_folder(config)
    try:
        return spec.load(folder, role, class_split(config), config.download)
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
    for role, images in data.items():
        if len(images) < config.ways:
            raise ValueError(
                f"ways={config.ways} but the meta-{role} split of {spec.name} has only "
                f"{len(images)} classes; use --ways {len(images)} or fewer.")
    for role, images in data.items():
        queries = config.queries if role == "train" else eval_queries(config)
        flag = "--queries" if role == "train" else "--eval-queries"
        counts = ([len(c) for c in images.images] if isinstance(images.images, list)
                  else [images.images.shape[1]])
        smallest = min(counts)
        if config.shots + queries > smallest:
            raise ValueError(
                f"shots + queries = {config.shots} + {queries} = {config.shots + queries} "
                f"examples per class are needed in the meta-{role} split of {spec.name}, but a "
                f"class there has only {smallest}; lower --shots or {flag} so that their sum is "
                f"at most {smallest}.")


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
        if isinstance(images, list):
            self.flat = np.concatenate(images)
            self.labels = np.concatenate([np.full(len(c), i) for i, c in enumerate(images)])
        else:
            self.flat = images.reshape(-1, *images.shape[2:])
            self.labels = np.repeat(np.arange(images.shape[0]), images.shape[1])
        self.num_classes = len(data)
        self.batch_size = batch_size
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, num_tasks: int) -> TaskBatch:
        """``num_tasks`` mini-batches of random images with their class labels."""
        rows = torch.randint(len(self.flat), (num_tasks, self.batch_size),
                             generator=self.generator).numpy()
        x = torch.from_numpy(np.take(self.flat, rows.reshape(-1), axis=0))
        x = x.float().div_(255.0).view(num_tasks, self.batch_size, *self.flat.shape[1:])
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
    return TrainConfig(**{**config.to_dict(), "algo": "pretrained", "inner_steps": 0,
                          "meta_batch_size": 1, "iterations": iterations, "val_every": 0,
                          "seed": config.seed + 1})


def classifier_batch_size(config: TrainConfig) -> int:
    """Images per classifier step: as many as one MAML meta-batch holds."""
    return config.meta_batch_size * config.ways * (config.shots + config.queries)


# ------------------------------------------------------------------------------------- training
def _summary(result: Any, wall_s: float) -> dict[str, Any]:
    budget = result.stopped_early.startswith("time budget")
    return {"iterations": result.iteration, "train_seconds": round(result.elapsed_s, 1),
            "wall_seconds": round(wall_s, 1), "best_val_accuracy": result.best_metric,
            "budget_reached": budget, "stopped": "" if budget else result.stopped_early}


def train(config: TrainConfig, run_dir: Path, resume: bool) -> dict[str, Any]:
    """Meta-train MAML, then the pretrained classifier baseline, into ``run_dir``.

    Every dataset split is loaded and checked against the episode shape first, so bad input
    fails before any training.
    """
    data = load_all(config)
    build_model(config, config.ways)  # model errors before training too
    save_config(config, run_dir)
    summary: dict[str, Any] = {}

    setup_torch(config)
    learner = build_learner(config, build_model(config, config.ways), "cross_entropy")
    learner = learner.to(config.device)
    tasks = data["train"].sampler(config.ways, config.shots, config.queries, seed=config.seed)
    val = data["val"].sampler(config.ways, config.shots, eval_queries(config)).fixed_episodes(
        config.val_tasks, VAL_SEED, meta_batch_size=config.val_tasks).all()
    sub = run_dir / "maml"
    start = time.perf_counter()
    result = meta_train(learner, tasks, config, sub, val_batch=val.to(config.device),
                        resume=resume)
    summary["maml"] = _summary(result, time.perf_counter() - start)
    if config.plots and (sub / "metrics.csv").is_file():
        _learning_curve(sub, run_dir, config)

    if not summary["maml"]["stopped"]:
        base = baseline_config(config)
        setup_torch(base)
        model = build_model(config, len(data["train"]))
        learner = build_learner(base, model, "cross_entropy").to(config.device)
        batches = ClassifierBatches(data["train"], classifier_batch_size(config), seed=base.seed)
        sub = run_dir / "pretrained"
        start = time.perf_counter()
        result = meta_train(learner, batches, base, sub, title=f"pretrained baseline {config.task}",
                            resume=resume)
        summary["pretrained"] = _summary(result, time.perf_counter() - start)
    (run_dir / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _learning_curve(sub: Path, run_dir: Path, config: TrainConfig) -> None:
    import csv

    from mamlkit.plots import plot_learning_curve

    with (sub / "metrics.csv").open() as handle:
        if not any(row.get("val_accuracy") for row in csv.DictReader(handle)):
            return
    plot_learning_curve(run_dir / "plots" / "learning_curve.png", sub / "metrics.csv",
                        title=f"{config.task} {config.ways}-way {config.shots}-shot: "
                              f"{algorithm_label(config.algo)} learning curve")


# ----------------------------------------------------------------------------------- evaluation
def _load_state(path: Path, device: str) -> dict[str, Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; train the run first (mamlkit train "
                                "... --run-dir) or pass the folder of a finished run.")
    return load_checkpoint(path, map_location=device)["learner"]


def maml_learner(config: TrainConfig, run_dir: Path) -> MetaLearner:
    """The meta-learned initialisation of the run, adapting with the inner learning rate."""
    setup_torch(config)
    learner = build_learner(config, build_model(config, config.ways), "cross_entropy",
                            inner_steps=config.eval_inner_steps).to(config.device)
    learner.load_state_dict(_load_state(run_dir / "maml" / "checkpoints" / "best.pt",
                                        config.device))
    return learner


def fine_tune_learner(config: TrainConfig, run_dir: Path | None, lr: float) -> MetaLearner:
    """A network fine-tuned on each support set with step size ``lr``: the pretrained
    classifier's features with a zero ``ways``-way output layer when ``run_dir`` is given, a
    random initialisation (seeded) otherwise."""
    base = baseline_config(config)
    setup_torch(base)
    model = build_model(config, config.ways)
    if run_dir is not None:
        state = _load_state(run_dir / "pretrained" / "checkpoints" / "best.pt", config.device)
        head = set(head_names(model))
        features = {k.removeprefix("model."): v for k, v in state.items()
                    if k.startswith("model.") and k.removeprefix("model.") not in head}
        missing, unexpected = model.load_state_dict(features, strict=False)
        if set(missing) != head or unexpected:
            raise ValueError(f"the pretrained checkpoint does not match the network (missing "
                             f"{sorted(set(missing) - head)}, unexpected {unexpected}); was the "
                             "run trained with another --model or --hidden?")
        with torch.no_grad():
            for name in head:
                model.get_parameter(name).zero_()
    return MAML(model, inner_lr=lr, inner_steps=config.eval_inner_steps, loss="cross_entropy",
                batching=config.batching).to(config.device)


def accuracy_curve(learner: MetaLearner, episodes: FixedEpisodes, steps: int,
                   device: str = "cpu") -> Tensor:
    """Query accuracy ``[steps + 1, episodes]`` after 0..``steps`` adaptation steps."""
    parts = [learner.adaptation_curve(batch.to(device), steps)["query_accuracy"].cpu()
             for batch in episodes]
    return torch.cat(parts, dim=1)


def choose_fine_tune_lr(config: TrainConfig, run_dir: Path | None, val: FixedEpisodes
                        ) -> tuple[float, dict[str, float]]:
    """The step size of :data:`FINE_TUNE_LRS` with the best validation accuracy after
    ``eval_inner_steps`` steps, and every candidate's accuracy."""
    scores = {}
    for lr in FINE_TUNE_LRS:
        learner = fine_tune_learner(config, run_dir, lr)
        curve = accuracy_curve(learner, val, config.eval_inner_steps, config.device)
        scores[lr] = float(curve[-1].mean())
    return max(scores, key=scores.get), {str(k): v for k, v in scores.items()}


def _row(label: str, estimates: list[Estimate], picks: list[int]) -> str:
    cells = [f"{100 * estimates[s].mean:6.2f} ± {100 * estimates[s].ci95:4.2f}" for s in picks]
    return f"{label:<12} " + " ".join(f"{c:>15}" for c in cells)


def evaluate(config: TrainConfig, run_dir: Path) -> dict[str, Any]:
    """The paper's protocol on the meta-test split: accuracy (mean ± 95% CI over ``test_tasks``
    fixed episodes) after 0..``eval_inner_steps`` steps for MAML and both baselines; prints the
    table, saves ``eval/results.json``, ``eval/table.txt`` and the plots."""
    best = run_dir / "maml" / "checkpoints" / "best.pt"
    if not best.is_file():
        raise FileNotFoundError(f"{best} does not exist; train the run first (mamlkit train "
                                "... --run-dir) or pass the folder of a finished run.")
    data = load_all(config, ("val", "test"))
    steps = config.eval_inner_steps
    queries = eval_queries(config)
    test = data["test"].sampler(config.ways, config.shots, queries).fixed_episodes(
        config.test_tasks, TEST_SEED, meta_batch_size=EVAL_CHUNK)
    val = data["val"].sampler(config.ways, config.shots, queries).fixed_episodes(
        min(config.val_tasks, TUNE_EPISODES), VAL_SEED, meta_batch_size=EVAL_CHUNK)
    maml = maml_learner(config, run_dir)
    results: dict[str, Any] = {
        "task": config.task, "class_split": class_split(config), "ways": config.ways,
        "shots": config.shots, "queries": queries, "test_episodes": config.test_tasks,
        "test_seed": TEST_SEED, "steps": steps, "inner_lr": config.inner_lr, "accuracy": {},
        "fine_tune_lr": {}, "fine_tune_val_accuracy": {}}
    models: dict[str, MetaLearner] = {algorithm_label(config.algo): maml}
    baselines = {"pretrained": run_dir, "random init": None}
    if not (run_dir / "pretrained" / "checkpoints" / "best.pt").is_file():
        baselines.pop("pretrained")
        results["note"] = "no pretrained checkpoint in the run: that baseline was skipped"
    for label, source in baselines.items():
        lr, scores = choose_fine_tune_lr(config, source, val)
        results["fine_tune_lr"][label] = lr
        results["fine_tune_val_accuracy"][label] = scores
        models[label] = fine_tune_learner(config, source, lr)
    curves = {}
    for label, learner in models.items():
        estimates = summarize_curve({"a": accuracy_curve(learner, test, steps, config.device)})["a"]
        curves[label] = estimates
        results["accuracy"][label] = [{"mean": e.mean, "ci95": e.ci95} for e in estimates]
    picks = sorted({0, min(1, steps), min(5, steps), steps})
    lines = [f"{config.task} {config.ways}-way {config.shots}-shot ({class_split(config)} split): "
             f"query accuracy (%) after k steps, mean ± 95% CI over {config.test_tasks} meta-test "
             f"episodes ({count(queries, 'query')} per class, seed {TEST_SEED})",
             f"{'model':<12} " + " ".join(f"{count(k, 'step'):>15}" for k in picks)]
    lines += [_row(label, est, picks) for label, est in curves.items()]
    lines.append("fine-tuning step size (chosen on validation): " + ", ".join(
        f"{k} {v}" for k, v in results["fine_tune_lr"].items()))
    table = "\n".join(lines)
    results["table"] = table
    out = run_dir / "eval"
    out.mkdir(exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "table.txt").write_text(table + "\n")
    print(table)
    if config.plots:
        from mamlkit.plots import plot_adaptation_curves

        plot_adaptation_curves(run_dir / "plots" / "accuracy_vs_steps.png", curves,
                               "query accuracy", f"{config.task} {config.ways}-way "
                               f"{config.shots}-shot: accuracy after k steps", percent=True)
        if (run_dir / "maml" / "metrics.csv").is_file():
            _learning_curve(run_dir / "maml", run_dir, config)
    return results


# --------------------------------------------------------------------------------- experiments
def by_key(table: Mapping[int, Mapping[str, Any]], value: int) -> Mapping[str, Any]:
    """The entry of ``table`` with the largest key not above ``value`` (else the smallest key)."""
    below = [k for k in table if k <= value]
    return table[max(below) if below else min(table)]


OMNIGLOT_BY_WAYS: dict[int, dict[str, Any]] = {
    5: {"meta_batch_size": 32, "inner_steps": 1, "inner_lr": 0.4},
    20: {"meta_batch_size": 16, "inner_steps": 5, "inner_lr": 0.1},
}
"""MAML's Omniglot settings by number of ways (fewer than 20 ways use the 5-way ones)."""

MINIIMAGENET_BY_SHOTS: dict[int, dict[str, Any]] = {
    1: {"meta_batch_size": 4},
    5: {"meta_batch_size": 2},
}
"""MAML's miniImageNet meta-batch by number of shots."""


def omniglot_defaults(values: Mapping[str, Any]) -> dict[str, Any]:
    """Omniglot defaults that depend on the chosen ways and shots: the table above, and as many
    meta-training queries per class as shots (MAML's code)."""
    return {**by_key(OMNIGLOT_BY_WAYS, values["ways"]), "queries": values["shots"]}


def miniimagenet_defaults(values: Mapping[str, Any]) -> dict[str, Any]:
    """miniImageNet/CIFAR-FS defaults that depend on the chosen shots."""
    return dict(by_key(MINIIMAGENET_BY_SHOTS, values["shots"]))


_COMMON = {"algo": "maml", "ways": 5, "shots": 1, "eval_inner_steps": 10, "meta_lr": 1e-3,
           "optimizer": "adam", "iterations": 60000, "val_every": 500, "val_tasks": 100,
           "checkpoint_every": 500, "test_tasks": 600, "baseline_iterations": 0}

OMNIGLOT = Experiment(
    name="omniglot",
    summary="Omniglot N-way K-shot (Finn et al. 2017, 5.2): 1,623 characters x 4 rotations.",
    defaults={**_COMMON, "task": "omniglot", "queries": 1, **OMNIGLOT_BY_WAYS[5]},
    train=train,
    evaluate=evaluate,
    derived_defaults=omniglot_defaults,
)

_MINI = {**_COMMON, "queries": 15, "inner_lr": 0.01, "inner_steps": 5, **MINIIMAGENET_BY_SHOTS[1]}

MINIIMAGENET = Experiment(
    name="miniimagenet",
    summary="miniImageNet N-way K-shot (Finn et al. 2017, 5.2), Ravi & Larochelle split.",
    defaults={**_MINI, "task": "miniimagenet"},
    train=train,
    evaluate=evaluate,
    derived_defaults=miniimagenet_defaults,
)

CIFAR_FS = Experiment(
    name="cifar-fs",
    summary="CIFAR-FS N-way K-shot (Bertinetto et al. 2019) with MAML's miniImageNet settings.",
    defaults={**_MINI, "task": "cifar-fs"},
    train=train,
    evaluate=evaluate,
    derived_defaults=miniimagenet_defaults,
)
