"""mamlkit: model-agnostic meta-learning for any ``torch.nn.Module``, built on ``torch.func``.

The flat public API: algorithms (``MAML``, ``FOMAML`` and the rest of the family in
:mod:`mamlkit.algorithms`), the shared driver ``MetaLearner``, the ``TaskBatch`` container, task
distributions, episodic datasets and the paper's models.
"""

from mamlkit.algorithms import ALGORITHMS, FOMAML, MAML, make_algorithm
from mamlkit.config import TrainConfig
from mamlkit.core import MetaLearner
from mamlkit.datasets import (
    CIFARFS,
    DatasetClasses,
    EpisodeLoader,
    EpisodeSampler,
    HFClasses,
    ImageFolder,
    ImageOptions,
    MiniImageNet,
    Omniglot,
    cifar_fs_tasks,
    collate_tasks,
    miniimagenet_tasks,
    omniglot_tasks,
    split_classes,
)
from mamlkit.evaluate import evaluate_episodes
from mamlkit.loop_config import LoopConfig
from mamlkit.models import MLP, ConvNet, miniimagenet_cnn, omniglot_cnn, omniglot_mlp, sinusoid_mlp
from mamlkit.outer_optimizer import meta_optimizer
from mamlkit.runs import load_run
from mamlkit.tasks import Linear, Sinusoid, TaskBatch
from mamlkit.train import TrainResult, meta_train, train_loop

__all__ = [
    "ALGORITHMS",
    "CIFARFS",
    "FOMAML",
    "MAML",
    "MLP",
    "ConvNet",
    "DatasetClasses",
    "EpisodeLoader",
    "EpisodeSampler",
    "HFClasses",
    "ImageFolder",
    "ImageOptions",
    "Linear",
    "LoopConfig",
    "MetaLearner",
    "MiniImageNet",
    "Omniglot",
    "Sinusoid",
    "TaskBatch",
    "TrainConfig",
    "TrainResult",
    "cifar_fs_tasks",
    "collate_tasks",
    "evaluate_episodes",
    "load_run",
    "make_algorithm",
    "meta_optimizer",
    "meta_train",
    "miniimagenet_cnn",
    "miniimagenet_tasks",
    "omniglot_cnn",
    "omniglot_mlp",
    "omniglot_tasks",
    "sinusoid_mlp",
    "split_classes",
    "train_loop",
]
__version__ = "0.1.0"
