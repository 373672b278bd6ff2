"""Evaluation of the image experiments with the paper's protocol (see :mod:`.vision`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mamlkit.algorithms import algorithm_label
from mamlkit.algorithms.maml import MAML
from mamlkit.checkpoint import load_checkpoint
from mamlkit.config import TrainConfig, make_config
from mamlkit.core.learner import MetaLearner
from mamlkit.datasets.episodic import FixedEpisodes
from mamlkit.evaluate import Estimate, evaluate_episodes, summarize_curve
from mamlkit.experiments import protocol
from mamlkit.experiments.common import build_learner, load_run_config, setup_torch
from mamlkit.experiments.protocol import FINE_TUNE_RATES, TEST_SEED, VAL_SEED
from mamlkit.experiments.vision_data import (
    baseline_config,
    build_model,
    class_split,
    dataset_spec,
    eval_queries,
    head_names,
    load_all,
    load_split,
    resolve_config,
)
from mamlkit.wording import count

FINE_TUNE_LRS = FINE_TUNE_RATES["vision"]
"""Fine-tuning step sizes tried for the baselines (chosen on meta-validation episodes)."""
TUNE_EPISODES = 100
"""At most this many meta-validation episodes are used to choose the fine-tuning step size."""
EVAL_CHUNK = 100
"""Episodes adapted at once in evaluation (bounds memory)."""


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


def trained_config(run_dir: Path) -> TrainConfig:
    """The configuration the run in ``run_dir`` was trained with."""
    return make_config(load_run_config(run_dir))


def load_maml(config: TrainConfig, run_dir: Path) -> tuple[MetaLearner, str]:
    """The run's meta-learned initialisation for ``config.ways``-way episodes, and a note.

    ``config`` describes the network (the run's settings, with the evaluation's ways). When
    ``config.ways`` differs from the trained number, the output layer is re-initialised to zeros
    (cross-way transfer: the first step then makes it a class-mean classifier) and the note says
    so; any other entry whose shape depends on the output layer (Meta-SGD's per-parameter rates)
    restarts from its initial value, also named in the note.
    """
    setup_torch(config)
    learner = build_learner(config, build_model(config, config.ways), "cross_entropy",
                            inner_steps=config.eval_inner_steps).to(config.device)
    state = _load_state(run_dir / "maml" / "checkpoints" / "best.pt", config.device)
    own = learner.state_dict()
    changed = sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape)
    if not changed:
        learner.load_state_dict(state)
        return learner, ""
    head = [f"model.{n}" for n in head_names(learner.model)]
    learner.load_state_dict({k: v for k, v in state.items() if k not in changed}, strict=False)
    with torch.no_grad():
        for name in head:
            learner.get_parameter(name).zero_()
    trained_ways = int(state[head[0]].shape[0])
    note = (f"output layer re-initialised to zeros for {config.ways}-way episodes (the run was "
            f"trained {trained_ways}-way)")
    others = [k for k in changed if k not in head]
    return learner, note + (f"; also reset to their initial values: {', '.join(others)}"
                            if others else "")


def maml_learner(config: TrainConfig, run_dir: Path) -> MetaLearner:
    """The meta-learned initialisation of the run, adapting with the inner learning rate."""
    return load_maml(config, run_dir)[0]


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


def choose_fine_tune_lr(config: TrainConfig, run_dir: Path | None, val: FixedEpisodes
                        ) -> tuple[float, dict[str, float]]:
    """The step size of :data:`FINE_TUNE_LRS` with the best validation accuracy after
    ``eval_inner_steps`` steps (only that step is scored), and every candidate's accuracy."""
    def accuracy(lr: float) -> Tensor:
        learner = fine_tune_learner(config, run_dir, lr)
        result = evaluate_episodes(learner, val, [config.eval_inner_steps], config.device)
        return torch.tensor([result[config.eval_inner_steps]["query_accuracy"].mean],
                            dtype=torch.float64)

    choice = protocol.choose_rate(FINE_TUNE_LRS, accuracy, maximize=True)
    return choice.rate, {str(k): v for k, v in choice.scores.items()}


def _row(label: str, estimates: list[Estimate], picks: list[int]) -> str:
    cells = [f"{100 * estimates[s].mean:6.2f} ± {100 * estimates[s].ci95:4.2f}" for s in picks]
    return f"{label:<12} " + " ".join(f"{c:>15}" for c in cells)


EVAL_KEYS = ("task", "data_root", "class_split", "ways", "shots", "eval_queries", "test_tasks",
             "eval_inner_steps", "baseline", "invert")
"""Settings that change what an evaluation measures (a changed one gets its own results file)."""


def evaluation_config(saved: dict[str, Any], overrides: dict[str, Any]) -> TrainConfig:
    """The settings of ``mamlkit eval``: the run's, with the evaluation's overrides. Evaluating
    a built-in dataset's run on an image folder (``--task images``) converts the images to the
    network's input shape."""
    trained = make_config(saved)
    values = dict(overrides)
    if values.get("task", trained.task) != trained.task:  # another family: not the run's files
        values.setdefault("data_root", "")
    if values.get("task", trained.task) == "images" and trained.task != "images":
        spec = dataset_spec(trained)
        values = {"channels": spec.in_channels, "image_size": spec.image_size,
                  "normalize": "none", **values}
    config = make_config(saved, values)
    if config.task != trained.task or config.data_root != trained.data_root:
        # another dataset: its own split; a plain image tree is meta-test data as a whole
        chosen = overrides.get("class_split", "")
        if not chosen and config.task == "images":
            from mamlkit.datasets.class_split import has_split_folders
            from mamlkit.experiments.images import image_folder

            chosen = "folders" if has_split_folders(image_folder(config).class_names) else "0,0,1"
        config = dataclasses.replace(config, class_split=chosen)
    return config


def network_config(config: TrainConfig, trained: TrainConfig) -> TrainConfig:
    """The run's network, with the evaluation's ways, steps and device."""
    network = dataclasses.replace(trained, ways=config.ways, shots=config.shots,
                                  eval_inner_steps=config.eval_inner_steps, device=config.device,
                                  batching=config.batching, plots=config.plots)
    source, target = dataset_spec(trained), dataset_spec(config)
    have, want = (target.in_channels, target.image_size), (source.in_channels, source.image_size)
    if have != want:
        raise ValueError(f"the run's network takes {want[0]}x{want[1]}x{want[1]} images but "
                         f"{target.name} gives {have[0]}x{have[1]}x{have[1]}; evaluate on data "
                         "of that shape (--task images converts an image folder).")
    return network


def _output_name(config: TrainConfig, trained: TrainConfig) -> str:
    if all(getattr(config, k) == getattr(trained, k) for k in EVAL_KEYS):
        return "results"
    data = Path(config.data_root).name if config.task == "images" else config.task
    name = (f"{config.task}-{data}-{config.ways}way-{config.shots}shot-"
            f"{eval_queries(config)}q-{config.test_tasks}ep-{config.eval_inner_steps}steps")
    return name + ("-nobaseline" if config.baseline == "none" else "")


def _tuning_episodes(config: TrainConfig, trained: TrainConfig) -> tuple[FixedEpisodes | None, str]:
    """Episodes choosing the baselines' fine-tuning rate: the run's own meta-validation classes
    (never the evaluation data), with the evaluation's episode shape."""
    queries = eval_queries(config)
    fallback = f"the baselines fine-tune with the inner rate {config.inner_lr}"
    try:
        val = load_split(dataclasses.replace(trained, ways=config.ways), "val")
    except ValueError as error:  # e.g. a split with too few classes for these ways
        return None, f"no tuning episodes ({error}): {fallback}"
    if len(val) < config.ways or min(val.class_sizes(), default=0) < config.shots + queries:
        return None, (f"the run's meta-validation split ({len(val)} classes) cannot give "
                      f"{config.ways}-way {config.shots}-shot episodes: {fallback}")
    sampler = val.sampler(config.ways, config.shots, queries)
    return sampler.fixed_episodes(min(config.val_tasks, TUNE_EPISODES), VAL_SEED,
                                  meta_batch_size=EVAL_CHUNK), ""


def meta_test_episodes(config: TrainConfig) -> FixedEpisodes:
    """The fixed meta-test episodes every evaluation of ``config`` scores (``test_tasks`` of
    them, seed :data:`~mamlkit.experiments.protocol.TEST_SEED`)."""
    sampler = load_all(config, ("test",))["test"].sampler(config.ways, config.shots,
                                                          eval_queries(config))
    return sampler.fixed_episodes(config.test_tasks, TEST_SEED, meta_batch_size=EVAL_CHUNK)


def evaluate(config: TrainConfig, run_dir: Path) -> dict[str, Any]:
    """The paper's protocol on the meta-test split: accuracy (mean ± 95% CI over ``test_tasks``
    fixed episodes) after 0..``eval_inner_steps`` steps for MAML and the baselines; prints the
    table, saves ``eval/results.json`` (``eval/<what was evaluated>.json`` when the dataset or
    episode shape differs from the run's), the table and the plots.

    ``config`` may name another dataset than the run's (cross-domain evaluation) and other
    ways, shots and queries; the network and the baselines' fine-tuning rates come from the run.
    """
    best = run_dir / "maml" / "checkpoints" / "best.pt"
    if not best.is_file():
        raise FileNotFoundError(f"{best} does not exist; train the run first (mamlkit train "
                                "... --run-dir) or pass the folder of a finished run.")
    config = resolve_config(config)  # e.g. channels read from the images, as the run saved them
    trained = trained_config(run_dir) if (run_dir / "config.json").is_file() else config
    network = network_config(config, trained)
    steps, queries = config.eval_inner_steps, eval_queries(config)
    test = meta_test_episodes(config)
    maml, note = load_maml(network, run_dir)
    notes = [note] if note else []
    results: dict[str, Any] = {
        "task": config.task, "data_root": config.data_root, "class_split": class_split(config),
        "trained_on": {"task": trained.task, "data_root": trained.data_root,
                       "ways": trained.ways, "shots": trained.shots},
        "ways": config.ways, "shots": config.shots, "queries": queries,
        "test_episodes": config.test_tasks, "test_seed": TEST_SEED, "steps": steps,
        "inner_lr": config.inner_lr, "accuracy": {}, "fine_tune_lr": {},
        "fine_tune_val_accuracy": {}}
    models: dict[str, MetaLearner] = {algorithm_label(config.algo): maml}
    baselines = {"pretrained": run_dir, "random init": None}
    if config.baseline == "none":
        baselines.pop("pretrained")
        notes.append("pretrained baseline skipped (--baseline none)")
    elif not (run_dir / "pretrained" / "checkpoints" / "best.pt").is_file():
        baselines.pop("pretrained")
        notes.append("no pretrained checkpoint in the run: that baseline was skipped")
    val, tuning_note = _tuning_episodes(config, trained)
    notes += [tuning_note] if tuning_note else []
    for label, source in baselines.items():
        lr, scores = (choose_fine_tune_lr(network, source, val) if val is not None
                      else (config.inner_lr, {}))
        results["fine_tune_lr"][label] = lr
        results["fine_tune_val_accuracy"][label] = scores
        models[label] = fine_tune_learner(network, source, lr)
    estimates_of = {}
    for label, learner in models.items():
        accuracy = protocol.curves(learner, test, steps, config.device)["query_accuracy"]
        estimates = summarize_curve({"a": accuracy})["a"]
        estimates_of[label] = estimates
        results["accuracy"][label] = [{"mean": e.mean, "ci95": e.ci95} for e in estimates]
    if notes:
        results["note"] = "; ".join(notes)
    _report(config, trained, run_dir, results, estimates_of)
    return results


def _report(config: TrainConfig, trained: TrainConfig, run_dir: Path, results: dict[str, Any],
            estimates_of: dict[str, list[Estimate]]) -> None:
    steps, queries = config.eval_inner_steps, eval_queries(config)
    picks = sorted({0, min(1, steps), min(5, steps), steps})
    where = (f" of {config.data_root}" if config.task == "images" else "")
    lines = [f"{config.task}{where} {config.ways}-way {config.shots}-shot "
             f"({class_split(config) or 'default'} split): query accuracy (%) after k steps, mean "
             f"± 95% CI over {config.test_tasks} meta-test episodes ({count(queries, 'query')} per "
             f"class, seed {TEST_SEED})",
             f"{'model':<12} " + " ".join(f"{count(k, 'step'):>15}" for k in picks)]
    lines += [_row(label, est, picks) for label, est in estimates_of.items()]
    tuned = any(results["fine_tune_val_accuracy"].values())
    lines.append("fine-tuning step size" + (" (chosen on the run's validation classes)" if tuned
                                            else "") + ": " + ", ".join(
        f"{k} {v}" for k, v in results["fine_tune_lr"].items()))
    if results.get("note"):
        lines.append(f"note: {results['note']}")
    name = _output_name(config, trained)
    replaced = (run_dir / "eval" / f"{name}.json").is_file()
    path = protocol.write_results(run_dir, results, "\n".join(lines), name)
    print(f"results: {path}"
          + (" (replaces the earlier evaluation with these settings)" if replaced else ""))
    if config.plots:
        from mamlkit.plots import plot_adaptation_curves

        suffix = "" if name == "results" else f"_{name}"
        plot_adaptation_curves(run_dir / "plots" / f"accuracy_vs_steps{suffix}.png", estimates_of,
                               "query accuracy", f"{config.task} {config.ways}-way "
                               f"{config.shots}-shot: accuracy after k steps", percent=True)
        if (run_dir / "maml" / "metrics.csv").is_file():
            _learning_curve(run_dir / "maml", run_dir, trained)
