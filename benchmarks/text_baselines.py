"""Few-shot accuracy of the non-meta-learned baselines on frozen sentence embeddings.

Meta-test classes of the default class split (BANKING77 15 intents, CLINC150 30 intents from 2
unseen domains, FewRel 4 relations), 5-way 1-shot and 5-shot episodes with 15 queries per class,
600 fixed episodes each. Embeddings: all-MiniLM-L6-v2, mean pooling, L2 norm, cached on disk.
Prints mean query accuracy and the 95% confidence interval. Needs pip install "mamlkit[text]".

    python benchmarks/text_baselines.py --dataset banking77 --cache-dir /tmp/mamlkit-cache
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from mamlkit.text import (
    default_class_split,
    embed_texts,
    group_by_class,
    linear_probe_accuracy,
    load_text_dataset,
    prototype_accuracy,
    split_class_groups,
)


def default_data_root() -> Path:
    """``$MAMLKIT_DATA``, else the ``shared/data`` folder beside the repository."""
    env = os.environ.get("MAMLKIT_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="banking77",
                        choices=["banking77", "clinc150", "fewrel"])
    parser.add_argument("--data-root", type=Path, default=default_data_root())
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--embed", choices=["all", "test"], default="test",
                        help="embed every text (one cache for all splits) or the meta-test "
                             "classes' texts only (faster first run)")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    data = load_text_dataset(args.dataset, args.data_root)
    split = default_class_split(data, seed=args.seed)
    if args.embed == "all":
        texts, labels = data.texts, data.labels
    else:
        wanted = set(split.test)
        rows = [i for i, y in enumerate(data.labels) if y in wanted]
        texts, labels = [data.texts[i] for i in rows], [data.labels[i] for i in rows]
    start = time.perf_counter()
    embeddings = embed_texts(texts, cache_dir=args.cache_dir)
    embed_s = time.perf_counter() - start
    groups = (split_class_groups(data, split, "test", embeddings) if args.embed == "all"
              else group_by_class(embeddings, labels, split.test, data.class_names))
    print(f"{args.dataset}: {len(groups)} meta-test classes, {len(texts)} texts embedded in "
          f"{embed_s:.1f}s, {args.episodes} episodes of {args.ways}-way, {args.queries} queries")
    print(f"{'shots':>5} {'prototype (euclid.)':>20} {'prototype (cosine)':>20} "
          f"{'linear probe':>15}")
    for shots in (1, 5):
        episodes = groups.sampler(args.ways, shots, args.queries, seed=args.seed)
        batch = episodes.fixed_episodes(args.episodes, seed=args.seed + 1,
                                        meta_batch_size=args.episodes).all()
        cells = []
        for accuracy in (prototype_accuracy(batch, "euclidean"),
                         prototype_accuracy(batch, "cosine"),
                         linear_probe_accuracy(batch, steps=100, lr=1.0, seed=args.seed)):
            half_width = 1.96 * accuracy.std() / accuracy.numel() ** 0.5
            cells.append(f"{100 * accuracy.mean():.1f} +- {100 * half_width:.1f}")
        print(f"{shots:>5} {cells[0]:>20} {cells[1]:>20} {cells[2]:>15}")
    print(f"chance: {100 / args.ways:.1f}; torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
