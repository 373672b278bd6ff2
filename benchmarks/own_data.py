"""Your own images: folder trees through the command line, DataLoader throughput, memory.

Writes real images as class-folder trees (scikit-learn's bundled ``load_digits``; the shared
Omniglot zips extracted as PNG folders), then, by part:

- ``digits`` and ``omniglot``: ``mamlkit train images`` + ``mamlkit eval`` (command line only)
  on the digits tree and on Omniglot's background alphabets, cross-domain evaluation of the
  Omniglot run on the evaluation alphabets and on the digits, and Lake et al.'s 20 runs; one
  table of accuracy (or error) ± 95% CI, read from the runs' result files;
- ``throughput``: episodes per second from the Omniglot PNG folder (cold and warm cache) with
  0 and 2 DataLoader workers, against the in-RAM sampler over the same images decoded;
- ``rss``: peak RSS of ``mamlkit train images`` on the digits tree and on the same tree with
  8 times the images (each digit shifted to 8 distinct positions), against holding the images
  in RAM.

    nice -n 10 python benchmarks/own_data.py --out /tmp/own-data digits omniglot throughput rss \\
        [--minutes 3] [--omniglot-minutes 8] [--episodes 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# -------------------------------------------------------------------------------------- trees
def write_digits(root: Path, copies: int = 1) -> Path:
    """``root/digit<k>/<n>.png`` (8x8 greyscale); ``copies`` > 1 adds shifted copies."""
    from PIL import Image
    from sklearn.datasets import load_digits

    if root.is_dir():
        return root
    digits = load_digits()
    for n, (image, label) in enumerate(zip(digits.images, digits.target)):
        folder = root / f"digit{label}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (image * 255 / 16).astype(np.uint8)
        for c in range(copies):
            shifted = np.roll(pixels, (c // 4 - 1 if copies > 1 else 0, c % 4 - 2 if copies > 1
                                       else 0), axis=(0, 1))
            Image.fromarray(shifted).save(folder / f"{n:04d}_{c}.png")
    return root


def extract_omniglot(data: Path, out: Path) -> tuple[Path, Path]:
    """The official background/evaluation zips as PNG folder trees."""
    trees = []
    for split in ("background", "evaluation"):
        tree = out / f"images_{split}"
        if not tree.is_dir():
            with zipfile.ZipFile(data / "omniglot" / f"images_{split}.zip") as archive:
                archive.extractall(out)
        trees.append(tree)
    return trees[0], trees[1]


def mamlkit(*argv: str) -> None:
    """One ``mamlkit`` command in a fresh process (so its peak RSS is its own)."""
    print("$ mamlkit " + " ".join(argv), flush=True)
    subprocess.run([sys.executable, "-m", "mamlkit.cli", *argv], check=True)


# --------------------------------------------------------------------------------------- runs
def part_digits(args: argparse.Namespace) -> list[str]:
    """MAML on the digits tree: five classes to meta-train, five unseen ones to meta-test."""
    digits = write_digits(args.out / "digits")
    run = args.out / "run-digits"
    if not (run / "eval" / "results.json").is_file():
        mamlkit("train", "images", "--data-root", str(digits), "--run-dir", str(run),
                "--class-split", "5,0,5", "--time-budget-minutes", str(args.minutes),
                "--eval-queries", "10", "--baseline-iterations", "200", "--overwrite",
                "--cache-dir", str(args.out / "cache"), "--threads", str(args.threads),
                "--no-tensorboard")
    return _table(args)


def part_omniglot(args: argparse.Namespace) -> list[str]:
    """MAML on Omniglot's background alphabets as PNG folders, then evaluated on the evaluation
    alphabets and on the digits (cross-domain, against a random initialisation fine-tuned the
    same way) and on Lake et al.'s 20 runs."""
    background, evaluation = extract_omniglot(args.data_root, args.out)
    digits = write_digits(args.out / "digits")
    run, cache = args.out / "run-omniglot-png", ["--cache-dir", str(args.out / "cache")]
    common = ["--threads", str(args.threads), "--test-episodes", str(args.episodes), *cache]
    if not (run / "eval" / "results.json").is_file():
        mamlkit("train", "images", "--data-root", str(background), "--run-dir", str(run),
                "--invert", "--time-budget-minutes", str(args.omniglot_minutes),
                "--val-every", "100", "--val-tasks", "50", "--checkpoint-every", "100",
                "--baseline", "none", "--test-tasks", str(args.episodes), "--eval-queries", "5",
                "--overwrite", "--no-tensorboard", *cache, "--threads", str(args.threads))
    mamlkit("eval", str(run), "--task", "images", "--data-root", str(evaluation),
            "--queries", "5", *common)
    mamlkit("eval", str(run), "--task", "images", "--data-root", str(digits), "--no-invert",
            "--queries", "10", *common)
    mamlkit("eval", str(run), "--benchmark", "omniglot-20runs", "--data-root",
            str(args.data_root), "--threads", str(args.threads))
    return _table(args)


