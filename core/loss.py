"""Margin-softmax cross-entropy over a Selection: the loss both methods share.

Cosines are computed in float32 from L2-normalised embeddings and class weights, the
margin is applied, masked columns are removed from the softmax, and the mean
cross-entropy over rows is returned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from core.dynamics import margins_from_best, margins_from_logits
from core.margins import CombinedMargin, build_margin
from core.sampler import Selection

if TYPE_CHECKING:
    from core.config import TrainConfig


def cosine_logits(embeddings: torch.Tensor, weights: torch.Tensor, normalize_weights: bool = True) -> torch.Tensor:
    """``normalize(embeddings) @ normalize(weights).T`` in at least float32, clamped to [-1, 1].

    ``weights [K, P, D]`` (P prototypes per column) give each column its best prototype's
    cosine, so the gradient reaches that prototype alone (sub-center ArcFace).
    """
    dtype = torch.promote_types(torch.promote_types(embeddings.dtype, weights.dtype), torch.float32)
    emb = F.normalize(embeddings.to(dtype), dim=1)
    w = F.normalize(weights.to(dtype), dim=-1) if normalize_weights else weights.to(dtype)
    if w.dim() == 3:
        return (emb @ w.flatten(0, 1).t()).view(emb.shape[0], *w.shape[:2]).amax(dim=2).clamp(-1.0, 1.0)
    return (emb @ w.t()).clamp(-1.0, 1.0)


class _ShardedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy when each rank holds a slice of the columns (model parallel).

    Logits never leave their rank: row maxima are all-reduced with MAX, sums of
    exponentials with SUM, and each row's target logit (present on exactly one rank,
    ``-1`` elsewhere) with SUM. Every rank returns the same global loss, and the gradient
    of its own columns, ``(softmax - onehot) / rows``.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(logits.shape[0], device=logits.device)
        has_target = targets >= 0
        row_max = logits.detach().max(dim=1).values
        dist.all_reduce(row_max, op=dist.ReduceOp.MAX)
        exp = (logits.detach() - row_max.unsqueeze(1)).exp_()
        total = exp.sum(dim=1)
        dist.all_reduce(total)
        target_logit = torch.where(has_target, logits.detach()[rows, targets.clamp(min=0)] - row_max,
                                   torch.zeros_like(row_max))
        dist.all_reduce(target_logit)
        probabilities = exp.div_(total.unsqueeze(1))
        ctx.save_for_backward(probabilities, targets)
        return (total.log() - target_logit).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        probabilities, targets = ctx.saved_tensors
        rows = torch.arange(targets.shape[0], device=targets.device)
        grad_logits = probabilities.clone()
        grad_logits[rows, targets.clamp(min=0)] -= (targets >= 0).to(grad_logits.dtype)  # no nonzero(): no sync
        return grad_logits * (grad / probabilities.shape[0]), None


def sharded_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over columns split across ranks; plain cross-entropy in one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return F.cross_entropy(logits, targets)
    return _ShardedCrossEntropy.apply(logits, targets)


class MarginSoftmaxLoss(nn.Module):
    """Cross-entropy of the margin logits of a Selection.

    Selections of at least ``chunk_columns`` one-prototype columns without masks, filtering
    or sharding (a single-process Partial FC head) take the chunked path of
    core/chunked_loss.py, with bf16 GEMMs on CUDA unless ``bf16_on_cuda`` is off (a
    trainer run with ``--amp off`` keeps them in float32); ``chunk_columns=None`` always
    uses the simple path. A selection whose weights stay in their table (``weight_table``) takes
    the fused Triton head of core/triton_head.py, on any number of ranks.

    With ``record_margins`` on, each forward also leaves every row's cosine margin (its given
    class against the best other column, ``core/dynamics.py``) in ``last_margins``, taken
    from the cosines the loss computes anyway.
    """

    def __init__(self, margin: CombinedMargin, chunk_columns: Optional[int] = 65536,
                 bf16_on_cuda: bool = True) -> None:
        super().__init__()
        self.margin = margin
        self.chunk_columns = chunk_columns
        self.bf16_on_cuda = bf16_on_cuda
        self.record_margins = False
        self.last_margins: Optional[torch.Tensor] = None
        self.last_other_classes: Optional[torch.Tensor] = None  # the class each row lost most to (-1: unknown)

    def _chunked(self, selection: Selection) -> bool:
        return (self.chunk_columns is not None and selection.weights.shape[0] >= self.chunk_columns
                and selection.weights.dim() == 2 and not selection.sharded_columns and selection.negative_mask is None
                and self.margin.interclass_threshold is None)

    def logits(self, selection: Selection) -> torch.Tensor:
        cosine = cosine_logits(selection.embeddings, selection.weights, not selection.unit_weights)
        logits = self.margin(cosine, selection.targets)
        if selection.negative_mask is not None:
            logits = logits.masked_fill(selection.negative_mask, float("-inf"))
        if self.record_margins:
            self.last_margins, self.last_other_classes = margins_from_logits(
                cosine, logits, selection.targets, self.margin.scale, selection.sharded_columns,
                selection.column_classes)
        return logits

    def forward(self, selection: Selection) -> torch.Tensor:
        record: Optional[dict] = {} if self.record_margins else None
        bf16 = selection.weights.is_cuda and self.bf16_on_cuda
        if selection.weight_table is not None:
            from core.triton_head import fused_margin_cross_entropy
            loss = fused_margin_cross_entropy(selection.embeddings, selection.weights, selection.weight_table,
                                              selection.weight_rows, selection.targets, self.margin,
                                              torch.bfloat16 if bf16 else torch.float32,
                                              selection.sharded_columns, record)
        elif self._chunked(selection):
            from core.chunked_loss import chunked_margin_cross_entropy
            loss = chunked_margin_cross_entropy(selection.embeddings, selection.weights, selection.targets,
                                                self.margin, self.chunk_columns, torch.bfloat16 if bf16 else None,
                                                record)
        else:
            return self._simple(selection)
        if record is not None:  # what the head left of each row's best other column
            self.last_margins, self.last_other_classes = margins_from_best(
                record["target_cosine"], record["best_other"], record["columns"], selection.sharded_columns,
                selection.column_classes)
        return loss

    def _simple(self, selection: Selection) -> torch.Tensor:
        if selection.sharded_columns:
            return sharded_cross_entropy(self.logits(selection), selection.targets)
        return F.cross_entropy(self.logits(selection), selection.targets)


def margin_loss_for(config: "TrainConfig", bf16_on_cuda: bool = True) -> MarginSoftmaxLoss:
    """The loss a config trains with, the method's recipe filling unset margin options."""
    config = config.with_recipe()
    return MarginSoftmaxLoss(build_margin(config.margin, config.scale, config.margin_m, tuple(config.margin_combined),
                                          config.straight_through, config.interclass_threshold),
                             bf16_on_cuda=bf16_on_cuda)
