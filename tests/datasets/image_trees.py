"""Real images written as class-folder trees for the own-data tests: scikit-learn's bundled
``load_digits`` (1,797 8x8 handwritten digits, 10 classes) saved as PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_digits(root: Path, per_class: int | None = None, classes: range = range(10),
                 mode: str = "L") -> Path:
    """``root/digit<k>/<n>.png`` for the digits of ``classes`` (at most ``per_class`` each)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    counts: dict[int, int] = {}
    for n, (image, label) in enumerate(zip(digits.images, digits.target)):
        label = int(label)
        if label not in classes or counts.get(label, 0) == per_class:
            continue
        counts[label] = counts.get(label, 0) + 1
        folder = root / f"digit{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 255 / 16).astype(np.uint8)).convert(mode).save(
            folder / f"{n:04d}.png")
    return root
