"""Pytree inputs and targets, model calls and output selection, frozen and tied parameters,
inference mode, the BatchNorm module policy's statistics, tensor rates, and auto's fallback."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from mamlkit import MAML, TaskBatch


class TwoInputs(nn.Module):
    """``a`` and ``b`` through their own layers, summed: one example is a pair."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 3)
        self.b = nn.Linear(1, 3)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return self.a(a) + self.b(b)


class Packed(nn.Module):
    """The same model on one packed tensor ``[a | b]``."""

    def __init__(self, twin: TwoInputs) -> None:
        super().__init__()
        self.twin = twin

    def forward(self, x: Tensor) -> Tensor:
        return self.twin(x[:, :2], x[:, 2:])


def pair_batch(tasks: int = 4) -> tuple[TaskBatch, TaskBatch]:
    sa, sb, qa, qb = (torch.randn(tasks, 5, n) for n in (2, 1, 2, 1))
    sy, qy = torch.randint(0, 3, (tasks, 5)), torch.randint(0, 3, (tasks, 5))
    packed = TaskBatch(torch.cat([sa, sb], -1), sy, torch.cat([qa, qb], -1), qy)
    as_dict = TaskBatch({"a": sa, "b": sb}, sy, {"a": qa, "b": qb}, qy)
    return packed, as_dict


def grads_of(learner: MAML, batch: TaskBatch) -> tuple[dict[str, float], list[Tensor]]:
    learner.model.zero_grad(set_to_none=True)
    metrics = learner.meta_backward(batch)
    return metrics, [p.grad.clone() for p in learner.model.parameters()]


@pytest.mark.parametrize("batching,chunk_size", [("vmap", None), ("vmap", 3), ("loop", None)])
def test_dict_inputs_equal_packed_ones(batching: str, chunk_size: int | None) -> None:
    packed, as_dict = pair_batch()
    model = TwoInputs()
    options = {"loss": "cross_entropy", "inner_steps": 2, "batching": batching,
               "chunk_size": chunk_size}
    want_metrics, want = grads_of(MAML(Packed(model), **options), packed)
    got_metrics, got = grads_of(MAML(model, **options), as_dict)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    assert got_metrics == pytest.approx(want_metrics)
    tuple_batch = TaskBatch((as_dict.support_x["a"], as_dict.support_x["b"]), as_dict.support_y,
                            (as_dict.query_x["a"], as_dict.query_x["b"]), as_dict.query_y)
    forward = MAML(model, forward=lambda m, x: m(*x), **options)
    for g, w in zip(grads_of(forward, tuple_batch)[1], want):
        torch.testing.assert_close(g, w)


def test_pytree_batches_are_checked_leaf_by_leaf() -> None:
    _, as_dict = pair_batch()
    with pytest.raises(ValueError, match="disagree on \\[tasks, examples\\]"):
        TaskBatch({"a": torch.zeros(4, 5, 2), "b": torch.zeros(4, 6, 1)}, as_dict.support_y,
                  as_dict.query_x, as_dict.query_y)
    with pytest.raises(TypeError, match="pytree"):
        TaskBatch({"a": [1, 2]}, as_dict.support_y, as_dict.query_x, as_dict.query_y)
    assert as_dict.slice(slice(1, 3)).support_x["b"].shape == (2, 5, 1)


