"""LoRA-MAML inside MiniLM vs the frozen-encoder MAML head vs prototypes, few-shot intents.

For each dataset, two runs of the ``mamlkit`` CLI on the same capped data and the same fixed
meta-test episodes (``--test-tasks``, drawn with the experiment's test seed, so every method is
scored on identical episodes):

- ``--encoder lora``: LoRA adapters in MiniLM's top layer + a zero-initialised head, meta-learned
  with MAML on cached lower-layer states (first order unless ``--second-order``), under a time
  budget; its evaluation also scores prototypes on the frozen MiniLM features;
- ``--encoder pretrained``: the frozen-encoder MLP head meta-learned with MAML, and prototypes on
  frozen MiniLM sentence embeddings.

Each run trains (``--no-eval``), then ``mamlkit eval`` scores it; both are wrapped in
``/usr/bin/time -v``, and the table gives the training process's peak resident memory (model,
data and cache included). Prints a table: accuracy ± 95% CI, seconds per meta-iteration (training
time / iterations, validation excluded) and peak memory.

    HF_HUB_OFFLINE=1 MAMLKIT_DATA=/path/to/data nice -n 10 python benchmarks/text_lora.py \\
        --datasets banking77 clinc150 --max-per-class 20 --lora-minutes 12 --out runs/text-lora
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path


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
    the prototypes' on the frozen encoder, over the run's fixed meta-test episodes; the same
    numbers as ``mamlkit eval``'s ``meta`` and ``prototype`` rows, without its fine-tune baseline
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
    proto, features = prototype_accuracies(config, task, learner, test)
    proto_estimate = mean_ci(proto)
    methods = {
        "meta": {"label": f"{config.algo} ({config.eval_inner_steps} steps)", "mean": meta.mean,
                 "ci95": meta.ci95, "n": meta.n},
        "prototype": {"label": f"prototypes on {features}", "mean": proto_estimate.mean,
                      "ci95": proto_estimate.ci95, "n": proto_estimate.n},
    }
    (run_dir / "eval").mkdir(exist_ok=True)
    (run_dir / "eval" / "results.json").write_text(json.dumps({"methods": methods}, indent=2))
    return methods


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["banking77", "clinc150"])
    parser.add_argument("--max-per-class", type=int, default=20)
    parser.add_argument("--lora-minutes", type=float, default=12.0)
    parser.add_argument("--test-tasks", type=int, default=600)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--second-order", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("runs/text-lora"))
    options = parser.parse_args()
    common = ["--max-per-class", str(options.max_per_class), "--test-tasks",
              str(options.test_tasks), "--threads", str(options.threads), "--overwrite"]
    rows = []
    for dataset in options.datasets:
        runs = {
            "lora": ["--encoder", "lora", "--iterations", "100000", "--time-budget-minutes",
                     str(options.lora_minutes)] + (["--no-first-order"] if options.second_order
                                                   else []),
            "pretrained": ["--encoder", "pretrained", "--iterations", "150"],  # docs/text.md's
        }
        for name, extra in runs.items():
            run_dir = options.out / f"{dataset}-{name}"
            train_log = options.out / f"{dataset}-{name}.log"
            if not (run_dir / "train_summary.json").is_file():
                run(["train", dataset, "--run-dir", str(run_dir), "--no-eval", *common, *extra],
                    train_log)
            if not (run_dir / "eval" / "results.json").is_file():  # a budget stop skips it
                if name == "lora":
                    score_cached_state_run(run_dir)
                else:
                    run(["eval", str(run_dir)], options.out / f"{dataset}-{name}-eval.log")
            peak = peak_mib(train_log)
            summary = json.loads((run_dir / "train_summary.json").read_text())["maml"]
            methods = json.loads((run_dir / "eval" / "results.json").read_text())["methods"]
            per_iteration = summary["train_seconds"] / max(summary["iterations"], 1)
            label = ("LoRA-MAML" + (" (2nd order)" if options.second_order else " (1st order)")
                     if name == "lora" else "frozen-encoder MAML head")
            rows.append((dataset, label, methods["meta"], per_iteration, summary["iterations"],
                         peak))
            proto = methods["prototype"]
            rows.append((dataset, proto["label"], proto, None, 0, None))
    print(f"{'dataset':<10} {'method':<58} {'accuracy %':>14} {'s/iter':>7} {'iters':>6} "
          f"{'peak MiB':>8}")
    for dataset, label, estimate, seconds, iterations, peak in rows:
        accuracy = f"{estimate['mean'] * 100:.2f} ± {estimate['ci95'] * 100:.2f}"
        timing = f"{seconds:7.2f}" if seconds is not None else f"{'-':>7}"
        memory = f"{peak:8d}" if peak is not None else f"{'-':>8}"
        count = f"{iterations:6d}" if iterations else f"{'-':>6}"
        print(f"{dataset:<10} {label:<58} {accuracy:>14} {timing} {count} {memory}")


if __name__ == "__main__":
    main()
