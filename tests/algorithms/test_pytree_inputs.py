"""Every algorithm on dict inputs gives exactly what it gives on the same inputs packed in one
tensor, and leaves frozen parameters alone."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from mamlkit import TaskBatch
from mamlkit.algorithms import ALGORITHMS, make_algorithm


class Pair(nn.Module):
    """head(tanh(a(x_a) + b(x_b))): two inputs, one head applied last (as ANIL needs)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(2, 4), nn.Linear(1, 4), nn.Linear(4, 3)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return self.head(torch.tanh(self.a(a) + self.b(b)))


class Packed(nn.Module):
    def __init__(self, pair: Pair) -> None:
        super().__init__()
        self.pair = pair

    def forward(self, x: Tensor) -> Tensor:
        return self.pair(x[:, :2], x[:, 2:])


def shifted(model: nn.Module, x: Tensor | dict, context: Tensor) -> Tensor:
    """CAVIA's context fed as a shift of every input (a tensor or a dict of them)."""
    if isinstance(x, dict):
        return model(**{k: v + context.sum() for k, v in x.items()})
    return model(x + context.sum())


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_dict_inputs_match_packed_inputs(name: str) -> None:
    sa, sb, qa, qb = (torch.randn(2, 4, n) for n in (2, 1, 2, 1))
    sy, qy = torch.randint(0, 3, (2, 4)), torch.randint(0, 3, (2, 4))
    model = Pair()
    model.b.requires_grad_(False)  # frozen: never adapted, never meta-learned
    options = {"loss": "cross_entropy", "inner_steps": 2, "inner_lr": 0.3}
    if name == "cavia":
        options["context_forward"] = shifted

    def gradients(learner: nn.Module, batch: TaskBatch) -> list[Tensor]:
        model.zero_grad(set_to_none=True)
        learner.meta_backward(batch)
        return [p.grad for p in model.parameters() if p.requires_grad]

    packed = TaskBatch(torch.cat([sa, sb], -1), sy, torch.cat([qa, qb], -1), qy)
    as_dict = TaskBatch({"a": sa, "b": sb}, sy, {"a": qa, "b": qb}, qy)
    want = gradients(make_algorithm(name, Packed(model), **options), packed)
    got = gradients(make_algorithm(name, model, **options), as_dict)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    assert model.b.weight.grad is None
