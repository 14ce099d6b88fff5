"""Margin-softmax cross-entropy over a Selection: the loss both methods share.

Cosines are computed in float32 from L2-normalised embeddings and class weights, the
margin is applied, masked columns are removed from the softmax, and the mean
cross-entropy over rows is returned.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.margins import CombinedMargin
from core.sampler import Selection


def cosine_logits(embeddings: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``normalize(embeddings) @ normalize(weights).T`` in at least float32, clamped to [-1, 1]."""
    dtype = torch.promote_types(torch.promote_types(embeddings.dtype, weights.dtype), torch.float32)
    emb = F.normalize(embeddings.to(dtype), dim=1)
    w = F.normalize(weights.to(dtype), dim=1)
    return (emb @ w.t()).clamp(-1.0, 1.0)


class MarginSoftmaxLoss(nn.Module):
    """Cross-entropy of the margin logits of a Selection."""

    def __init__(self, margin: CombinedMargin) -> None:
        super().__init__()
        self.margin = margin

    def logits(self, selection: Selection) -> torch.Tensor:
        cosine = cosine_logits(selection.embeddings, selection.weights)
        logits = self.margin(cosine, selection.targets)
        if selection.negative_mask is not None:
            logits = logits.masked_fill(selection.negative_mask, float("-inf"))
        return logits

    def forward(self, selection: Selection) -> torch.Tensor:
        return F.cross_entropy(self.logits(selection), selection.targets)
