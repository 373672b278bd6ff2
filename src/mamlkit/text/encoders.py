"""Small trainable text classifiers over token ids that need no pretrained weights.

Both take int64 token ids ``[batch, length]`` (padding id 0, see
:class:`mamlkit.text.tokenizer.WordTokenizer`) and return logits ``[batch, num_classes]``. They
use only ops with ``torch.func.vmap`` batching rules (``nn.Embedding`` and a masked mean or masked
max instead of ``nn.EmbeddingBag``), so a meta-learner can run them per task with
``torch.func.functional_call`` inside ``vmap``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mamlkit.text.tokenizer import PAD_ID


def masked_mean(vectors: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``vectors`` ``[batch, length, dim]`` over positions where ``mask`` (``[batch,
    length]``, bool or 0/1) is set; an all-masked row gives zeros instead of NaN."""
    weights = mask.to(vectors.dtype).unsqueeze(-1)
    return (vectors * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class BagOfEmbeddingsClassifier(nn.Module):
    """Word embeddings averaged over the non-padding tokens, then a linear head.

    The averaged-word-vector model of fastText (Joulin et al., 2017, "Bag of Tricks for Efficient
    Text Classification"), written with ``nn.Embedding`` + masked mean so it works under ``vmap``.
    ``hidden_dim`` adds one ReLU layer between the average and the head.
    """

    def __init__(self, vocab_size: int, num_classes: int, embedding_dim: int = 64,
                 hidden_dim: int | None = None) -> None:
        super().__init__()
        if vocab_size < 2 or num_classes < 1:
            raise ValueError(
                f"vocab_size must be >= 2 and num_classes >= 1, got {vocab_size} and {num_classes}."
            )
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD_ID)
        features = embedding_dim
        self.hidden = None
        if hidden_dim is not None:
            self.hidden = nn.Linear(embedding_dim, hidden_dim)
            features = hidden_dim
        self.head = nn.Linear(features, num_classes)

    def features(self, token_ids: Tensor) -> Tensor:
        """Sentence vectors ``[batch, features]`` before the head."""
        _check_token_ids(token_ids)
        pooled = masked_mean(self.embedding(token_ids), token_ids != PAD_ID)
        return torch.relu(self.hidden(pooled)) if self.hidden is not None else pooled

    def forward(self, token_ids: Tensor) -> Tensor:
        """Logits ``[batch, num_classes]`` of token ids ``[batch, length]``."""
        return self.head(self.features(token_ids))


class TextCNNClassifier(nn.Module):
    """Word embeddings, 1D convolutions of several widths, masked max-over-time pooling, a head.

    Kim, 2014 ("Convolutional Neural Networks for Sentence Classification"). Positions whose
    convolution window starts on padding are excluded from the max, so padding never wins it.
    """

    def __init__(self, vocab_size: int, num_classes: int, embedding_dim: int = 64,
                 channels: int = 64, kernel_sizes: Sequence[int] = (2, 3, 4)) -> None:
        super().__init__()
        if vocab_size < 2 or num_classes < 1:
            raise ValueError(
                f"vocab_size must be >= 2 and num_classes >= 1, got {vocab_size} and {num_classes}."
            )
        if not kernel_sizes or any(k < 1 for k in kernel_sizes):
            raise ValueError(f"kernel_sizes must be positive integers, got {tuple(kernel_sizes)}.")
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD_ID)
        self.convs = nn.ModuleList(
            nn.Conv1d(embedding_dim, channels, k, padding=k - 1) for k in kernel_sizes)
        self.head = nn.Linear(channels * len(kernel_sizes), num_classes)

    def features(self, token_ids: Tensor) -> Tensor:
        """Sentence vectors ``[batch, channels * len(kernel_sizes)]`` before the head."""
        _check_token_ids(token_ids)
        mask = token_ids != PAD_ID
        embedded = self.embedding(token_ids).transpose(1, 2)
        pooled = []
        for conv in self.convs:
            # padding=k-1 on both sides: output position j covers tokens j-k+1..j; keep positions
            # ending on a real token (j < length) that is not padding.
            activations = torch.relu(conv(embedded))[..., : token_ids.shape[1]]
            masked = activations.masked_fill(~mask.unsqueeze(1), float("-inf"))
            best = masked.amax(dim=-1)
            pooled.append(torch.where(torch.isinf(best), torch.zeros_like(best), best))
        return torch.cat(pooled, dim=-1)

    def forward(self, token_ids: Tensor) -> Tensor:
        """Logits ``[batch, num_classes]`` of token ids ``[batch, length]``."""
        return self.head(self.features(token_ids))


def _check_token_ids(token_ids: Tensor) -> None:
    if token_ids.dtype != torch.int64 or token_ids.dim() != 2:
        raise ValueError(
            f"expected int64 token ids [batch, length], got dtype {token_ids.dtype} and shape "
            f"{tuple(token_ids.shape)}. Encode texts with WordTokenizer.encode."
        )
