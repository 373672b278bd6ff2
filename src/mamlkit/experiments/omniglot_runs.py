"""``mamlkit eval RUN --benchmark omniglot-20runs``: Lake et al.'s 20 one-shot runs.

The run's meta-learned initialisation (output layer re-initialised to zeros for 20 ways when it
was trained with fewer) is adapted for ``eval_inner_steps`` steps on each run's 20 training
drawings, then the 20 test drawings are classified, scored two ways:

- transductive: the 20 test images in one batch, normalised with their batch statistics (the
  protocol of MAML's own evaluation);
- inductive: each test image on its own, normalised together with the 20 training images, so
  no test image's prediction depends on another test image.

The error rate is reported as mean ± 95% CI (normal approximation) over the 20 runs. Only a run
trained without the evaluation alphabets is accepted: an ``omniglot`` run must use the
``official`` class split (the ``paper`` split trains on some evaluation characters), and an
``images`` run's meta-training and validation images must not contain any benchmark drawing
(compared by decoded pixels).
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mamlkit.config import TrainConfig
from mamlkit.datasets.omniglot_runs import (
    WAYS,
    find_all_runs,
    load_lake_runs,
    pixel_hash,
    raw_pixel_hashes,
)
from mamlkit.evaluate import episode_scores, mean_ci
from mamlkit.experiments.protocol import write_results
from mamlkit.experiments.vision_data import class_split
from mamlkit.experiments.vision_eval import load_maml, network_config, trained_config
from mamlkit.tasks.base import TaskBatch

HUMAN_ERROR, BPL_ERROR = 0.045, 0.033
"""Error rates Lake et al. (2015) report for people and for Bayesian Program Learning."""


def _preprocess(trained: TrainConfig) -> tuple[Callable[[bytes], np.ndarray], Any]:
    """How the run's training images were made from a PNG, and its batch transform."""
    if trained.task == "omniglot":
        from mamlkit.datasets.omniglot import preprocess_omniglot

        return (lambda data: preprocess_omniglot(data)[None]), None
    from PIL import Image

    from mamlkit.datasets.image_folder import parse_normalize, preprocess_image
    from mamlkit.experiments.images import image_options

    options = image_options(trained)

    def convert(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as image:
            return preprocess_image(image, options)

    return convert, parse_normalize(trained.normalize, options.channels)


def check_unseen(trained: TrainConfig, all_runs: Path) -> None:
    """Refuse a run whose meta-training data holds any benchmark alphabet's drawing."""
    if trained.task == "omniglot":
        if class_split(trained) != "official":
            raise ValueError(f"this run was trained on Omniglot's {class_split(trained)!r} split, "
                             "which includes characters of the evaluation alphabets the 20 runs "
                             "use; train with --class-split official for this benchmark.")
        return
    if trained.task != "images":
        raise ValueError(f"--benchmark omniglot-20runs scores Omniglot-trained runs (omniglot or "
                         f"images); this run is a {trained.task!r} run.")
    from PIL import Image

    from mamlkit.experiments.images import class_parts, image_folder

    benchmark = raw_pixel_hashes(all_runs)
    tree, parts = image_folder(trained), class_parts(trained)
    for name in parts["train"] + parts["val"]:
        for path, _ in tree.classes[name]:
            with Image.open(path) as image:
                if pixel_hash(image) in benchmark:
                    raise ValueError(f"the run's meta-training data holds a drawing of the 20 "
                                     f"runs ({path}): it saw the evaluation alphabets. Train "
                                     "on the background alphabets only.")


def evaluate_lake_runs(config: TrainConfig, run_dir: Path) -> dict[str, Any]:
    """Error rate on the 20 runs, inductive and transductive; prints the table and saves
    ``eval/omniglot-20runs.json`` (and the table as ``eval/omniglot-20runs.txt``)."""
    trained = trained_config(run_dir)
    path = find_all_runs(config.data_root, trained.data_root)
    check_unseen(trained, path)
    network = network_config(dataclasses.replace(trained, ways=WAYS, shots=1,
                                                  eval_inner_steps=config.eval_inner_steps,
                                                  device=config.device), trained)
    learner, note = load_maml(network, run_dir)
    preprocess, transform = _preprocess(trained)
    runs = load_lake_runs(path, preprocess)
    scale = lambda a: torch.from_numpy(np.stack(a)).float().div_(255.0)  # noqa: E731
    support_x, query_x = scale([r.training for r in runs]), scale([r.test for r in runs])
    if transform is not None:
        support_x, query_x = transform(support_x), transform(query_x)
    support_y = torch.arange(WAYS).expand(len(runs), -1).contiguous()
    query_y = torch.from_numpy(np.stack([r.answers for r in runs]))
    batch = TaskBatch(support_x, support_y, query_x, query_y).to(config.device)
    steps = config.eval_inner_steps
    transductive = 1.0 - episode_scores(learner, batch, [steps])["query_accuracy"][0].cpu()
    inductive = torch.empty(len(runs))
    with torch.no_grad():
        for r in range(len(runs)):
            params = learner.adapt(batch.support_x[r], batch.support_y[r], steps)
            wrong = 0
            for i in range(WAYS):
                x = torch.cat([batch.support_x[r], batch.query_x[r, i:i + 1]])
                wrong += int(learner.predict(params, x)[-1].argmax() != batch.query_y[r, i])
            inductive[r] = wrong / WAYS
    results = {"benchmark": "omniglot-20runs", "all_runs": str(path), "steps": steps,
               "trained_on": {"task": trained.task, "class_split": class_split(trained),
                              "ways": trained.ways, "shots": trained.shots},
               "note": note, "runs": [r.name for r in runs]}
    for label, errors in (("inductive", inductive), ("transductive", transductive)):
        estimate = mean_ci(errors)
        results[label] = {"error": estimate.mean, "ci95": estimate.ci95,
                          "per_run": errors.tolist()}
    lines = [f"Lake et al.'s 20 runs of 20-way one-shot classification, {steps} adaptation steps: "
             "error rate (%), mean ± 95% CI over 20 runs"]
    lines += [f"  {label:<13} {100 * results[label]['error']:6.2f} ± "
              f"{100 * results[label]['ci95']:.2f}" for label in ("inductive", "transductive")]
    lines.append(f"  (Lake et al. 2015: people {100 * HUMAN_ERROR:.1f}, Bayesian Program "
                 f"Learning {100 * BPL_ERROR:.1f})")
    if note:
        lines.append(f"note: {note}")
    path = write_results(run_dir, results, "\n".join(lines), "omniglot-20runs")
    print(f"results: {path}")
    return results
