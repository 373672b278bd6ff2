"""Adapting the last transformer layer(s) of a frozen pretrained encoder, on cached lower layers.

Fine-tuning only the top of a pretrained transformer keeps most of its knowledge while letting the
representation move (Howard & Ruder, 2018, ULMFiT; for meta-learning, Bansal et al., 2020,
"Learning to Few-Shot Learn Across Diverse Natural Language Classification Tasks"). The lower
layers are frozen, so their outputs are computed once
(:func:`mamlkit.text.embedding_cache.hidden_states_for_texts`) and the trainable part,
:class:`LastLayersClassifier`, is a plain ``nn.Module`` whose input is a single tensor
``[batch, length, dim + 1]`` (token states, attention mask in the last channel). It is written in
plain tensor ops, so ``torch.func.functional_call`` and ``vmap`` work on it.

Use it with first-order MAML (``first_order=True``) by default: second-order MAML through a
transformer layer keeps the inner loop's graph of every attention map per task and needs many
times the memory for little gain (Finn et al., 2017, report first-order MAML close to full MAML).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn


class BertLayer(nn.Module):
    """One post-LayerNorm BERT encoder layer (Devlin et al., 2019) in plain ops, no dropout.

    Self-attention with ``num_heads`` heads over the unmasked positions, residual + LayerNorm,
    a GELU feed-forward of width ``intermediate_size``, residual + LayerNorm. Weights can be copied
    from a Hugging Face ``BertLayer`` with :meth:`load_hf_layer`.
    """

    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int,
                 layer_norm_eps: float = 1e-12) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(
                f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}."
            )
        self.num_heads = num_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.attention_output = nn.Linear(hidden_size, hidden_size)
        self.attention_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.intermediate = nn.Linear(hidden_size, intermediate_size)
        self.output = nn.Linear(intermediate_size, hidden_size)
        self.output_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def _heads(self, x: Tensor) -> Tensor:
        batch, length, hidden = x.shape
        return x.reshape(batch, length, self.num_heads, hidden // self.num_heads).transpose(1, 2)

    def forward(self, states: Tensor, mask: Tensor) -> Tensor:
        """New token states ``[batch, length, hidden]``; ``mask`` is ``[batch, length]`` of 0/1."""
        batch, length, hidden = states.shape
        q, k, v = (self._heads(f(states)) for f in (self.query, self.key, self.value))
        scores = q @ k.transpose(-1, -2) / math.sqrt(hidden // self.num_heads)
        blocked = (mask <= 0).reshape(batch, 1, 1, length)
        scores = scores.masked_fill(blocked, torch.finfo(scores.dtype).min)
        context = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, length, hidden)
        states = self.attention_norm(states + self.attention_output(context))
        feed = self.output(nn.functional.gelu(self.intermediate(states)))
        return self.output_norm(states + feed)

    @torch.no_grad()
    def load_hf_layer(self, hf_layer: nn.Module) -> BertLayer:
        """Copy the weights of a Hugging Face ``BertLayer`` (same sizes) into this layer."""
        source = dict(hf_layer.named_parameters())
        names = {
            "query": "attention.self.query", "key": "attention.self.key",
            "value": "attention.self.value", "attention_output": "attention.output.dense",
            "attention_norm": "attention.output.LayerNorm", "intermediate": "intermediate.dense",
            "output": "output.dense", "output_norm": "output.LayerNorm",
        }
        for mine, theirs in names.items():
            for part in ("weight", "bias"):
                key = f"{theirs}.{part}"
                if key not in source:
                    raise ValueError(
                        f"the given layer has no parameter {key!r}: it is not a BERT layer. "
                        "Pass model.encoder.layer[i] of a BERT-family model."
                    )
                getattr(getattr(self, mine), part).copy_(source[key])
        return self


class LastLayersClassifier(nn.Module):
    """Trainable last transformer layer(s) + masked mean pooling + L2 norm + linear head.

    Input: ``[batch, length, hidden + 1]`` token states entering the first trainable layer with the
    attention mask (1.0 / 0.0) as the last channel, as produced by
    :func:`mamlkit.text.embedding_cache.hidden_states_for_texts`. Output: logits
    ``[batch, num_classes]``. With the pretrained layers copied in (:func:`from_pretrained`) and
    before any training, the pooled features equal the frozen encoder's sentence embeddings.
    ``scale`` multiplies the unit-norm features before the head, since logits of unit vectors
    through a freshly initialised head are too small to train quickly.
    """

    def __init__(self, layers: list[BertLayer], hidden_size: int, num_classes: int,
                 scale: float = 10.0) -> None:
        super().__init__()
        if not layers:
            raise ValueError("give at least one trainable layer.")
        self.layers = nn.ModuleList(layers)
        self.hidden_size = hidden_size
        self.scale = float(scale)
        self.head = nn.Linear(hidden_size, num_classes)

    def features(self, inputs: Tensor) -> Tensor:
        """Unit-norm sentence features ``[batch, hidden]`` (before ``scale`` and the head)."""
        if inputs.dim() != 3 or inputs.shape[-1] != self.hidden_size + 1:
            raise ValueError(
                f"expected cached states [batch, length, {self.hidden_size + 1}] (hidden states "
                f"plus the mask channel), got shape {tuple(inputs.shape)}. Build them with "
                "hidden_states_for_texts."
            )
        states, mask = inputs[..., : self.hidden_size], inputs[..., self.hidden_size]
        for layer in self.layers:
            states = layer(states, mask)
        weights = mask.unsqueeze(-1)
        pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return nn.functional.normalize(pooled, dim=-1)

    def forward(self, inputs: Tensor) -> Tensor:
        """Logits ``[batch, num_classes]``."""
        return self.head(self.scale * self.features(inputs))


def last_layers_from_pretrained(model: Any, trainable_layers: int, num_classes: int,
                                scale: float = 10.0) -> LastLayersClassifier:
    """A :class:`LastLayersClassifier` holding copies of the last ``trainable_layers`` layers.

    ``model`` is a :class:`mamlkit.text.pretrained.PretrainedSentenceEncoder` or a Hugging Face
    BERT-family model (with ``.config`` and ``.encoder.layer``). The copies are independent
    trainable parameters; the encoder itself stays frozen.
    """
    hf_model = getattr(model, "model", model)
    config = hf_model.config
    total = int(config.num_hidden_layers)
    if not 1 <= trainable_layers <= total:
        raise ValueError(
            f"trainable_layers must be in 1..{total} (the model's layer count), got "
            f"{trainable_layers}."
        )
    if getattr(config, "hidden_act", "gelu") != "gelu":
        raise ValueError(
            f"the model uses activation {config.hidden_act!r}; BertLayer implements 'gelu' only."
        )
    layers = [
        BertLayer(config.hidden_size, config.num_attention_heads, config.intermediate_size,
                  config.layer_norm_eps).load_hf_layer(hf_model.encoder.layer[i])
        for i in range(total - trainable_layers, total)
    ]
    return LastLayersClassifier(layers, config.hidden_size, num_classes, scale)
