"""Text experiments' models and their encoder-dependent defaults.

``pretrained``: an MLP head on frozen sentence embeddings; ``bag`` / ``cnn``: trainable word
encoders; ``last-layer`` / ``lora``: MiniLM's top layer(s) on cached lower-layer states, adapted
whole or through low-rank adapters (Hu et al., 2022), with a linear head.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mamlkit.config import TrainConfig, by_concern
from mamlkit.core.learner import MetaLearner
from mamlkit.experiments.common import build_learner
from mamlkit.experiments.text_data import (
    CACHED_STATE_ENCODERS,
    TextTask,
    pretrained_encoder,
    top_layers,
)
from mamlkit.text.lora import LORA_TARGETS

HEAD_HIDDEN = 256
"""Hidden width of the MLP head on frozen sentence embeddings."""
BAG_EMBEDDING_DIM = 64
"""Word-vector size of the bag and cnn encoders."""
LORA_RANK = 8
"""Rank of the LoRA adapters."""
LORA_PROTOMAML_TARGETS = ("query", "key", "value", "attention_output", "intermediate", "output")
"""Projections with adapters under ProtoMAML: all six linear maps of the layer. On BANKING77
meta-validation episodes (400, one layer, rank 8, 50 meta-iterations) the prototypes on the learned
features gained 1.9 points with them and 0.9 with query and value only; the outer gradient
through the prototypes trains the features themselves, and the feed-forward block holds two thirds
of the layer's weights."""
PROTOTYPE_HEAD_SCALE = 3.0
"""Feature scale under ProtoMAML. Its head starts at ``W_k = 2 c_k``, ``b_k = -||c_k||^2`` on
features of norm ``s``, so in 1-shot episodes the logits are ``2 s^2 cos(f, f_k)`` plus a common
term: 18 cosines at ``s = 3`` (a softmax temperature of about 0.06, the range contrastive sentence
encoders train with), 200 at ``s = 10``, where the softmax is almost hard and the few misranked
queries dominate the gradient. On BANKING77 meta-validation episodes (adapters on query and
value, Adam 1e-3, 20 examples per class) the prototypes on the learned features gained 0.9, 1.1
and 1.2 points at 25, 50 and 75 meta-iterations with ``s = 3``, between -1.3 and +0.8 with ``s =
10`` (three runs: Adam 1e-3 and 3e-3, capped and uncapped meta-training)."""


class EmbeddingHead(nn.Module):
    """Meta-learned classifier on frozen sentence embeddings: Linear -> ReLU -> Linear.

    The unit-norm embeddings are multiplied by ``sqrt(dim)`` so their coordinates have about unit
    scale; the last ``nn.Linear`` (``output``) is the part ANIL adapts.
    """

    def __init__(self, dim: int, num_classes: int, hidden: int = HEAD_HIDDEN) -> None:
        super().__init__()
        self.scale = math.sqrt(dim)
        self.hidden = nn.Linear(dim, hidden)
        self.output = nn.Linear(hidden, num_classes)

    def features(self, embeddings: Tensor) -> Tensor:
        """Hidden features ``[batch, hidden]`` before the output layer."""
        return torch.relu(self.hidden(self.scale * embeddings))

    def forward(self, embeddings: Tensor) -> Tensor:
        """Logits ``[batch, num_classes]`` of embeddings ``[batch, dim]``."""
        return self.output(self.features(embeddings))


def build_model(config: TrainConfig, task: TextTask) -> nn.Module:
    """A freshly initialised model for ``config.encoder`` with ``config.ways`` outputs.

    The last-layer model starts with a zero head: labels are permuted in every episode, so no
    class-specific head can be meta-learned, and from zero one gradient step sets each class's
    weights to its mean support feature minus the overall mean, a prototype classifier (the
    "zero trick" of Triantafillou et al., 2020, Proto-MAML). A random head moves too little in a
    few small steps for a transformer layer's step size.
    """
    if config.encoder == "pretrained":
        return EmbeddingHead(int(task.features.shape[1]), config.ways)
    if config.encoder == "bag":
        from mamlkit.text.encoders import BagOfEmbeddingsClassifier

        return BagOfEmbeddingsClassifier(task.vocab_size, config.ways, BAG_EMBEDDING_DIM)
    if config.encoder == "cnn":
        from mamlkit.text.encoders import TextCNNClassifier

        return TextCNNClassifier(task.vocab_size, config.ways, BAG_EMBEDDING_DIM)
    from mamlkit.text.last_layers import last_layers_from_pretrained

    model = last_layers_from_pretrained(pretrained_encoder(), top_layers(config), config.ways,
                                        feature_scale(config))
    if config.encoder == "lora":
        from mamlkit.text.lora import add_lora

        model = add_lora(model, lora_targets(config), rank=LORA_RANK)
    with torch.no_grad():  # zero head: the first inner step makes it a prototype-like classifier
        model.head.weight.zero_()
        model.head.bias.zero_()
    return model