def _table(args: argparse.Namespace) -> list[str]:
    """Accuracy (or error) ± 95% CI of every finished run below ``--out``."""
    rows = ["| run | evaluated on | model | after 10 steps (%) |", "|---|---|---|---|"]
    for run in (args.out / "run-digits", args.out / "run-omniglot-png"):
        if not (run / "train_summary.json").is_file():
            continue
        summary = json.loads((run / "train_summary.json").read_text())["maml"]
        trained = f"{run.name} ({summary['iterations']} it, {summary['train_seconds']:.0f} s)"
        for path in sorted((run / "eval").glob("*.json")):
            result = json.loads(path.read_text())
            if "accuracy" in result:
                where = (f"{Path(result['data_root']).name} ({result['ways']}-way "
                         f"{result['shots']}-shot, {result['test_episodes']} episodes)")
                rows += [f"| {trained} | {where} | {label} accuracy | "
                         f"{100 * c[-1]['mean']:.2f} ± {100 * c[-1]['ci95']:.2f} |"
                         for label, c in result["accuracy"].items()]
            for mode in ("inductive", "transductive"):
                if mode in result:
                    rows.append(f"| {trained} | Lake's 20 runs, 20-way 1-shot | {mode} error | "
                                f"{100 * result[mode]['error']:.2f} ± "
                                f"{100 * result[mode]['ci95']:.2f} |")
    return rows


# --------------------------------------------------------------------------------- throughput
def _rate(sample, batches: int) -> float:
    sample()  # start-up (workers) not counted
    start = time.perf_counter()
    for _ in range(batches):
        sample()
    return batches / (time.perf_counter() - start)


def part_throughput(args: argparse.Namespace) -> list[str]:
    import torch

    from mamlkit.datasets import EpisodeLoader, EpisodeSampler, ImageFolder, ImageOptions

    torch.set_num_threads(1)
    background, _ = extract_omniglot(args.data_root, args.out)
    cache = args.out / f"throughput-cache-{os.getpid()}"
    folder = ImageFolder(background, ImageOptions(28, 1, True), cache_dir=cache)
    examples = folder.examples()
    ways, shots, queries, tasks, batches = 5, 1, 5, 32, args.batches
    rows = [f"episodes/s, {ways}-way {shots}-shot {queries}-query, meta-batch {tasks}, "
            f"{batches} batches each, {folder.summary}",
            "| source | workers | on-disk cache | episodes/s |", "|---|---|---|---|"]
    for workers in (0, 2):
        for state in ("cold", "warm"):
            if state == "cold":
                for entry in cache.glob("??/*.u8"):
                    entry.unlink()
            # a fresh view: its in-memory copies start empty, as in a new training process
            sampler = EpisodeSampler(folder.examples(), ways, shots, queries)
            loader = EpisodeLoader(sampler, tasks, num_workers=workers, seed=workers)
            rate = _rate(lambda loader=loader: loader.sample(tasks), batches) * tasks
            loader.close()
            rows.append(f"| folder (lazy, on-disk cache) | {workers} | {state} | {rate:.0f} |")
    dense = examples.take(np.arange(len(examples)))  # the same images, decoded, in RAM
    # steady state of a long run on a dataset within the in-memory bound: every image read once
    warm = EpisodeSampler(examples, ways, shots, queries)
    rate = _rate(lambda: warm.sample(tasks), batches)
    rows.append(f"| folder, every image already read once (in-memory copies) | 0 | warm | "
                f"{rate * tasks:.0f} |")
    in_ram = EpisodeSampler([dense[o:o + c] for o, c in zip(examples.offsets, examples.counts)],
                            ways, shots, queries)
    rate = _rate(lambda: in_ram.sample(tasks), batches) * tasks
    rows.append(f"| in-RAM EpisodeSampler ({dense.nbytes / 2**20:.0f} MiB) | 0 | - | {rate:.0f} |")
    return rows


