"""The networks of MAML's experiments (Finn et al. 2017), as plain ``torch.nn.Module``s."""

from mamlkit.models.conv import ConvNet, conv_block, miniimagenet_cnn, omniglot_cnn
from mamlkit.models.mlp import MLP, omniglot_mlp, sinusoid_mlp

__all__ = [
    "MLP",
    "ConvNet",
    "conv_block",
    "miniimagenet_cnn",
    "omniglot_cnn",
    "omniglot_mlp",
    "sinusoid_mlp",
]
