"""Tiny float64 models people bring to MAML, each with a task batch of its input kind.

Used by the model-zoo matrix (``test_model_zoo.py``). Every builder returns a :class:`ZooCase`;
sizes are as small as the architecture allows, so the whole matrix runs in seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mamlkit import TaskBatch

TASKS, SUPPORT, QUERY, CLASSES = 2, 3, 3, 3
DTYPE = torch.float64


@dataclass
class ZooCase:
    """A model, a batch for it, and how MAML should treat it."""

    model: nn.Module
    batch: TaskBatch
    adapt: Any = None
    inner_lr: float = 0.1
    vmap_refusal: str | None = None
    """A phrase of the clear message ``batching="vmap"`` refuses with (None: vmap runs)."""


def labels() -> tuple[Tensor, Tensor]:
    support = torch.randint(0, CLASSES, (TASKS, SUPPORT))
    query = torch.randint(0, CLASSES, (TASKS, QUERY))
    return support, query


def tensor_case(model: nn.Module, example_shape: tuple[int, ...], **kwargs: Any) -> ZooCase:
    sy, qy = labels()
    batch = TaskBatch(torch.randn(TASKS, SUPPORT, *example_shape, dtype=DTYPE), sy,
                      torch.randn(TASKS, QUERY, *example_shape, dtype=DTYPE), qy)
    return ZooCase(model.to(DTYPE), batch, **kwargs)


def mlp() -> ZooCase:
    return tensor_case(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, CLASSES)), (4,))


def cnn_batchnorm() -> ZooCase:
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 2 * 2, CLASSES))
    return tensor_case(model, (1, 4, 4))


class BasicBlock(nn.Module):
    """ResNet's BasicBlock (He et al., 2016): two 3x3 conv + BN, a shortcut (1x1 conv + BN when
    the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet() -> ZooCase:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                          BasicBlock(4, 4, 1), BasicBlock(4, 6, 2),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, CLASSES))
    return tensor_case(model, (3, 4, 4))


class Recurrent(nn.Module):
    """A GRU or LSTM over [examples, time, features], classifying from the last state."""

    def __init__(self, cell: type[nn.RNNBase]) -> None:
        super().__init__()
        self.rnn = cell(3, 4, batch_first=True)
        self.head = nn.Linear(4, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def gru() -> ZooCase:
    return tensor_case(Recurrent(nn.GRU), (4, 3), vmap_refusal="batching='loop'")


def lstm() -> ZooCase:
    return tensor_case(Recurrent(nn.LSTM), (4, 3), vmap_refusal="batching='loop'")


class TransformerClassifier(nn.Module):
    """``nn.TransformerEncoder`` over [examples, time, dim], mean-pooled, then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x).mean(1))


def transformer() -> ZooCase:
    return tensor_case(TransformerClassifier(), (4, 8))


def parametrized(kind: str) -> ZooCase:
    from torch.nn.utils import parametrizations

    first = nn.Linear(4, 5 if kind != "orthogonal" else 4)
    if kind == "weight_norm":
        first = parametrizations.weight_norm(first)
    elif kind == "weight_norm_dim1":
        first = parametrizations.weight_norm(first, dim=1)
    elif kind == "spectral_norm":
        first = parametrizations.spectral_norm(first)
    else:
        first = parametrizations.orthogonal(first)
    width = first.out_features
    model = nn.Sequential(first, nn.Tanh(), nn.Linear(width, CLASSES)).eval()  # spectral: no
    # power iteration (it updates buffers in place in train mode)
    return tensor_case(model, (4,))


class Tied(nn.Module):
    """Token embeddings, mean-pooled, scored by a decoder whose weight is the embedding's (tied
    input and output embeddings, as in language models)."""

    def __init__(self, vocab: int = 6, dim: int = 4) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.dec = nn.Linear(dim, vocab)
        self.dec.weight = self.emb.weight

    def forward(self, tokens: Tensor) -> Tensor:
        return self.dec(torch.tanh(self.mix(self.emb(tokens).mean(1))))


def tied() -> ZooCase:
    sy, qy = labels()
    batch = TaskBatch(torch.randint(0, 6, (TASKS, SUPPORT, 5)), sy,
                      torch.randint(0, 6, (TASKS, QUERY, 5)), qy)
    return ZooCase(Tied().to(DTYPE), batch, adapt="dec")


def bert_case(adapt: Any = None, lora: bool = False) -> ZooCase:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=30, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=16, num_labels=CLASSES)
    model: nn.Module = BertForSequenceClassification(config)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"],
                                                 lora_dropout=0.0, task_type="SEQ_CLS"))
    model = model.to(DTYPE).eval()
    length = 5

    def inputs(examples: int) -> dict[str, Tensor]:
        mask = torch.ones(TASKS, examples, length, dtype=torch.long)
        mask[:, 0, -2:] = 0  # padding in one example of each task
        return {"input_ids": torch.randint(0, 30, (TASKS, examples, length)),
                "attention_mask": mask}

    sy, qy = labels()
    return ZooCase(model, TaskBatch(inputs(SUPPORT), sy, inputs(QUERY), qy), adapt=adapt,
                   vmap_refusal="data-dependent control flow.*batching='loop'")


ZOO: dict[str, Callable[[], ZooCase]] = {
    "mlp": mlp,
    "cnn+batchnorm": cnn_batchnorm,
    "resnet18-style": resnet,
    "gru": gru,
    "lstm": lstm,
    "transformer-encoder": transformer,
    "weight_norm": lambda: parametrized("weight_norm"),
    "weight_norm(dim=1)": lambda: parametrized("weight_norm_dim1"),
    "spectral_norm": lambda: parametrized("spectral_norm"),
    "orthogonal": lambda: parametrized("orthogonal"),
    "tied weights": tied,
    "hf-bert full": bert_case,
    "hf-bert head-only": lambda: bert_case(adapt="classifier"),
    "hf-bert + peft lora": lambda: bert_case(lora=True),
}
"""Every model of the matrix, by the name the docs table uses."""
