"""Noisy support sets on Omniglot: every remedy against plain MAML and prototypes.

Each method is meta-trained from the same initialisation on the official background alphabets
for the same number of meta-iterations (5-way, ``--shots`` shots, 1 inner step at lr 0.4, Adam
1e-3), then every method adapts (10 steps at lr 0.4) on the *same* fixed 5-way test episodes of
the evaluation alphabets, whose support labels are corrupted with the same seeded draw for every
method (symmetric and pair flips at ``--rates``); queries are clean, 15 per class. Prototypes
are nearest-class-mean classification on the plain MAML network's features.

    python benchmarks/noise_robustness.py --shots 5 --iterations 300 --episodes 600

Trained weights are kept under ``--cache`` so that the evaluation can be rerun alone; the table
is printed and written beside them as Markdown and JSON, with the paired gaps under it (each
method's clean accuracy against MAML's, its drop against the prototypes'). ``--cost N`` only
times N meta-iterations of each method, in CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import torch

import mamlkit
from mamlkit.algorithms import ALGORITHMS
from mamlkit.datasets.omniglot import Omniglot
from mamlkit.evaluate import mean_ci
from mamlkit.noise import NoisySupportSampler, SupportNoise, parse_rates
from mamlkit.noise_protocol import (
    NoiseResult,
    adapted_score,
    evaluate_under_noise,
    noise_table,
    prototype_score,
)

METHODS = {
    "MAML": {},
    "ProtoMAML": {"algo": "protomaml"},
    "ProtoMAML + prototype weights": {"algo": "protomaml", "support_weights": "prototype"},
    "ProtoMAML + robust prototypes": {"algo": "protomaml", "support_weights": "prototype",
                                      "weighted_prototypes": True},
    "ProtoMAML + robust prototypes (T0=1)": {"algo": "protomaml",
                                             "support_weights": "prototype:1.0",
                                             "weighted_prototypes": True},
    "noise-aware ProtoMAML + robust prototypes (train p=0.2)": {
        "algo": "protomaml", "support_weights": "prototype", "weighted_prototypes": True,
        "train_noise": 0.2},
    "MAML + GCE inner loss": {"inner_loss": "gce"},
    "MAML + SCE inner loss": {"inner_loss": "sce"},
    "MAML + prototype weights": {"support_weights": "prototype"},
    "noise-aware MAML (train p=0.2)": {"train_noise": 0.2},
    "noise-aware MAML + prototype weights": {"train_noise": 0.2, "support_weights": "prototype"},
    "MAML + robust-prototype weights": {"support_weights": "robust-prototype"},
    "MAML + GCE + robust-prototype weights": {"inner_loss": "gce",
                                              "support_weights": "robust-prototype"},
    "noise-aware MAML + robust-prototype weights (train p=0.2)": {
        "train_noise": 0.2, "support_weights": "robust-prototype"},
}
"""Label -> options: learner keyword arguments, plus ``algo`` (an algorithm name of
:data:`mamlkit.algorithms.ALGORITHMS`, default maml) and ``train_noise`` (support noise rate during
meta-training, symmetric)."""
NOT_LEARNER = ("algo", "train_noise")

WAYS, INNER_LR, META_LR, EVAL_STEPS, QUERIES, TEST_SEED = 5, 0.4, 1e-3, 10, 15, 2_000_003


def data_root() -> Path:
    env = os.environ.get("MAMLKIT_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def learner_for(options: dict, seed: int) -> mamlkit.MetaLearner:
    torch.manual_seed(seed)  # the same initialisation for every method
    kwargs = {k: v for k, v in options.items() if k not in NOT_LEARNER}
    algorithm = ALGORITHMS[options.get("algo", "maml")]
    return algorithm(mamlkit.omniglot_cnn(WAYS), inner_lr=INNER_LR, inner_steps=1,
                     eval_inner_steps=EVAL_STEPS, loss="cross_entropy", **kwargs)


def cache_name(label: str) -> str:
    """The file name of a method's trained weights: its label in lower case, words joined by -."""
    return "-".join(re.findall(r"[a-z0-9.=]+", label.lower()))


