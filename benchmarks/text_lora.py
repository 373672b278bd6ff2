"""LoRA inside MiniLM (MAML with a zero head, ProtoMAML) vs the frozen-encoder MAML head vs
prototypes, few-shot intents.

For each dataset, runs of the ``mamlkit`` CLI on the same capped data and the same fixed
meta-test episodes (``--test-tasks``, drawn with the experiment's test seed, so every method is
scored on identical episodes):

- ``lora``: LoRA adapters (query, value) in MiniLM's top layer + a zero-initialised head,
  meta-learned with first-order MAML on cached lower-layer states, under a time budget;
- ``lora-protomaml``: ``--encoder lora --algo protomaml``: adapters in all six linear maps of the
  top layer, the head set from the support prototypes in every episode (Triantafillou et al.,
  2020), Adam 1e-3, under the same budget; with ``--protomaml-train-cap eval`` (the default) the
  cap applies to the meta-validation and meta-test intents only, so the test episodes are the
  same and meta-training reads every example of the meta-train intents;
- ``pretrained``: the frozen-encoder MLP head meta-learned with MAML, and prototypes on frozen
  MiniLM sentence embeddings.

Each run trains (``--no-eval``) under ``/usr/bin/time -v`` (the table gives the training process's
peak resident memory: model, data and cache included); the frozen head is scored by ``mamlkit
eval``, the cached-state runs by :func:`score_cached_state_run`. A run folder that already holds
its results is read, not rerun. Prints a table: accuracy ± 95% CI, seconds per meta-iteration
(training time / iterations, validation excluded), meta-iterations and peak memory.

    HF_HUB_OFFLINE=1 MAMLKIT_DATA=/path/to/data nice -n 10 python benchmarks/text_lora.py \\
        --datasets banking77 clinc150 --max-per-class 20 --lora-minutes 10 --out runs/text-lora
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any


def run(args: list[str], log: Path) -> None:
    """Run ``python -m mamlkit.cli ARGS`` under ``/usr/bin/time -v``, output to ``log``."""
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "mamlkit.cli", *args]
    with log.open("w") as out:
        subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=True)


def peak_mib(log: Path) -> int:
    """Peak resident memory in MiB that ``/usr/bin/time -v`` wrote to ``log`` (-1 if absent)."""
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", log.read_text())
    return int(found.group(1)) // 1024 if found else -1


def score_cached_state_run(run_dir: Path) -> dict[str, dict]:
    """The meta-learned model's query accuracy after ``eval_inner_steps`` adaptation steps, and
    the prototypes' on the frozen encoder and on the meta-learned features, over the run's fixed
    meta-test episodes; the same numbers as ``mamlkit eval``'s ``meta``, ``prototype`` and
    ``prototype_meta_learned`` rows, without its fine-tune baseline
    and without scoring every intermediate step (a transformer layer per step and episode is
    slow on a shared CPU). Written to ``run_dir/eval/results.json``."""
    import torch

    from mamlkit.config import make_config
    from mamlkit.evaluate import mean_ci
    from mamlkit.experiments.common import load_run_config, setup_torch
    from mamlkit.experiments.text import (
        TEST_SEED,
        _episodes,
        load_learner,
        prepare_task,
        prototype_accuracies,
    )

    config = make_config(load_run_config(run_dir), {})
    setup_torch(config)
    task = prepare_task(config)
    learner = load_learner(config, task, run_dir)
    test = _episodes(task, config, "test", config.test_tasks, TEST_SEED)
    scores = []
    for batch in test:
        for i in range(batch.num_tasks):
            with torch.no_grad():
                adapted = learner.adapt(batch.support_x[i], batch.support_y[i])
                logits = learner.predict(adapted, batch.query_x[i])
            scores.append((logits.argmax(-1) == batch.query_y[i]).float().mean())
    meta = mean_ci(torch.stack(scores))
    methods = {"meta": {"label": f"{config.algo} ({config.eval_inner_steps} steps)",
                        **_estimate(meta)}}
    for key, meta_learned in (("prototype", False), ("prototype_meta_learned", True)):
        accuracies, features = prototype_accuracies(config, task, learner, test,
                                                    meta_learned=meta_learned)
        methods[key] = {"label": f"prototypes on {features}", **_estimate(mean_ci(accuracies))}
    (run_dir / "eval").mkdir(exist_ok=True)
    (run_dir / "eval" / "results.json").write_text(json.dumps({"methods": methods}, indent=2))
    return methods


def _estimate(estimate: Any) -> dict[str, float]:
    return {"mean": estimate.mean, "ci95": estimate.ci95, "n": estimate.n}


METHODS = ("lora", "lora-protomaml", "pretrained")
"""The runs per dataset: LoRA-MAML with a zero head, LoRA-ProtoMAML meta-trained on every
example of the meta-train intents, the frozen-encoder MAML head."""


def run_arguments(name: str, options: argparse.Namespace) -> tuple[list[str], str]:
    """The ``mamlkit train`` options of method ``name`` and its label in the table."""
    order = ["--no-first-order"] if options.second_order else []
    budget = ["--iterations", "100000", "--time-budget-minutes", str(options.lora_minutes)]
    kind = "2nd order" if options.second_order else "1st order"
    if name == "lora":
        return ["--encoder", "lora", *budget, *order], f"LoRA-MAML, zero head ({kind})"
    if name == "lora-protomaml":
        return (["--encoder", "lora", "--algo", "protomaml", "--meta-lr",
                 str(options.protomaml_meta_lr), "--max-per-class-splits",
                 options.protomaml_train_cap, *budget, *order],
                f"LoRA-ProtoMAML ({kind}, meta-train cap: {options.protomaml_train_cap})")
    return ["--encoder", "pretrained", "--iterations", "150"], "frozen-encoder MAML head"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["banking77", "clinc150"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--max-per-class", type=int, default=20)
    parser.add_argument("--lora-minutes", type=float, default=12.0)
    parser.add_argument("--protomaml-meta-lr", type=float, default=1e-3)
    parser.add_argument("--protomaml-train-cap", choices=("all", "eval"), default="eval",
                        help="eval: --max-per-class caps only the meta-validation and meta-test "
                             "intents (the same test episodes), meta-training reads all")
    parser.add_argument("--test-tasks", type=int, default=600)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--second-order", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("runs/text-lora"))
    options = parser.parse_args()
    options.out.mkdir(parents=True, exist_ok=True)
    common = ["--max-per-class", str(options.max_per_class), "--test-tasks",
              str(options.test_tasks), "--threads", str(options.threads), "--overwrite"]
    rows = []
    for dataset in options.datasets:
        for name in options.methods:
            extra, label = run_arguments(name, options)
            run_dir = options.out / f"{dataset}-{name}"
            train_log = options.out / f"{dataset}-{name}.log"
            if not (run_dir / "train_summary.json").is_file():
                run(["train", dataset, "--run-dir", str(run_dir), "--no-eval", *common, *extra],
                    train_log)
            if not (run_dir / "eval" / "results.json").is_file():
                if name == "pretrained":
                    run(["eval", str(run_dir)], options.out / f"{dataset}-{name}-eval.log")
                else:
                    score_cached_state_run(run_dir)
            summary = json.loads((run_dir / "train_summary.json").read_text())
            trained = next(v for k, v in summary.items() if k != "data")
            methods = json.loads((run_dir / "eval" / "results.json").read_text())["methods"]
            per_iteration = trained["train_seconds"] / max(trained["iterations"], 1)
            rows.append((dataset, label, methods["meta"], per_iteration, trained["iterations"],
                         peak_mib(train_log)))
            for key in ("prototype", "prototype_meta_learned"):
                if key in methods and (key != "prototype" or name != "lora-protomaml"):
                    rows.append((dataset, methods[key]["label"], methods[key], None, 0, None))
    print(f"{'dataset':<10} {'method':<62} {'accuracy %':>14} {'s/iter':>7} {'iters':>6} "
          f"{'peak MiB':>8}")
    for dataset, label, estimate, seconds, iterations, peak in rows:
        accuracy = f"{estimate['mean'] * 100:.2f} ± {estimate['ci95'] * 100:.2f}"
        timing = f"{seconds:7.2f}" if seconds is not None else f"{'-':>7}"
        memory = f"{peak:8d}" if peak is not None else f"{'-':>8}"
        count = f"{iterations:6d}" if iterations else f"{'-':>6}"
        print(f"{dataset:<10} {label:<62} {accuracy:>14} {timing} {count} {memory}")


if __name__ == "__main__":
    main()
