"""The MAML family: each algorithm is one small file on top of the shared driver.

:data:`ALGORITHMS` maps a name (as on the command line or in a config) to its class, and
:func:`make_algorithm` builds one by name.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mamlkit.algorithms.anil import ANIL
from mamlkit.algorithms.baselines import Pretrained, RandomInitFineTune
from mamlkit.algorithms.boil import BOIL
from mamlkit.algorithms.cavia import CAVIA
from mamlkit.algorithms.imaml import IMAML
from mamlkit.algorithms.maml import FOMAML, MAML
from mamlkit.algorithms.maml_plus_plus import MAMLPlusPlus, cosine_meta_lr, msl_weights
from mamlkit.algorithms.meta_sgd import MetaSGD
from mamlkit.algorithms.proto_maml import ProtoMAML
from mamlkit.algorithms.protonets import ProtoNets
from mamlkit.algorithms.reptile import Reptile
from mamlkit.core.learner import MetaLearner

ALGORITHMS: dict[str, type[MetaLearner]] = {
    "maml": MAML,
    "fomaml": FOMAML,
    "metasgd": MetaSGD,
    "anil": ANIL,
    "reptile": Reptile,
    "mamlpp": MAMLPlusPlus,
    "imaml": IMAML,
    "boil": BOIL,
    "cavia": CAVIA,
    "protomaml": ProtoMAML,
    "protonets": ProtoNets,
    "pretrained": Pretrained,
    "randominit": RandomInitFineTune,
}
"""Algorithm name -> class. :func:`make_algorithm` also accepts the spellings ``meta-sgd``,
``meta_sgd``, ``maml++``, ``proto-maml``, ``proto_nets``, ``random_init``, ``random-init`` (case,
``-`` and ``_`` are ignored)."""


def canonical_name(name: str) -> str:
    """The :data:`ALGORITHMS` key for ``name``: lower case, without ``-``/``_``, ``++`` as ``pp``."""
    return name.strip().lower().replace("-", "").replace("_", "").replace("++", "pp")


LABELS: dict[str, str] = {
    "maml": "MAML", "fomaml": "FOMAML", "metasgd": "Meta-SGD", "anil": "ANIL", "reptile": "Reptile",
    "mamlpp": "MAML++", "imaml": "iMAML", "boil": "BOIL", "cavia": "CAVIA",
    "protomaml": "ProtoMAML", "protonets": "ProtoNets", "pretrained": "pretrained",
    "randominit": "random init",
}
"""Algorithm name -> how evaluation tables, results files and plots name it."""


def algorithm_label(name: str) -> str:
    """The label of the algorithm called ``name`` (any spelling :func:`make_algorithm` accepts)."""
    return LABELS.get(canonical_name(name), name)


def make_algorithm(name: str, model: nn.Module, **kwargs: Any) -> MetaLearner:
    """Instantiate the algorithm called ``name`` (see :data:`ALGORITHMS`) around ``model``.

    ``kwargs`` go to the algorithm's constructor (``inner_lr``, ``inner_steps``, ``loss``, ...).
    """
    if not isinstance(name, str) or canonical_name(name) not in ALGORITHMS:
        raise ValueError(f"Unknown algorithm {name!r}. Known algorithms: {', '.join(ALGORITHMS)} "
                         "(also meta-sgd, maml++, random_init).")
    return ALGORITHMS[canonical_name(name)](model, **kwargs)


__all__ = [
    "ALGORITHMS",
    "ANIL",
    "BOIL",
    "CAVIA",
    "FOMAML",
    "LABELS",
    "IMAML",
    "MAML",
    "MAMLPlusPlus",
    "MetaSGD",
    "Pretrained",
    "ProtoMAML",
    "ProtoNets",
    "RandomInitFineTune",
    "Reptile",
    "algorithm_label",
    "canonical_name",
    "cosine_meta_lr",
    "make_algorithm",
    "msl_weights",
]