# ---------------------------------------------------------------------------------------- rss
def _peak_rss_mib(argv: list[str]) -> float:
    """Peak RSS (MiB) of one child process running ``argv`` (its own, from ``wait4``)."""
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise RuntimeError(f"{' '.join(argv[:6])} ... failed with status {child.returncode}")
    return usage.ru_maxrss / 1024


IN_RAM = """
import sys, numpy as np
from mamlkit.datasets import EpisodeSampler, ImageFolder, ImageOptions
folder = ImageFolder(sys.argv[1], ImageOptions(84, 3), cache_dir=sys.argv[2])
ex = folder.examples()
dense = ex.take(np.arange(len(ex)))
s = EpisodeSampler([dense[o:o + c] for o, c in zip(ex.offsets, ex.counts)], 5, 1, 1)
for _ in range(20):
    s.sample(2)
"""


def part_rss(args: argparse.Namespace) -> list[str]:
    trees = {"digits": write_digits(args.out / "rss-digits"),
             "digits x8": write_digits(args.out / "rss-digits-x8", copies=8)}
    rows = ["peak RSS (MiB), training 84x84 RGB (images upscaled from 8x8), 30 iterations, "
            "baseline none, one process each", "| dataset | images | mamlkit train images | "
            "all images in RAM + EpisodeSampler |", "|---|---|---|---|"]
    peaks = {}
    for name, tree in trees.items():
        count = sum(1 for _ in tree.rglob("*.png"))
        run = args.out / f"rss-run-{name.replace(' ', '')}"
        cache = args.out / "rss-cache"
        train = [sys.executable, "-m", "mamlkit.cli", "train", "images", "--data-root", str(tree),
                 "--run-dir", str(run), "--overwrite", "--image-size", "84", "--channels", "3",
                 "--class-split", "5,0,5", "--iterations", "30", "--meta-batch-size", "2",
                 "--hidden", "32", "--baseline", "none", "--no-eval", "--no-tensorboard",
                 "--no-plots", "--threads", str(args.threads), "--cache-dir", str(cache)]
        lazy = _peak_rss_mib(train)
        ram = _peak_rss_mib([sys.executable, "-c", IN_RAM, str(tree), str(cache / "images")])
        peaks[name] = (lazy, ram)
        rows.append(f"| {name} | {count} | {lazy:.0f} | {ram:.0f} |")
    (small, small_ram), (big, big_ram) = peaks["digits"], peaks["digits x8"]
    rows.append(f"| ratio x8 / x1 | 8 | {big / small:.3f} | {big_ram / small_ram:.3f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="+", choices=("digits", "omniglot", "throughput", "rss"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data-root", type=Path,
                        default=Path(os.environ.get("MAMLKIT_DATA", str(DEFAULT_DATA))))
    parser.add_argument("--minutes", type=float, default=3.0, help="digits training budget")
    parser.add_argument("--omniglot-minutes", type=float, default=8.0)
    parser.add_argument("--episodes", type=int, default=200, help="omniglot: test episodes")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, default=20, help="throughput: batches timed")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    parts = {"digits": part_digits, "omniglot": part_omniglot, "throughput": part_throughput,
             "rss": part_rss}
    for name in args.parts:
        rows = parts[name](args)
        print("\n".join(["", f"## {name}", *rows]), flush=True)


if __name__ == "__main__":
    main()
