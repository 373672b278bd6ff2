"""``mamlkit eval RUN --support-noise 0.2,0.4``: a trained image run under noisy support labels.

The run's meta-learned network adapts on the same fixed meta-test episodes as ``mamlkit eval``,
once with clean support sets and once per noise rate, with a seeded fraction of each episode's
support labels corrupted (``symmetric`` flips to another class, or ``pair`` flips to one fixed
other class; :mod:`mamlkit.noise`); query labels stay clean and every method sees the same
corrupted episodes. The metric baseline (class prototypes of the network's features) is scored
beside it. Reported: accuracy ± 95% CI at every rate and the paired drop from the clean episodes
(:func:`mamlkit.noise_protocol.evaluate_under_noise`), written to ``eval/support-noise.json`` and
``eval/support-noise.txt``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from mamlkit.algorithms import algorithm_label
from mamlkit.config import TrainConfig
from mamlkit.experiments.protocol import TEST_SEED
from mamlkit.experiments.vision_data import eval_queries, resolve_config
from mamlkit.experiments.vision_eval import (
    load_maml,
    meta_test_episodes,
    network_config,
    trained_config,
)
from mamlkit.noise import LABEL_NOISE, SupportNoise
from mamlkit.noise_protocol import adapted_score, evaluate_under_noise, noise_table, prototype_score


def evaluate_support_noise(config: TrainConfig, run_dir: Path, rates: list[float],
                           kind: str = "symmetric", seed: int = 0) -> dict[str, Any]:
    """Accuracy of the run's learner and of prototypes on its meta-test episodes with
    ``rates`` of every support set's labels corrupted (``kind``: symmetric or pair); prints the
    table and writes it with the per-rate estimates under ``run_dir/eval``."""
    if kind not in LABEL_NOISE:
        raise ValueError(f"--noise-kind {kind!r} does not apply to class labels; choose one of "
                         f"{', '.join(LABEL_NOISE)}.")
    noises = [SupportNoise(rate, kind) for rate in rates]
    config = resolve_config(config)
    trained = trained_config(run_dir) if (run_dir / "config.json").is_file() else config
    maml, note = load_maml(network_config(config, trained), run_dir)
    if note:
        print(note)
    steps, queries = config.eval_inner_steps, eval_queries(config)
    episodes = meta_test_episodes(config)
    label = algorithm_label(config.algo)
    methods = {label: adapted_score(maml, steps), "prototypes": prototype_score(maml, config.ways)}
    result = evaluate_under_noise(methods, episodes, noises, seed=seed, ways=config.ways)
    title = (f"{config.task} {config.ways}-way {config.shots}-shot, {config.test_tasks} test "
             f"episodes, {kind} support-label noise, {steps} adaptation steps: accuracy % "
             "(± 95% CI) and the paired drop from clean support sets")
    table = noise_table(result, title=title)
    settings = [result.clean, *[n for n in dict.fromkeys(noises) if n.rate > 0]]
    results = {
        "task": config.task, "ways": config.ways, "shots": config.shots, "queries": queries,
        "test_episodes": config.test_tasks, "test_seed": TEST_SEED, "noise_seed": seed,
        "kind": kind, "steps": steps,
        "accuracy": {name: {str(n.rate): dataclasses.asdict(result.estimate(name, n))
                            for n in settings} for name in methods},
        "drop": {name: {str(n.rate): dataclasses.asdict(result.drop(name, n))
                        for n in settings[1:]} for name in methods},
        "table": table}
    out = run_dir / "eval"
    out.mkdir(exist_ok=True)
    (out / "support-noise.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "support-noise.txt").write_text(table + "\n")
    print(table)
    return results
