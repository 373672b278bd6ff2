"""Loading a text dataset by name, for configs and command lines."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from mamlkit.text.banking77 import load_banking77
from mamlkit.text.clinc150 import load_clinc150
from mamlkit.text.data import TextClassificationData
from mamlkit.text.fewrel import load_fewrel

TEXT_DATASETS: dict[str, Callable[..., TextClassificationData]] = {
    "banking77": load_banking77,
    "clinc150": load_clinc150,
    "fewrel": load_fewrel,
}
"""Dataset name -> loader taking ``(root, **options)``."""


def load_text_dataset(name: str, root: str | os.PathLike[str],
                      **options: Any) -> TextClassificationData:
    """Load the text classification dataset called ``name`` from ``root``.

    ``options`` go to the dataset's loader (for example ``include_out_of_scope=True`` for
    CLINC150 or ``download=True`` for any). Unknown names raise ``ValueError`` listing the known
    ones.
    """
    key = name.lower().replace("-", "").replace("_", "")
    if key not in TEXT_DATASETS:
        raise ValueError(
            f"unknown text dataset {name!r}; known datasets: {sorted(TEXT_DATASETS)}."
        )
    return TEXT_DATASETS[key](root, **options)
