"""The functional engine: parameters as dicts, inner optimizers as values, the one inner loop,
meta-gradients, task batching and the BatchNorm policy (docs/architecture.md)."""

from mamlkit.core.inner_loop import InnerProblem, InnerResult
from mamlkit.core.inner_optim import (
    SGD,
    Adam,
    FixedRates,
    InnerOptimizer,
    LearnedRates,
    PerStepRates,
    Proximal,
)
from mamlkit.core.learner import BATCHING_MODES, MetaLearner
from mamlkit.core.losses import LOSSES, accuracy, resolve_loss
from mamlkit.core.norms import BATCHNORM_POLICIES, ComposableNorms
from mamlkit.core.params import named_buffers, named_params, select_names

__all__ = [
    "BATCHING_MODES",
    "BATCHNORM_POLICIES",
    "LOSSES",
    "SGD",
    "Adam",
    "ComposableNorms",
    "FixedRates",
    "InnerOptimizer",
    "InnerProblem",
    "InnerResult",
    "LearnedRates",
    "MetaLearner",
    "PerStepRates",
    "Proximal",
    "accuracy",
    "named_buffers",
    "named_params",
    "resolve_loss",
    "select_names",
]
