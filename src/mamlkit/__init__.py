"""mamlkit: model-agnostic meta-learning for any ``torch.nn.Module``, built on ``torch.func``.

The flat public API: algorithms (``MAML``, ``FOMAML`` and the rest of the family in
:mod:`mamlkit.algorithms`), the shared driver ``MetaLearner``, the ``TaskBatch`` container, task
distributions, episodic datasets and the paper's models.
"""

from mamlkit.algorithms import ALGORITHMS, FOMAML, MAML, make_algorithm
from mamlkit.core import MetaLearner
from mamlkit.datasets import (
    CIFARFS,
    EpisodeSampler,
    MiniImageNet,
    Omniglot,
    cifar_fs_tasks,
    miniimagenet_tasks,
    omniglot_tasks,
)
from mamlkit.models import MLP, ConvNet, miniimagenet_cnn, omniglot_cnn, omniglot_mlp, sinusoid_mlp
from mamlkit.tasks import Linear, Sinusoid, TaskBatch
from mamlkit.train import meta_train

__all__ = [
    "ALGORITHMS",
    "CIFARFS",
    "FOMAML",
    "MAML",
    "MLP",
    "ConvNet",
    "EpisodeSampler",
    "Linear",
    "MetaLearner",
    "MiniImageNet",
    "Omniglot",
    "Sinusoid",
    "TaskBatch",
    "cifar_fs_tasks",
    "make_algorithm",
    "meta_train",
    "miniimagenet_cnn",
    "miniimagenet_tasks",
    "omniglot_cnn",
    "omniglot_mlp",
    "omniglot_tasks",
    "sinusoid_mlp",
]
__version__ = "0.1.0"
