"""ProtoMAML on LoRA adapters inside a transformer layer: the meta-gradient against a plain
per-task torch.autograd.grad loop (float64), and what it adapts and leaves frozen."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mamlkit import TaskBatch
from mamlkit.algorithms import ProtoMAML
from mamlkit.text.last_layers import BertLayer, LastLayersClassifier
from mamlkit.text.lora import add_lora

WAYS, SHOTS, HIDDEN, LENGTH = 3, 2, 8, 4


def lora_classifier() -> LastLayersClassifier:
    torch.manual_seed(0)
    model = LastLayersClassifier([BertLayer(HIDDEN, 2, 16)], HIDDEN, WAYS, scale=3.0)
    add_lora(model, rank=2).double()
    with torch.no_grad():  # B != 0, so the adapters change the features from the start
        for name, p in model.named_parameters():
            if name.endswith("lora_b"):
                p.copy_(0.3 * torch.randn_like(p))
    return model


def states(tasks: int, examples: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tasks, examples, LENGTH, HIDDEN + 1, generator=g, dtype=torch.float64)
    x[..., HIDDEN] = 1.0
    x[:, 0, -1, HIDDEN] = 0.0  # a padded position
    return x


def episodes(tasks: int = 2) -> TaskBatch:
    y = torch.arange(WAYS).repeat(SHOTS).expand(tasks, -1).contiguous()
    return TaskBatch(states(tasks, WAYS * SHOTS, 1), y, states(tasks, WAYS * SHOTS, 2), y)


class Features(nn.Module):
    """The classifier's scaled sentence features (its head's input), as a module's output."""

    def __init__(self, model: LastLayersClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.scale * self.model.features(x)


def plain_gradient(model: LastLayersClassifier, batch: TaskBatch, lr: float, steps: int,
                   first_order: bool) -> list[torch.Tensor]:
    """Per task: features under the adapters, head W = 2 c_k, b = -||c_k||^2 from the support
    prototypes, ``steps`` SGD steps on adapters and head (autograd.grad; at detached values under
    ``first_order``), query cross-entropy; the adapters' gradient of the mean over tasks."""
    features = Features(model)
    names = [f"model.{n}" for n, p in model.named_parameters()
             if p.requires_grad and not n.startswith("head.")]
    adapters = [features.get_parameter(n) for n in names]

    def logits(fast: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        z = torch.func.functional_call(features, dict(zip(names, fast[:-2])), (x,))
        return z @ fast[-2].T + fast[-1]

    total = 0
    for t in range(batch.num_tasks):
        sx, sy = batch.support_x[t], batch.support_y[t]
        z = torch.func.functional_call(features, dict(zip(names, adapters)), (sx,))
        c = torch.stack([z[sy == k].mean(0) for k in range(WAYS)])
        fast = [p.clone() for p in adapters] + [2 * c, -(c * c).sum(1)]
        for _ in range(steps):
            at = [p.detach().requires_grad_() for p in fast] if first_order else fast
            loss = nn.functional.cross_entropy(logits(at, sx), sy)
            grads = torch.autograd.grad(loss, at, create_graph=not first_order)
            fast = [p - lr * g for p, g in zip(fast, grads)]
        total = total + nn.functional.cross_entropy(logits(fast, batch.query_x[t]),
                                                    batch.query_y[t])
    return list(torch.autograd.grad(total / batch.num_tasks, adapters))


@pytest.mark.parametrize("first_order", [True, False])
@pytest.mark.parametrize("batching", ["loop", "vmap"])
def test_meta_gradient_matches_a_plain_autograd_loop(first_order: bool, batching: str) -> None:
    model, batch = lora_classifier(), episodes()
    learner = ProtoMAML(model, inner_lr=0.3, inner_steps=2, first_order=first_order,
                        batching=batching, adapt=None)
    expected = plain_gradient(model, batch, 0.3, 2, first_order)
    learner.zero_grad()
    learner.meta_loss(batch)[0].backward()
    got = [p.grad for n, p in model.named_parameters()
           if p.requires_grad and not n.startswith("head.")]
    assert len(got) == 4  # lora_a and lora_b of query and value
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)
    assert sum(float(g.abs().sum()) for g in got) > 0
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
