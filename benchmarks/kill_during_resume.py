"""SIGKILL a resuming run at random moments and count the metrics.csv rows that survive.

A run with a long history (``--rows`` logged meta-iterations, one row each) is resumed again and
again, and each resume is killed after a random delay spread over its start-up, the rewrite of
metrics.csv (rows past the checkpoint are dropped on resume) and its first steps. Every row up to
the checkpoint must survive every kill. Prints one table line per setting.

    python benchmarks/kill_during_resume.py --rows 7000 --tries 20
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _mamlkit(*argv: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "mamlkit.cli", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _rows(path: Path) -> list[int]:
    with path.open(newline="") as handle:
        return [int(row["iteration"]) for row in csv.DictReader(handle)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=7000)
    parser.add_argument("--tries", type=int, default=20)
    parser.add_argument("--max-delay", type=float, default=6.0, help="seconds after the start")
    args = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp()) / "run"
    common = ["--run-dir", str(run_dir), "--meta-batch-size", "1", "--val-every", "0",
              "--log-every", "1", "--no-tensorboard", "--no-eval", "--baseline-iterations", "1"]
    start = time.perf_counter()
    first = _mamlkit("train", "sinusoid", *common, "--iterations", str(args.rows),
                     "--checkpoint-every", str(args.rows))
    assert first.wait() == 0, "the first run failed"
    print(f"history: {args.rows} rows in {time.perf_counter() - start:.0f} s")
    metrics = run_dir / "maml" / "metrics.csv"
    chooser = random.Random(0)
    kept = []
    for _ in range(args.tries):
        process = _mamlkit("train", "sinusoid", "--run-dir", str(run_dir), "--resume",
                           "--iterations", str(args.rows + 100_000), "--no-eval")
        time.sleep(chooser.uniform(0.0, args.max_delay))
        process.send_signal(signal.SIGKILL)
        process.wait()
        rows = _rows(metrics)
        kept.append(sum(1 for r in rows if r <= args.rows))
    print("| tries | kill delay (s) | rows up to the checkpoint | kept after each kill: min | max |")
    print("|---|---|---|---|---|")
    print(f"| {args.tries} | 0-{args.max_delay:g} | {args.rows} | {min(kept)} | {max(kept)} |")


if __name__ == "__main__":
    main()
