"""Word tokenizer and the trainable encoders, including torch.func.functional_call + vmap."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, grad, vmap

from mamlkit.text import (
    PAD_ID,
    UNK_ID,
    BagOfEmbeddingsClassifier,
    BertLayer,
    LastLayersClassifier,
    TextCNNClassifier,
    WordTokenizer,
)
from mamlkit.text.tokenizer import split_words


def test_tokenizer_vocabulary_from_given_texts_only():
    tokenizer = WordTokenizer.fit(["Top up my card", "top up failed!", "card"], max_length=6)
    assert tokenizer.vocabulary[:4] == ["<pad>", "<unk>", "card", "top"]
    ids = tokenizer.encode(["top up my pizza", "", "card card card card card card card"])
    assert ids.shape == (3, 6) and ids.dtype == torch.int64
    assert ids[0, 3].item() == UNK_ID  # "pizza" was not in the fitting texts
    assert ids[0, 4:].tolist() == [PAD_ID, PAD_ID]
    assert ids[1].tolist() == [PAD_ID] * 6
    assert ids[2].tolist() == [tokenizer.vocabulary.index("card")] * 6  # truncated
    assert tokenizer.decode(ids[0]) == "top up my <unk>"
    assert split_words("<e1> Cape </e1> isn't!") == ["<e1>", "cape", "</e1>", "isn't", "!"]
    assert WordTokenizer.fit(["a a b c"], max_size=3).vocabulary == ["<pad>", "<unk>", "a"]


def test_tokenizer_errors():
    with pytest.raises(ValueError, match="no words found"):
        WordTokenizer.fit(["", "   "])
    with pytest.raises(ValueError, match="must start with '<pad>', '<unk>'"):
        WordTokenizer(["a", "b"])


def _stack_params(model: torch.nn.Module, tasks: int) -> dict[str, torch.Tensor]:
    return {name: p.detach().unsqueeze(0).repeat(tasks, *([1] * p.dim())) + 0.01 * torch.randn(
        tasks, *p.shape) for name, p in model.named_parameters()}


@pytest.mark.parametrize("make", [
    lambda: BagOfEmbeddingsClassifier(40, 5, embedding_dim=8, hidden_dim=6),
    lambda: TextCNNClassifier(40, 5, embedding_dim=8, channels=4, kernel_sizes=(1, 3)),
])
def test_encoder_shapes_and_padding_invariance(make):
    model = make()
    ids = torch.randint(2, 40, (7, 12))
    ids[:, 9:] = PAD_ID
    logits = model(ids)
    assert logits.shape == (7, 5)
    longer = torch.cat([ids, torch.zeros(7, 5, dtype=torch.int64)], dim=1)
    torch.testing.assert_close(model(longer), logits)
    assert torch.isfinite(model(torch.zeros(2, 4, dtype=torch.int64))).all()
    with pytest.raises(ValueError, match="expected int64 token ids"):
        model(ids.float())


@pytest.mark.parametrize("make", [
    lambda: BagOfEmbeddingsClassifier(40, 5, embedding_dim=8),
    lambda: TextCNNClassifier(40, 5, embedding_dim=8, channels=4),
])
def test_trainable_encoder_under_functional_call_and_vmap(make):
    model = make()
    tasks = 3
    params = _stack_params(model, tasks)
    x = torch.randint(0, 40, (tasks, 10, 9))
    y = torch.randint(0, 5, (tasks, 10))

    def loss(p, xs, ys):
        return torch.nn.functional.cross_entropy(functional_call(model, p, (xs,)), ys)

    batched = vmap(grad(loss))(params, x, y)
    for t in range(tasks):
        single = grad(loss)({k: v[t] for k, v in params.items()}, x[t], y[t])
        for name in params:
            torch.testing.assert_close(batched[name][t], single[name], rtol=1e-4, atol=1e-6)
    # one inner step changes the loss per task, as MAML's inner loop needs
    adapted = {k: v - 0.5 * batched[k] for k, v in params.items()}
    assert (vmap(loss)(adapted, x, y) < vmap(loss)(params, x, y)).all()


def test_last_layers_classifier_masks_padding_and_vmaps():
    torch.manual_seed(0)
    hidden = 8
    model = LastLayersClassifier([BertLayer(hidden, 2, 16), BertLayer(hidden, 2, 16)], hidden, 4)
    states = torch.randn(5, 6, hidden)
    mask = torch.ones(5, 6)
    mask[:, 4:] = 0
    inputs = torch.cat([states * mask.unsqueeze(-1), mask.unsqueeze(-1)], dim=-1)
    logits = model(inputs)
    assert logits.shape == (5, 4)
    changed = inputs.clone()
    changed[:, 4:, :hidden] = torch.randn(5, 2, hidden)  # garbage at padded positions
    torch.testing.assert_close(model(changed), logits)
    torch.testing.assert_close(model.features(inputs).norm(dim=-1), torch.ones(5))
    params = _stack_params(model, 2)
    out = vmap(lambda p, x: functional_call(model, p, (x,)))(params, inputs.expand(2, -1, -1, -1))
    assert out.shape == (2, 5, 4) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r"expected cached states \[batch, length, 9\]"):
        model(states)
    with pytest.raises(ValueError, match="not divisible"):
        BertLayer(10, 3, 16)