def feature_scale(config: TrainConfig) -> float:
    """The factor on the unit-norm features of the cached-state models before their head:
    :data:`PROTOTYPE_HEAD_SCALE` under ProtoMAML, else 10 (see
    :class:`~mamlkit.text.last_layers.LastLayersClassifier`)."""
    return PROTOTYPE_HEAD_SCALE if config.algo == "protomaml" else 10.0


def lora_targets(config: TrainConfig) -> tuple[str, ...]:
    """The projections of each adapted layer that get LoRA adapters: every linear map of the layer
    under ProtoMAML (:data:`LORA_PROTOMAML_TARGETS`), query and value otherwise."""
    return LORA_PROTOMAML_TARGETS if config.algo == "protomaml" else LORA_TARGETS


def make_learner(config: TrainConfig, model: nn.Module, **overrides: Any) -> MetaLearner:
    """``config.algo`` around ``model``; under ``batching=auto`` the cached-state encoders run
    one task at a time (a transformer layer vmapped over a meta-batch needs gigabytes)."""
    if config.encoder in CACHED_STATE_ENCODERS and config.batching == "auto":
        overrides.setdefault("batching", "loop")
    return build_learner(config, model, "cross_entropy", **overrides).to(config.device)


def _learner_dir(run_dir: Path, config: TrainConfig) -> Path:
    return run_dir / config.algo


LAST_LAYER_DEFAULTS: dict[str, Any] = by_concern(
    algorithm={"first_order": True, "inner_steps": 2, "inner_lr": 0.01},
    loop={"meta_batch_size": 4, "val_tasks": 20, "val_every": 25, "checkpoint_every": 25,
          "iterations": 200, "meta_lr": 3e-5},
    evaluation={"eval_inner_steps": 5})
"""Defaults of ``--encoder last-layer``: first-order MAML (second order through a transformer
layer keeps every attention map of every inner step per task), smaller meta-batches and
validation sets so a CPU run stays within memory, and an outer step size in the range used to
fine-tune BERT (Devlin et al., 2019), since Adam at 1e-3 wrecks the pretrained layer within a
few dozen steps. Options given explicitly still win (``--no-first-order`` for second order)."""


LORA_DEFAULTS: dict[str, Any] = dict(LAST_LAYER_DEFAULTS)
"""Defaults of ``--encoder lora``: those of ``last-layer``. A ten times larger outer step size
(3e-4) lowered BANKING77 5-way 1-shot validation accuracy from 92.5% (iteration 25) to 76.6%
(iteration 175): the rank-8 update ``2 B A`` then grows to a large fraction of the pretrained
weights within a hundred steps."""


LORA_PROTOMAML_DEFAULTS: dict[str, Any] = {**LORA_DEFAULTS, "meta_lr": 1e-3}
"""Defaults of ``--encoder lora --algo protomaml``: those of ``lora`` with Adam at 1e-3. The
prototype-initialised head passes the outer gradient to the adapters through the prototypes
(the features themselves are trained to separate the episode's classes), and at this rate the
prototypes on the learned features gain on meta-validation episodes within 50 meta-iterations
(at the lora default of 3e-5 the zero-head MAML run's adapters hardly moved in 120)."""


def derived_defaults(chosen: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults that depend on the encoder and algorithm chosen (see
    :data:`LAST_LAYER_DEFAULTS`, :data:`LORA_DEFAULTS`, :data:`LORA_PROTOMAML_DEFAULTS`)."""
    if chosen.get("encoder") == "lora" and chosen.get("algo") == "protomaml":
        return dict(LORA_PROTOMAML_DEFAULTS)
    return dict({"last-layer": LAST_LAYER_DEFAULTS, "lora": LORA_DEFAULTS}.get(
        chosen.get("encoder"), {}))