def train(label: str, options: dict, data: Omniglot, args: argparse.Namespace, path: Path
          ) -> mamlkit.MetaLearner:
    learner = learner_for(options, args.seed)
    if path.is_file():
        learner.load_state_dict(torch.load(path, weights_only=True))
        return learner
    sampler = data.sampler(WAYS, args.shots, args.shots, seed=args.seed)
    if options.get("train_noise"):
        sampler = NoisySupportSampler(sampler, SupportNoise(options["train_noise"]), seed=args.seed,
                                      ways=WAYS)
    seconds, cpu_seconds = meta_train(label, learner, sampler, args.iterations,
                                      args.meta_batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(learner.state_dict(), path)
    path.with_suffix(".json").write_text(json.dumps({"train_seconds": seconds,
                                                     "train_cpu_seconds": cpu_seconds}))
    print(f"{label}: {args.iterations} meta-iterations in {seconds:.0f} s "
          f"({cpu_seconds:.0f} s of CPU)", flush=True)
    return learner


def meta_train(label: str, learner: mamlkit.MetaLearner, sampler, iterations: int,
               meta_batch_size: int) -> tuple[float, float]:
    """``iterations`` Adam steps on meta-batches of ``sampler``; wall and process CPU seconds."""
    optimizer = torch.optim.Adam(learner.parameters(), lr=META_LR)
    start, cpu = time.perf_counter(), time.process_time()
    for iteration in range(iterations):
        if iteration and iteration % 50 == 0:
            print(f"{label}: iteration {iteration}, {time.perf_counter() - start:.0f} s", flush=True)
        optimizer.zero_grad()
        learner.meta_backward(sampler.sample(meta_batch_size))
        optimizer.step()
    return time.perf_counter() - start, time.process_time() - cpu


def training_cost(labels: list[str], data: Omniglot, args: argparse.Namespace) -> str:
    """A table of the CPU seconds per meta-iteration of each method, timed in turn in this
    process over ``args.cost`` iterations (nothing is cached)."""
    rows = ["| method | CPU s per meta-iteration | ratio to MAML |", "|---|---|---|"]
    costs = {}
    for label in labels:
        sampler = data.sampler(WAYS, args.shots, args.shots, seed=args.seed)
        learner = learner_for(METHODS[label], args.seed)
        meta_train(label, learner, sampler, 2, args.meta_batch_size)  # warm-up
        costs[label] = meta_train(label, learner, sampler, args.cost, args.meta_batch_size)[1] \
            / args.cost
    base = costs.get("MAML")
    for label, cost in costs.items():
        rows.append(f"| {label} | {cost:.3f} | {cost / base:.2f} |" if base else
                    f"| {label} | {cost:.3f} | |")
    return "\n".join(rows)


def title_of(args: argparse.Namespace) -> str:
    """The table's title: the episodes and the budget every method was meta-trained with."""
    return (f"Omniglot 5-way {args.shots}-shot, evaluation alphabets, {args.episodes} episodes "
            f"({QUERIES} clean queries per class), accuracy % after {EVAL_STEPS} steps; "
            f"meta-trained {args.iterations} iterations x {args.meta_batch_size} tasks on the "
            f"background alphabets")


def merged_scores(paths: list[Path]) -> NoiseResult:
    """The per-episode scores of several evaluations (``OUT.scores.json``) as one result; they
    must hold the same noise settings over the same number of episodes."""
    scores: dict[str, dict[SupportNoise, torch.Tensor]] = {}
    for path in paths:
        for method, per in json.loads(path.read_text()).items():
            settings = {}
            for key, values in per.items():
                kind, rate = key.split("@")
                settings[SupportNoise(float(rate), kind)] = torch.tensor(values)
            scores[method] = settings
    shapes = {(tuple(sorted(map(str, per))), len(next(iter(per.values()))))
              for per in scores.values()}
    if len(shapes) != 1:
        raise SystemExit(f"The evaluations differ in noise settings or episodes: {sorted(shapes)}")
    clean = next(n for n in next(iter(scores.values())) if n.rate == 0)
    return NoiseResult(scores, clean)


def paired_gaps(result: NoiseResult, clean_reference: str = "MAML",
                drop_reference: str = "prototypes (MAML's features)") -> str:
    """Per-episode paired differences, mean ± 95% CI: each method's clean accuracy minus
    ``clean_reference``'s, and its drop at every noisy setting minus ``drop_reference``'s (the
    goal: a drop no larger than the prototypes' with clean accuracy within a point of MAML's)."""
    if not {clean_reference, drop_reference} <= set(result.scores):
        return ""
    noisy = [n for n in result.scores[clean_reference] if n.rate > 0]
    rows = ["| method | clean − " + clean_reference + " | " + " | ".join(
        f"drop − prototypes' ({n.kind} {n.rate:g})" for n in noisy) + " |",
        "|---|---|" + "---|" * len(noisy)]

    def drop(method: str, noise: SupportNoise) -> torch.Tensor:
        return result.scores[method][result.clean] - result.scores[method][noise]

    for method, per in result.scores.items():
        if method in (clean_reference, drop_reference):
            continue
        cells = [mean_ci(per[result.clean] - result.scores[clean_reference][result.clean])]
        cells += [mean_ci(drop(method, n) - drop(drop_reference, n)) for n in noisy]
        rows.append(f"| {method} | " + " | ".join(
            f"{100 * e.mean:+.2f} ± {100 * e.ci95:.2f}" for e in cells) + " |")
    return "\n".join(rows)


def report(result: NoiseResult, args: argparse.Namespace) -> str:
    """The noise table of ``result`` with its paired gaps under it."""
    return noise_table(result, title=title_of(args)) + "\n\n" + paired_gaps(result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--meta-batch-size", type=int, default=16)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--rates", default="0.2,0.4")
    parser.add_argument("--kinds", default="symmetric,pair",
                        help="noise kinds evaluated, comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                        metavar="LABEL")
    parser.add_argument("--cache", type=Path, default=Path("runs/noise"))
    parser.add_argument("--out", default="table",
                        help="the table and scores are written to CACHE/TAG/OUT.table.md and "
                             "OUT.scores.json")
    parser.add_argument("--merge", nargs="+", type=Path, default=[], metavar="JSON",
                        help="print one table from the scores of several evaluations of the same "
                             "episodes (OUT.scores.json files) instead of evaluating")
    parser.add_argument("--train-only", action="store_true",
                        help="meta-train (or load) the methods, evaluate nothing")
    parser.add_argument("--cost", type=int, default=0, metavar="ITERATIONS",
                        help="only time ITERATIONS meta-iterations of each method (CPU seconds "
                             "per iteration) and print the table")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.merge:
        print(report(merged_scores(args.merge), args))
        return 0
    root = data_root() / "omniglot"
    background = Omniglot(root, split="background")
    evaluation = Omniglot(root, split="evaluation")
    if args.cost:
        print(training_cost([label for label in METHODS if label in args.methods], background,
                            args))
        return 0
    tag = f"5w{args.shots}s-{args.iterations}it-b{args.meta_batch_size}-seed{args.seed}"
    learners = {label: train(label, METHODS[label], background, args,
                             args.cache / tag / f"{cache_name(label)}.pt")
                for label in METHODS if label in args.methods}
    if args.train_only:
        return 0
    methods = {label: adapted_score(learner, EVAL_STEPS) for label, learner in learners.items()}
    if "MAML" in learners:
        methods["prototypes (MAML's features)"] = prototype_score(learners["MAML"], WAYS)
    episodes = evaluation.sampler(WAYS, args.shots, QUERIES).fixed_episodes(
        args.episodes, TEST_SEED, meta_batch_size=50)
    noises = [SupportNoise(rate, kind) for kind in args.kinds.split(",")
              for rate in parse_rates(args.rates)]
    start = time.perf_counter()
    result = evaluate_under_noise(methods, episodes, noises, seed=args.seed, ways=WAYS)
    table = report(result, args)
    print(table)
    print(f"evaluation: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    out = args.cache / tag
    (out / f"{args.out}.table.md").write_text(table + "\n")
    (out / f"{args.out}.scores.json").write_text(json.dumps({
        name: {f"{n.kind}@{n.rate:g}": v.tolist() for n, v in per.items()}
        for name, per in result.scores.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
