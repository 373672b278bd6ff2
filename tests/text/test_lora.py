"""LoRA adapters inside the top transformer layer: frozen base, exact start, what MAML adapts."""

from __future__ import annotations

import pytest
import torch

from mamlkit import MAML, TaskBatch
from mamlkit.experiments.text import derived_defaults
from mamlkit.text.last_layers import BertLayer, LastLayersClassifier
from mamlkit.text.lora import LoRALinear, add_lora


def tiny_classifier() -> LastLayersClassifier:
    return LastLayersClassifier([BertLayer(8, 2, 16)], hidden_size=8, num_classes=3)


def states(batch: int) -> torch.Tensor:
    x = torch.randn(batch, 4, 9)
    x[..., 8] = 1.0
    x[0, -1, 8] = 0.0  # one padded position
    return x


def test_adapters_start_at_the_pretrained_function_and_freeze_the_base() -> None:
    plain = tiny_classifier()
    model = tiny_classifier()
    model.load_state_dict(plain.state_dict())
    add_lora(model, rank=2)
    x = states(5)
    torch.testing.assert_close(model(x), plain(x))  # B = 0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"layers.0.query.lora_a", "layers.0.query.lora_b",
                         "layers.0.value.lora_a", "layers.0.value.lora_b", "head.weight",
                         "head.bias"}
    assert isinstance(model.layers[0].query, LoRALinear)
    with pytest.raises(ValueError, match="not an nn.Linear"):
        add_lora(tiny_classifier(), targets=("num_heads",))


def test_maml_adapts_and_meta_learns_only_adapters_and_head() -> None:
    model = add_lora(tiny_classifier(), rank=2)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    learner = MAML(model, loss="cross_entropy", inner_lr=0.1, inner_steps=2, batching="loop")
    batch = TaskBatch(torch.stack([states(3), states(3)]), torch.randint(0, 3, (2, 3)),
                      torch.stack([states(3), states(3)]), torch.randint(0, 3, (2, 3)))
    learner.meta_backward(batch)
    assert all(p.grad is None for n, p in model.named_parameters() if n in frozen)
    assert model.layers[0].value.lora_b.grad.abs().sum() > 0
    adapted = learner.adapt(batch.support_x[0], batch.support_y[0])
    assert all(torch.equal(adapted[n], v) for n, v in frozen.items())


def test_lora_encoder_defaults() -> None:
    defaults = derived_defaults({"encoder": "lora"})
    assert defaults["first_order"] is True and defaults["meta_lr"] == 3e-5
