"""Few-shot text classification results: meta-learned heads vs baselines on unseen classes.

For BANKING77, CLINC150 and FewRel, 5-way 1-shot and 5-way 5-shot, this meta-trains a head on
frozen all-MiniLM-L6-v2 embeddings with every available algorithm of MAML, ANIL and Meta-SGD
(the experiments' defaults, ``--iterations`` meta-iterations), and scores each, the
nearest-prototype classifier on the frozen embeddings and the head fine-tuned from a random
initialisation on the same fixed meta-test episodes (mean query accuracy ± 95% CI). It also
reports the embedding cache's first-run vs cached wall-clock and meta-training episodes/s.
Needs the text extra (pip install "mamlkit[text]"). Example:

    python benchmarks/text_results.py --cache-dir /tmp/tc --out /tmp/text_results

Results are written after every setting to ``OUT/results.json`` and ``OUT/table.md``, so an
interrupted run keeps what it finished. Speeds depend on the machine's load, printed alongside.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from mamlkit.algorithms import ALGORITHMS
from mamlkit.config import make_config
from mamlkit.experiments import get_experiment
from mamlkit.experiments import text as text_experiment
from mamlkit.text import load_text_dataset

ALGO_LABELS = {"maml": "MAML head", "anil": "ANIL head", "metasgd": "Meta-SGD head"}


def default_data_root() -> Path:
    """``$MAMLKIT_DATA``, else the ``shared/data`` folder beside the repository."""
    env = os.environ.get("MAMLKIT_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


def cache_timings(dataset: str, data_root: Path, cache_dir: Path) -> dict[str, Any]:
    """First-run (measured now on a cold cache, else as recorded when the cache was built) and
    cached wall-clock of embedding every text of ``dataset``."""
    texts = load_text_dataset(dataset, data_root).texts
    first, info = text_experiment.sentence_embeddings(texts, cache_dir)
    again, cached = text_experiment.sentence_embeddings(texts, cache_dir)
    if not torch.equal(first, again):
        raise RuntimeError(f"{dataset}: cached embeddings differ from the computed ones")
    record = info.get("first_run", {})
    return {"texts": len(texts), "cold_now": not info["cache_hit"],
            "first_run_seconds": record.get("first_run_seconds"),
            "first_run_threads": record.get("torch_threads"),
            "first_run_at": record.get("measured_at"), "cached_seconds": cached["seconds"]}


def run_setting(dataset: str, shots: int, algos: list[str], args: argparse.Namespace
                ) -> dict[str, Any]:
    """Train and evaluate every algorithm for one dataset and shot count."""
    experiment = get_experiment(dataset)
    out: dict[str, Any] = {"dataset": dataset, "shots": shots, "algos": {}}
    for i, algo in enumerate(algos):
        chosen = {"task": dataset, "algo": algo, "shots": shots, "iterations": args.iterations,
                  "test_tasks": args.episodes, "data_root": str(args.data_root),
                  "cache_dir": str(args.cache_dir), "threads": args.threads, "tensorboard": False}
        config = make_config(experiment.defaults_for(chosen), chosen)
        run_dir = args.out / "runs" / f"{dataset}-{shots}shot-{algo}"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        start = time.perf_counter()
        summary = experiment.train(config, run_dir, False)[algo]
        train_wall = time.perf_counter() - start
        results = text_experiment.evaluate(config, run_dir, baselines=(i == 0))
        methods = results["methods"]
        out["algos"][algo] = {"accuracy": methods["meta"], "iterations": summary["iterations"],
                              "train_seconds": summary["train_seconds"],
                              "train_wall_seconds": train_wall,
                              "episodes_per_second": summary["episodes_per_second"],
                              "best_val_accuracy": summary["best_val_accuracy"],
                              "meta_batch_size": config.meta_batch_size,
                              "inner_steps": config.inner_steps,
                              "eval_inner_steps": config.eval_inner_steps}
        if i == 0:
            out["prototype"] = methods["prototype"]
            out["fine_tune"] = {**methods["fine_tune"], **results["fine_tune"]}
    return out


def _cell(estimate: dict[str, Any] | None) -> str:
    if not estimate:
        return "n/a"
    return f"{estimate['mean'] * 100:.1f} ± {estimate['ci95'] * 100:.1f}"


def markdown(report: dict[str, Any]) -> str:
    """The accuracy, speed and cache tables as Markdown."""
    algos = report["algos"]
    head = ["dataset", "setting"] + [ALGO_LABELS.get(a, a) for a in algos] + [
        "prototypes (frozen MiniLM)", "fine-tune head from random init"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in report["settings"]:
        cells = [s["dataset"], f"5-way {s['shots']}-shot"]
        cells += [_cell(s["algos"].get(a, {}).get("accuracy")) for a in algos]
        ft = s.get("fine_tune", {})
        cells += [_cell(s.get("prototype")),
                  f"{_cell(ft)} ({ft.get('steps')} steps, lr {ft.get('lr')})"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| dataset | setting | algorithm | iterations | meta-batch | train s | "
              "episodes/s |", "|---|---|---|---|---|---|---|"]
    for s in report["settings"]:
        for algo, r in s["algos"].items():
            lines.append(f"| {s['dataset']} | 5-way {s['shots']}-shot | {algo} | "
                         f"{r['iterations']} | {r['meta_batch_size']} | "
                         f"{r['train_seconds']:.0f} | {r['episodes_per_second']:.1f} |")
    lines += ["", "| dataset | texts | first run s | measured | cached run s |",
              "|---|---|---|---|---|"]
    for name, c in report["cache"].items():
        first = ("not recorded" if c["first_run_seconds"] is None
                 else f"{c['first_run_seconds']:.1f}")
        when = "this run" if c["cold_now"] else (c["first_run_at"] or "before this run")
        lines.append(f"| {name} | {c['texts']} | {first} | {when} | {c['cached_seconds']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["banking77", "clinc150", "fewrel"])
    parser.add_argument("--shots", nargs="+", type=int, default=[1, 5])
    parser.add_argument("--algos", nargs="+", default=["maml", "anil", "metasgd"])
    parser.add_argument("--iterations", type=int, default=150,
                        help="meta-iterations per run (meta-batch 16 episodes)")
    parser.add_argument("--episodes", type=int, default=600, help="meta-test episodes")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--data-root", type=Path, default=default_data_root())
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="embedding cache (default ~/.cache/mamlkit/text)")
    parser.add_argument("--out", type=Path, default=Path("runs/text_results"))
    args = parser.parse_args()
    if args.cache_dir is None:
        from mamlkit.text.embedding_cache import default_cache_dir

        args.cache_dir = default_cache_dir()
    algos = [a for a in args.algos if a in ALGORITHMS]
    missing = [a for a in args.algos if a not in ALGORITHMS]
    if missing:
        print(f"not in the algorithm registry, skipped: {', '.join(missing)}")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"algos": algos, "iterations": args.iterations,
                              "episodes": args.episodes, "threads": args.threads,
                              "load_average_start": os.getloadavg(), "cache": {},
                              "settings": []}

    def save() -> None:
        report["load_average_now"] = os.getloadavg()
        (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "table.md").write_text(markdown(report) + "\n")

    for dataset in args.datasets:
        report["cache"][dataset] = cache_timings(dataset, args.data_root, args.cache_dir)
        save()
        for shots in args.shots:
            report["settings"].append(run_setting(dataset, shots, algos, args))
            save()
            print(markdown(report), flush=True)
    print(f"load average at start {report['load_average_start']}, at end "
          f"{report['load_average_now']} (CPUs: {os.cpu_count()})")


if __name__ == "__main__":
    main()
