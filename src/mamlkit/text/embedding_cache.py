"""On-disk cache of pretrained-encoder outputs, keyed by model id, settings and the texts' checksum.

Embedding a dataset with a transformer takes minutes on a CPU; meta-training a head on the
embeddings takes milliseconds per step. Caching the frozen encoder's outputs once makes
meta-training run at head speed. The cache never loads ``transformers`` on a hit.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mamlkit.text.pretrained import DEFAULT_MODEL_ID, PretrainedSentenceEncoder


def texts_checksum(texts: Sequence[str]) -> str:
    """sha256 of the texts in order (each length-prefixed, so splits between texts count)."""
    digest = hashlib.sha256()
    digest.update(len(texts).to_bytes(8, "little"))
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """``$MAMLKIT_CACHE/text`` if set, else ``~/.cache/mamlkit/text``."""
    base = os.environ.get("MAMLKIT_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "mamlkit") / "text"


def cache_path(cache_dir: str | os.PathLike[str] | None, key: dict[str, Any]) -> Path:
    """File that holds the result for ``key`` (a dict of str/int values) under ``cache_dir``."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    text = "\n".join(f"{k}={key[k]}" for k in sorted(key))
    model = "".join(c if c.isalnum() or c in "-." else "_" for c in str(key.get("model_id", "")))
    digest = hashlib.sha256(text.encode()).hexdigest()[:24]
    return folder / f"{model}-{key.get('kind', 'tensor')}-{digest}.pt"


def cached_tensor(key: dict[str, Any], compute: Callable[[], Tensor],
                  cache_dir: str | os.PathLike[str] | None = None) -> Tensor:
    """The tensor stored for ``key``, or ``compute()``'s result, stored atomically for next time.

    A stored file whose recorded key differs (a hash collision or a hand-copied file) is ignored
    and recomputed.
    """
    path = cache_path(cache_dir, key)
    if path.is_file():
        stored = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(stored, dict) and stored.get("key") == {k: str(v) for k, v in key.items()}:
            return stored["tensor"]
    tensor = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        torch.save({"key": {k: str(v) for k, v in key.items()}, "tensor": tensor}, tmp)
        Path(tmp).chmod(0o644)
        Path(tmp).replace(path)
    finally:
        if Path(tmp).exists():
            Path(tmp).unlink()
    return tensor


def sentence_cache_key(texts: Sequence[str], model_id: str = DEFAULT_MODEL_ID,
                       max_length: int = 128) -> dict[str, Any]:
    """The cache key :func:`embed_texts` stores sentence embeddings of ``texts`` under."""
    return {"kind": "sentence", "model_id": model_id, "max_length": max_length,
            "pooling": "mean-l2", "texts": texts_checksum(texts), "count": len(texts)}


def embed_texts(texts: Sequence[str], encoder: PretrainedSentenceEncoder | None = None,
                model_id: str = DEFAULT_MODEL_ID, model_dir: str | os.PathLike[str] | None = None,
                max_length: int = 128, batch_size: int = 64,
                cache_dir: str | os.PathLike[str] | None = None) -> Tensor:
    """Sentence embeddings ``[len(texts), dim]`` of ``texts``, computed once and cached on disk.

    The cache key is the model id, ``max_length`` and :func:`texts_checksum`; on a hit neither
    the model nor ``transformers`` is loaded. On a miss ``encoder`` is used, or one is built from
    ``model_dir`` (default: the bundled all-MiniLM-L6-v2).
    """
    if encoder is not None:
        model_id, max_length = encoder.model_id, encoder.max_length
    key = sentence_cache_key(texts, model_id, max_length)

    def compute() -> Tensor:
        model = encoder or PretrainedSentenceEncoder(model_dir, model_id, max_length, batch_size)
        return model.encode(texts)

    return cached_tensor(key, compute, cache_dir)


def hidden_states_for_texts(texts: Sequence[str], trainable_layers: int, length: int = 64,
                            encoder: PretrainedSentenceEncoder | None = None,
                            model_id: str = DEFAULT_MODEL_ID,
                            model_dir: str | os.PathLike[str] | None = None,
                            batch_size: int = 64,
                            cache_dir: str | os.PathLike[str] | None = None,
                            num_layers: int | None = None) -> Tensor:
    """Frozen lower-layer token states ``[len(texts), length, dim + 1]`` (mask last), cached.

    These are the inputs of the last ``trainable_layers`` transformer layers, for
    :class:`mamlkit.text.last_layers.LastLayersClassifier`. ``num_layers`` (the model's layer
    count) lets a cache hit skip loading the model; it is read from the model otherwise.
    Memory: ``4 * length * (dim + 1)`` bytes per text (about 100 KB for MiniLM at length 64).
    """
    if trainable_layers < 1:
        raise ValueError(f"trainable_layers must be >= 1, got {trainable_layers}.")
    built: list[PretrainedSentenceEncoder] = []

    def get_encoder() -> PretrainedSentenceEncoder:
        if encoder is not None:
            return encoder
        if not built:
            built.append(PretrainedSentenceEncoder(model_dir, model_id, batch_size=batch_size))
        return built[0]

    if encoder is not None:
        model_id = encoder.model_id
    if num_layers is None:
        num_layers = get_encoder().num_layers
    if trainable_layers > num_layers:
        raise ValueError(
            f"trainable_layers={trainable_layers} but the model has {num_layers} layers."
        )
    layer = num_layers - trainable_layers
    key = {"kind": "hidden", "model_id": model_id, "layer": layer, "length": length,
           "texts": texts_checksum(texts), "count": len(texts)}
    return cached_tensor(key, lambda: get_encoder().hidden_states(texts, layer, length), cache_dir)
