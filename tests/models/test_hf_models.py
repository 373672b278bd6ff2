"""Hugging Face models as they come: dict inputs, ``ModelOutput``s, PEFT's frozen base weights."""

from __future__ import annotations

import torch
from model_zoo import bert_case

from mamlkit import MAML
from mamlkit.core.model_io import index_tree


def test_tiny_bert_trains_with_dict_inputs_and_reports_accuracy() -> None:
    torch.manual_seed(0)
    case = bert_case()
    model = case.model.float()
    learner = MAML(model, loss="cross_entropy", inner_lr=0.1)  # no wrapper, no output=
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    history = []
    for _ in range(8):
        optimizer.zero_grad()
        metrics = learner.meta_backward(case.batch)
        optimizer.step()
        history.append(metrics)
    assert set(history[0]) >= {"loss", "query_loss", "query_accuracy", "support_loss"}
    assert history[-1]["query_loss"] < 0.5 * history[0]["query_loss"]
    assert history[-1]["query_accuracy"] > history[0]["query_accuracy"]


def test_peft_lora_adapts_only_the_adapters_and_the_head() -> None:
    torch.manual_seed(0)
    case = bert_case(lora=True)
    model = case.model
    learner = MAML(model, loss="cross_entropy", inner_lr=0.5)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert len(frozen) > 30
    assert all("lora_" in n or "classifier" in n for n in learner.adapted_names)
    adapted = learner.adapt(index_tree(case.batch.support_x, 0), case.batch.support_y[0], steps=3)
    changed = [n for n, value in frozen.items() if not torch.equal(adapted[n], value)]
    assert changed == []
    moved = [n for n in learner.adapted_names if not torch.equal(adapted[n], model.get_parameter(n))]
    assert any("lora_" in n for n in moved) and any("classifier" in n for n in moved)
