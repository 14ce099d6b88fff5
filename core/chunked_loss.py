"""Margin-softmax cross-entropy computed in class chunks, for large selections.

The simple path materialises the ``[B, K]`` float32 logits several times (cosines, the
margin, the scaled logits, the softmax and its gradient). Here the forward streams over
column chunks with an online max and sum, and the backward recomputes each chunk's
logits, so at most one ``[B, chunk]`` block exists at a time; the GEMMs may run in
bf16 with float32 accumulation. The margin only touches each row's target column, whose
cosine is computed once from the gathered target rows.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from core.dynamics import NO_COLUMN, best_other
from core.margins import CombinedMargin


def _chunk_cosines(embeddings: torch.Tensor, weights: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cosines of one column chunk: the GEMM in ``dtype``, the result in at least float32."""
    accumulate = torch.promote_types(embeddings.dtype, torch.float32)
    return (embeddings.to(dtype) @ weights.to(dtype).t()).to(accumulate).clamp_(-1.0, 1.0)


def _target_columns(targets: torch.Tensor, start: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's target column within the chunk ``[start, start + width)`` (clamped) and whether it lies there.

    Fixed shapes instead of boolean-mask indexing: a mask index runs ``nonzero``, which
    waits for the GPU once per chunk, twice per step, in a path meant to be sync-free.
    """
    local = targets - start
    return local.clamp(0, width - 1).unsqueeze(1), (local >= 0) & (local < width)


def _set_targets(block: torch.Tensor, columns: torch.Tensor, in_chunk: torch.Tensor, values: torch.Tensor) -> None:
    """Write ``values`` into each row's target column where it falls in this chunk; other rows keep theirs."""
    current = block.gather(1, columns).squeeze(1)
    block.scatter_(1, columns, torch.where(in_chunk, values.to(block.dtype), current).unsqueeze(1))


class _ChunkedMarginCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, embeddings: torch.Tensor, weights: torch.Tensor, targets: torch.Tensor,
                margin: CombinedMargin, chunk: int, dtype: torch.dtype, record: Optional[dict]) -> torch.Tensor:
        cos_target = (embeddings * weights[targets]).sum(dim=1).clamp(-1.0, 1.0)
        target_logit = margin.scale * margin.target_function(cos_target)
        row_max = torch.full_like(cos_target, float("-inf"))
        total = torch.zeros_like(cos_target)
        runner_up = torch.full_like(cos_target, NO_COLUMN)  # each row's best other cosine so far, and its column
        runner_up_column = torch.full_like(targets, -1)
        for start in range(0, weights.shape[0], chunk):
            logits = _chunk_cosines(embeddings, weights[start:start + chunk], dtype).mul_(margin.scale)
            columns, in_chunk = _target_columns(targets, start, logits.shape[1])
            if record is not None:  # the best column that is not the row's own, before the target is rewritten
                best, column = best_other(logits, columns.squeeze(1), in_chunk, NO_COLUMN * margin.scale)
                best = best / margin.scale
                runner_up_column = torch.where((best > runner_up) & (column >= 0), start + column, runner_up_column)
                runner_up = torch.maximum(runner_up, best)
            _set_targets(logits, columns, in_chunk, target_logit)
            new_max = torch.maximum(row_max, logits.max(dim=1).values)
            total = total * torch.exp(row_max - new_max) + torch.exp(logits - new_max.unsqueeze(1)).sum(dim=1)
            row_max = new_max
        log_normaliser = row_max + total.log()
        if record is not None:
            record["target_cosine"], record["best_other"], record["columns"] = cos_target.detach(), runner_up, \
                runner_up_column
        ctx.save_for_backward(embeddings, weights, targets, cos_target, log_normaliser)
        ctx.margin, ctx.chunk, ctx.dtype = margin, chunk, dtype
        return (log_normaliser - target_logit).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        embeddings, weights, targets, cos_target, log_normaliser = ctx.saved_tensors
        margin, chunk, dtype = ctx.margin, ctx.chunk, ctx.dtype
        batch = embeddings.shape[0]
        margin_slope = margin.target_slope(cos_target)
        target_logit = margin.scale * margin.target_function(cos_target)
        scale = grad / batch
        grad_embeddings = torch.zeros_like(embeddings)
        grad_weights = torch.empty_like(weights)
        for start in range(0, weights.shape[0], chunk):
            block = weights[start:start + chunk]
            logits = _chunk_cosines(embeddings, block, dtype).mul_(margin.scale)
            columns, in_chunk = _target_columns(targets, start, logits.shape[1])
            _set_targets(logits, columns, in_chunk, target_logit)
            # d loss / d cosine: scale * softmax for every column; the target column also
            # subtracts 1 and goes through the margin's slope.
            grad_cos = torch.exp(logits - log_normaliser.unsqueeze(1)).mul_(margin.scale * scale)
            target_prob = grad_cos.gather(1, columns).squeeze(1)
            _set_targets(grad_cos, columns, in_chunk, (target_prob - margin.scale * scale) * margin_slope)
            grad_embeddings += (grad_cos.to(dtype) @ block.to(dtype)).to(grad_embeddings.dtype)
            grad_weights[start:start + chunk] = (grad_cos.t().to(dtype) @ embeddings.to(dtype)).to(grad_weights.dtype)
        return grad_embeddings, grad_weights, None, None, None, None, None


def chunked_margin_cross_entropy(embeddings: torch.Tensor, weights: torch.Tensor, targets: torch.Tensor,
                                 margin: CombinedMargin, chunk: int = 65536,
                                 dtype: Optional[torch.dtype] = None, record: Optional[dict] = None) -> torch.Tensor:
    """Mean margin-softmax CE of un-normalised ``embeddings`` against un-normalised ``weights``.

    Every row needs a target column (single process, no masks, no inter-class filter);
    ``dtype`` is the GEMM dtype (default: the inputs' float dtype; bf16 on GPUs for speed).
    A ``record`` dict receives ``target_cosine``, ``best_other`` (each row's best other cosine) and ``columns``
    (its column, -1: none), from which core/dynamics.py takes the margins.
    """
    precise = torch.promote_types(torch.promote_types(embeddings.dtype, weights.dtype), torch.float32)
    normalised_embeddings = F.normalize(embeddings.to(precise), dim=1)
    normalised_weights = F.normalize(weights.to(precise), dim=1)
    gemm_dtype = dtype or precise
    return _ChunkedMarginCrossEntropy.apply(normalised_embeddings, normalised_weights, targets, margin, chunk,
                                            gemm_dtype, record)