class Outputs(nn.Module):
    """Returns a dict with logits and a hidden state, or a tuple (logits first)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind, self.layer = kind, nn.Linear(2, 3)

    def forward(self, x: Tensor):
        logits = self.layer(x)
        return {"hidden": x, "logits": logits} if self.kind == "dict" else (logits, x)


def test_losses_and_accuracy_read_the_logits_of_any_output() -> None:
    sx, qx = torch.randn(2, 4, 2), torch.randn(2, 4, 2)
    batch = TaskBatch(sx, torch.randint(0, 3, (2, 4)), qx, torch.randint(0, 3, (2, 4)))
    plain = MAML(nn.Linear(2, 3), loss="cross_entropy").meta_loss
    for kind in ("dict", "tuple"):
        model = Outputs(kind)
        reference = nn.Linear(2, 3)
        reference.load_state_dict(model.layer.state_dict())
        loss, metrics = MAML(model, loss="cross_entropy").meta_loss(batch)
        want_loss, want_metrics = MAML(reference, loss="cross_entropy").meta_loss(batch)
        torch.testing.assert_close(loss, want_loss)
        assert metrics["query_accuracy"] == pytest.approx(want_metrics["query_accuracy"])
    assert plain  # the plain tensor path still works
    selected = MAML(Outputs("dict"), loss="cross_entropy", output="logits").meta_loss(batch)[0]
    by_callable = MAML(Outputs("tuple"), loss="cross_entropy", output=lambda o: o[0])
    assert torch.isfinite(selected) and torch.isfinite(by_callable.meta_loss(batch)[0])
    with pytest.raises(ValueError, match="output='scores' names nothing"):
        MAML(Outputs("dict"), loss="cross_entropy", output="scores").meta_loss(batch)


def test_adapt_none_leaves_frozen_parameters_alone() -> None:
    model = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 3))
    model[0].requires_grad_(False)
    learner = MAML(model, loss="cross_entropy", inner_lr=0.5)
    assert learner.adapted_names == ("2.weight", "2.bias")
    adapted = learner.adapt(torch.randn(5, 2), torch.randint(0, 3, (5,)), steps=3)
    assert torch.equal(adapted["0.weight"], model[0].weight)
    assert not torch.equal(adapted["2.weight"], model[2].weight)
    model[2].requires_grad_(False)
    with pytest.raises(ValueError, match="require grad"):
        MAML(model)


class TiedDecoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(3, 3)
        self.dec = nn.Linear(3, 3)
        self.dec.weight = self.enc.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.dec(torch.tanh(self.enc(x)))


def test_tied_parameters_are_found_by_every_name() -> None:
    learner = MAML(TiedDecoder(), adapt="dec", inner_lr={"dec.weight": 0.1, "dec.bias": 0.2})
    assert set(learner.adapted_names) == {"enc.weight", "dec.bias"}
    assert learner.inner_lr == {"enc.weight": 0.1, "dec.bias": 0.2}
    with pytest.raises(ValueError, match="two rates for one \\(tied\\) parameter"):
        MAML(TiedDecoder(), adapt="dec", inner_lr={"dec.weight": 0.1, "enc.weight": 0.3,
                                                     "dec.bias": 0.2})


def test_tensor_inner_lr_is_a_number_and_other_types_are_refused_by_type() -> None:
    assert MAML(nn.Linear(1, 1), inner_lr=torch.tensor(0.1)).inner_lr["weight"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="number or a 0-dim tensor, got Tensor"):
        MAML(nn.Linear(1, 1), inner_lr=torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="must be a positive number"):
        MAML(nn.Linear(1, 1), inner_lr=torch.tensor(-0.1))


def test_adaptation_under_inference_mode() -> None:
    learner = MAML(nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 3)), batching="loop",
                   loss="cross_entropy", inner_lr=0.5)
    x, y = torch.randn(5, 2), torch.randint(0, 3, (5,))
    want = learner.adapt(x, y, steps=2)
    batch = TaskBatch(x[None], y[None], x[None], y[None])
    want_curve = learner.adaptation_curve(batch, 2)
    with torch.inference_mode():
        got = learner.adapt(x.clone(), y.clone(), steps=2)
        curve = learner.adaptation_curve(batch.map_tensors(torch.clone), 2)
        outputs = learner.predict(got, x.clone())
    for name in want:
        torch.testing.assert_close(got[name], want[name])
    torch.testing.assert_close(curve["query_loss"], want_curve["query_loss"])
    assert outputs.shape == (5, 3)


def test_module_batchnorm_counts_each_forward_once_and_vmap_refuses() -> None:
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Linear(3, 3))
    batch = TaskBatch(torch.randn(2, 4, 2), torch.randint(0, 3, (2, 4)), torch.randn(2, 4, 2),
                      torch.randint(0, 3, (2, 4)))
    learner = MAML(model, loss="cross_entropy", batchnorm="module", inner_steps=2)
    assert learner.batching_for(batch) == "loop"
    learner.meta_backward(batch)
    # per task: 2 support forwards (one per inner step) and 1 query forward
    assert int(model[1].num_batches_tracked) == 2 * 3
    with pytest.raises(ValueError, match="BatchNorm.*batching='loop'"):
        MAML(model, loss="cross_entropy", batchnorm="module", batching="vmap").meta_backward(batch)


class DataDependent(nn.Module):
    """Branches on a tensor's value, which vmap cannot batch."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.layer(x)
        return out * 2 if out.sum() > 0 else out


def test_auto_falls_back_to_the_loop_on_any_vmap_failure() -> None:
    batch = TaskBatch(torch.randn(3, 4, 2), torch.randn(3, 4, 1), torch.randn(3, 4, 2),
                      torch.randn(3, 4, 1))
    model = DataDependent()
    want, _ = MAML(model, batching="loop").meta_loss(batch)
    auto = MAML(model)
    with pytest.warns(RuntimeWarning, match="falling back to a per-task loop"):
        got, _ = auto.meta_loss(batch)
    torch.testing.assert_close(got, want)
    assert auto.execution_summary(batch).startswith("batching loop")
    with pytest.raises(RuntimeError, match="batching='vmap' failed.*batching='loop'"):
        MAML(model, batching="vmap").meta_loss(batch)


def test_rnns_take_the_loop_up_front() -> None:
    class Seq(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn, self.head = nn.GRU(2, 3, batch_first=True), nn.Linear(3, 1)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(self.rnn(x)[0][:, -1])

    batch = TaskBatch(torch.randn(2, 4, 5, 2), torch.randn(2, 4, 1), torch.randn(2, 4, 5, 2),
                      torch.randn(2, 4, 1))
    learner = MAML(Seq())
    assert learner.batching_for(batch) == "loop"
    assert learner.execution_summary(batch).startswith("batching loop")


class Mixer(nn.Module):
    """Calls F.scaled_dot_product_attention from a module whose name does not say attention."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        q = self.proj(x).reshape(x.shape[0], 3, 2, 2).transpose(1, 2)
        return nn.functional.scaled_dot_product_attention(q, q, q).flatten(1)


def test_an_undetected_fused_attention_kernel_is_explained() -> None:
    batch = TaskBatch(torch.randn(2, 4, 3, 4), torch.randn(2, 4, 12), torch.randn(2, 4, 3, 4),
                      torch.randn(2, 4, 12))
    with pytest.raises(RuntimeError, match="sdpa_kernel\\(SDPBackend.MATH\\).*first_order=True"):
        MAML(Mixer(), batching="loop").meta_backward(batch)
    MAML(Mixer(), batching="loop", first_order=True).meta_backward(batch)
