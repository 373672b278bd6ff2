"""Fully-connected networks of MAML's experiments (Finn et al. 2017).

Sinusoid regression: 1-40-40-1 with ReLU. Omniglot without convolutions: 784-256-128-64-64 hidden
units, each followed by batch normalisation and ReLU (Santoro et al. 2016's comparison, which
MAML repeats), then a linear layer to the classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn


class MLP(nn.Module):
    """Linear layers of the given ``sizes`` (input, hidden..., output) with activations between.

    Args:
        sizes: e.g. ``(1, 40, 40, 1)``; at least input and output.
        activation: module factory placed after every hidden linear layer (``nn.ReLU``).
        batch_norm: add ``BatchNorm1d`` after every hidden linear layer (before the activation).
        flatten: flatten inputs ``[batch, ...]`` to ``[batch, sizes[0]]`` first (for images).

    The output layer is linear (logits or regression values).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activation: Callable[[], nn.Module] = nn.ReLU,
        batch_norm: bool = False,
        flatten: bool = False,
    ) -> None:
        super().__init__()
        sizes = list(sizes)
        if len(sizes) < 2 or any(not isinstance(s, int) or isinstance(s, bool) or s < 1
                                 for s in sizes):
            raise ValueError(
                f"sizes={sizes} is invalid; give at least an input and an output size, all "
                "positive ints, e.g. (1, 40, 40, 1)."
            )
        self.sizes, self.flatten = tuple(sizes), flatten
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(fan_in, fan_out))
            if i < len(sizes) - 2:
                if batch_norm:
                    layers.append(nn.BatchNorm1d(fan_out))
                layers.append(activation())
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Outputs ``[batch, sizes[-1]]`` for ``[batch, sizes[0]]`` inputs (images if flatten)."""
        if self.flatten:
            x = x.flatten(1)
        if x.dim() != 2 or x.shape[1] != self.sizes[0]:
            raise ValueError(
                f"MLP expects inputs [batch, {self.sizes[0]}], got {tuple(x.shape)}"
                + ("" if self.flatten else "; pass flatten=True for image inputs")
                + "."
            )
        return self.layers(x)


def sinusoid_mlp() -> MLP:
    """MAML's sinusoid regressor: 1-40-40-1 with ReLU."""
    return MLP((1, 40, 40, 1))


def omniglot_mlp(ways: int) -> MLP:
    """MAML's fully-connected Omniglot classifier: 784-256-128-64-64-ways, BatchNorm + ReLU."""
    return MLP((28 * 28, 256, 128, 64, 64, ways), batch_norm=True, flatten=True)
