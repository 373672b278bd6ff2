"""The networks of MAML's experiments: architecture, sizes, errors, and use by the meta-learner."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mamlkit
from mamlkit.datasets import EpisodeSampler
from mamlkit.models import MLP, ConvNet, miniimagenet_cnn, omniglot_cnn, omniglot_mlp, sinusoid_mlp


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layer_types(model: nn.Module) -> list[type]:
    return [type(m) for m in model.modules() if not isinstance(m, (nn.Sequential, ConvNet, MLP))]


def test_omniglot_cnn_architecture_and_size():
    model = omniglot_cnn(5)
    block = [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d]
    assert layer_types(model) == block * 4 + [nn.Linear]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert [c.out_channels for c in convs] == [64] * 4 and convs[0].in_channels == 1
    # 28 -> 14 -> 7 -> 3 -> 1: the classifier sees 64 features
    assert model.classifier.in_features == 64
    # conv 1*64*9+64, 3 x (64*64*9+64), 4 BN x 128, linear 64*5+5
    assert count(model) == 640 + 3 * 36928 + 4 * 128 + 325
    assert model(torch.rand(7, 1, 28, 28)).shape == (7, 5)


def test_miniimagenet_cnn_size():
    model = miniimagenet_cnn(5)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32] * 4 and convs[0].in_channels == 3
    # 84 -> 42 -> 21 -> 10 -> 5: 32 * 5 * 5 features
    assert model.classifier.in_features == 800
    assert count(model) == 896 + 3 * 9248 + 4 * 64 + 800 * 5 + 5
    assert model(torch.rand(2, 3, 84, 84)).shape == (2, 5)


def test_mlps():
    sine = sinusoid_mlp()
    assert [m.out_features for m in sine.modules() if isinstance(m, nn.Linear)] == [40, 40, 1]
    assert layer_types(sine) == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert sine(torch.rand(10, 1)).shape == (10, 1)
    fc = omniglot_mlp(20)
    widths = [m.out_features for m in fc.modules() if isinstance(m, nn.Linear)]
    assert widths == [256, 128, 64, 64, 20]
    assert layer_types(fc) == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 4 + [nn.Linear]
    assert fc(torch.rand(3, 1, 28, 28)).shape == (3, 20)
    assert MLP((3, 8, 2), activation=nn.Tanh)(torch.rand(4, 3)).shape == (4, 2)


def test_clear_errors():
    with pytest.raises(ValueError, match="ConvNet expects images \\[batch, 1, 28, 28\\]"):
        omniglot_cnn(5)(torch.rand(2, 3, 28, 28))
    with pytest.raises(ValueError, match="too small for 4 max-pooling blocks"):
        ConvNet(1, 5, image_size=8)
    with pytest.raises(ValueError, match="ways must be a positive int"):
        ConvNet(1, 0)
    with pytest.raises(ValueError, match="sizes=\\[5\\] is invalid"):
        MLP([5])
    with pytest.raises(ValueError, match="pass flatten=True"):
        sinusoid_mlp()(torch.rand(2, 1, 1))


def test_networks_train_with_the_meta_learner_on_sampled_episodes():
    torch.manual_seed(0)
    data = torch.randint(0, 256, (20, 6, 1, 28, 28), dtype=torch.uint8)
    batch = EpisodeSampler(data, ways=5, shots=1, queries=2, seed=0).sample(2)
    # a narrow ConvNet keeps the second-order step cheap; the layer types are those of the paper's
    for model in (ConvNet(1, 5, hidden=8, image_size=28), omniglot_mlp(5)):
        learner = mamlkit.MAML(model, inner_lr=0.4, inner_steps=1, loss="cross_entropy")
        loss, _ = learner.meta_loss(batch)
        loss.backward()
        assert torch.isfinite(loss)
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)
