"""The four-block convolutional network of MAML's image experiments (Finn et al. 2017).

Each block is a 3x3 convolution (padding 1), batch normalisation, ReLU and 2x2 max-pooling, after
Vinyals et al. (2016); four blocks are followed by a linear classifier on the flattened features.
MAML uses 64 filters on 28x28 Omniglot and 32 filters on 84x84 miniImageNet (to limit
overfitting). A plain ``nn.Module``: the meta-learners adapt its parameters functionally, and
their default BatchNorm policy normalises with batch statistics as the paper did, whatever the
layers' ``track_running_stats``.
"""

from __future__ import annotations

from torch import Tensor, nn


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """conv3x3 (padding 1) -> BatchNorm2d -> ReLU -> MaxPool2d(2): halves height and width."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")


class ConvNet(nn.Module):
    """``blocks`` conv blocks then a linear layer to ``ways`` logits (MAML's CNN, see module doc).

    Args:
        in_channels: 1 for Omniglot, 3 for RGB images.
        ways: number of output classes (logits).
        hidden: filters per convolution (64 for Omniglot, 32 for miniImageNet in MAML).
        image_size: side of the square input images, to size the classifier.
        blocks: number of conv blocks (4 in MAML).

    Input ``[batch, in_channels, image_size, image_size]``; output ``[batch, ways]``.
    """

    def __init__(
        self, in_channels: int, ways: int, hidden: int = 64, image_size: int = 28, blocks: int = 4
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("ways", ways), ("hidden", hidden),
                            ("image_size", image_size), ("blocks", blocks)):
            _positive(name, value)
        side = image_size
        for _ in range(blocks):
            side //= 2
        if side < 1:
            raise ValueError(
                f"image_size={image_size} is too small for {blocks} max-pooling blocks (each "
                f"halves the side); use image_size >= {2 ** blocks} or fewer blocks."
            )
        self.in_channels, self.image_size = in_channels, image_size
        channels = [in_channels] + [hidden] * blocks
        self.features = nn.Sequential(
            *(conv_block(channels[i], channels[i + 1]) for i in range(blocks))
        )
        self.classifier = nn.Linear(hidden * side * side, ways)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[batch, ways]`` for images ``[batch, in_channels, image_size, image_size]``."""
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"ConvNet expects images [batch, {', '.join(map(str, expected))}], got "
                f"{tuple(x.shape)}; resize the inputs or build the network with matching "
                "in_channels/image_size."
            )
        return self.classifier(self.features(x).flatten(1))


def omniglot_cnn(ways: int) -> ConvNet:
    """MAML's Omniglot network: 1x28x28 input, 4 blocks of 64 filters."""
    return ConvNet(in_channels=1, ways=ways, hidden=64, image_size=28)


def miniimagenet_cnn(ways: int) -> ConvNet:
    """MAML's miniImageNet network: 3x84x84 input, 4 blocks of 32 filters."""
    return ConvNet(in_channels=3, ways=ways, hidden=32, image_size=84)
