"""The outer optimizer: fused kernels where they apply, the same update as PyTorch's default."""

import pytest
import torch

from mamlkit.outer_optimizer import fusable, meta_optimizer


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in ((4, 3), (3,))]


@pytest.mark.parametrize("name, decay, cls", [("adam", 0.0, torch.optim.Adam),
                                              ("adam", 0.1, torch.optim.AdamW),
                                              ("sgd", 0.1, torch.optim.SGD)])
def test_fused_optimizer_takes_the_steps_of_the_unfused_one(name, decay, cls):
    fused_params, plain_params = _params(), _params()
    fused = meta_optimizer(name, fused_params, lr=0.05, weight_decay=decay)
    plain = cls(plain_params, lr=0.05, weight_decay=decay, foreach=False)
    assert type(fused) is cls and fused.defaults["fused"] is True
    for step in range(5):
        grads = _params(seed=step + 1)
        for params in (fused_params, plain_params):
            for p, g in zip(params, grads):
                p.grad = g.detach().clone()
        fused.step()
        plain.step()
    for a, b, start in zip(fused_params, plain_params, _params()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        assert not torch.equal(a, start)  # it did move


def test_fused_only_where_the_kernels_apply():
    assert fusable(_params()) is True
    assert fusable([torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))]) is None
    assert fusable([]) is None
    assert meta_optimizer("adam", [torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))],
                          lr=0.1).defaults["fused"] is None


def test_unknown_optimizer_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="use 'adam' or 'sgd'"):
        meta_optimizer("lion", _params(), lr=0.1)
