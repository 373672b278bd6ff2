"""The functional engine: parameters as dicts, the inner loop, meta-gradients, task batching and
the BatchNorm policy."""

from mamlkit.core.learner import BATCHING_MODES, MetaLearner
from mamlkit.core.losses import LOSSES, accuracy, resolve_loss
from mamlkit.core.norms import BATCHNORM_POLICIES, ComposableNorms
from mamlkit.core.params import named_buffers, named_params, select_names

__all__ = [
    "BATCHING_MODES",
    "BATCHNORM_POLICIES",
    "LOSSES",
    "MetaLearner",
    "ComposableNorms",
    "accuracy",
    "named_buffers",
    "named_params",
    "resolve_loss",
    "select_names",
]
