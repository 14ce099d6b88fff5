"""Which rows of a sharded per-class table a step touches, and where each rank's rows start.

Shared by every method built on the center store: the contiguous class shards, the
shard-independent initialisation, uniform or stratified negatives beside the batch's
positives, and the fixed-shape merge of rows repeated across micro-batches.
"""

from __future__ import annotations

from typing import Optional

import torch

# Centers are initialised in fixed chunks of rows, each from its own seed, so that a
# row's initial value does not depend on how the classes are sharded.
_INIT_CHUNK_ROWS = 1 << 16


def class_shard(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """``(start, count)`` of rank's contiguous class range; the first ``C % W`` ranks get one more."""
    base, extra = divmod(num_classes, world_size)
    return base * rank + min(rank, extra), base + (1 if rank < extra else 0)


def init_centers(start: int, count: int, dim: int, seed: int, device: Optional[torch.device] = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """N(0, 0.01) rows ``start .. start+count`` of the logical ``[C, dim]`` center table.

    On a GPU the values are drawn there (a CPU draw of 20M x 512 normals takes a minute):
    still independent of the sharding, though not equal to the CPU's draws.
    """
    centers = torch.empty(count, dim, device=device, dtype=dtype)
    draw_on = centers.device if centers.device.type == "cuda" else torch.device("cpu")
    first_chunk, last_chunk = start // _INIT_CHUNK_ROWS, (start + count - 1) // _INIT_CHUNK_ROWS
    for chunk in range(first_chunk, last_chunk + 1):
        generator = torch.Generator(device=draw_on).manual_seed(seed * 1_000_003 + chunk)
        values = torch.randn(_INIT_CHUNK_ROWS, dim, generator=generator, device=draw_on) * 0.01
        chunk_start = chunk * _INIT_CHUNK_ROWS
        lo, hi = max(start, chunk_start), min(start + count, chunk_start + _INIT_CHUNK_ROWS)
        centers[lo - start:hi - start] = values[lo - chunk_start:hi - chunk_start].to(device, dtype)
    return centers


def sample_without(excluded: torch.Tensor, total: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` distinct values drawn uniformly from ``[0, total)`` minus sorted ``excluded``.

    Draws in the compressed range ``[0, total - len(excluded))`` and shifts each value past
    the excluded ones before it, so the cost grows with ``count``, not with ``total``.
    """
    free = total - excluded.numel()
    device = excluded.device
    if count >= free:
        drawn = torch.arange(free, device=device)
    else:
        drawn = torch.empty(0, dtype=torch.int64, device=device)
        while drawn.numel() < count:
            need = count - drawn.numel()
            # Oversample for the duplicates a draw with replacement produces.
            extra = int(need * (1.0 + 2.0 * need / free)) + 16
            fresh = torch.randint(free, (extra,), generator=generator, device=device)
            drawn = torch.unique(torch.cat([drawn, fresh]))
        if drawn.numel() > count:
            keep = torch.randperm(drawn.numel(), generator=generator, device=device)[:count]
            drawn = drawn[keep]
    return shift_past(drawn, excluded)


def shift_past(drawn: torch.Tensor, excluded: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Map values of the compressed range ``[0, total - E)`` to ``[0, total)`` minus sorted ``excluded``.

    Each value moves up by the number of excluded values at or below its destination;
    entries of ``excluded`` where ``valid`` is False (padding, sorted last) never count.
    """
    shifted = excluded - torch.arange(excluded.numel(), device=excluded.device)
    if valid is not None:
        shifted = torch.where(valid, shifted, torch.iinfo(shifted.dtype).max)
    return drawn + torch.searchsorted(shifted, drawn, right=True)


def first_occurrence(values: torch.Tensor) -> torch.Tensor:
    """Per position, the position of the first occurrence of its value.

    Fixed-size tensors only (a stable sort, a running maximum, a scatter), so merging
    the rows of several micro-batches never waits for the host the way ``unique`` does.
    """
    order = torch.argsort(values, stable=True)
    ordered = values[order]
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    positions = torch.arange(len(values), device=values.device)
    group_start = torch.cummax(torch.where(starts, positions, 0), dim=0).values
    leaders = torch.empty_like(order)
    leaders[order] = order[group_start]
    return leaders


def stratified_columns(local: torch.Tensor, in_shard: torch.Tensor, total: int, count: int,
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` sorted columns: every distinct positive plus stratified random negatives, all
    in fixed-size tensors, so that no step waits for the host (``unique`` and a sampling loop
    each would). Also returns the positives, sorted, padded with ``total`` to the batch size.

    ``count`` must be at least the number of labels. The ``count - P`` negatives are one
    uniform draw from each of ``count - P`` integer strata of the ``total - P`` free classes,
    rotated by a uniform offset: distinct by construction, each free class drawn with
    probability ``(count - P) / (total - P)`` over the rotation, like the uniform sampler's,
    though within a step two neighbours of one stratum exclude each other.
    """
    device = local.device
    labels = torch.sort(torch.where(in_shard, local, total)).values
    first = torch.ones_like(labels, dtype=torch.bool)
    first[1:] = labels[1:] != labels[:-1]
    first &= labels < total
    positives = torch.sort(torch.where(first, labels, total)).values
    num_positives = first.sum()
    free = total - num_positives
    wanted = count - num_positives
    slot = torch.arange(count, device=device)
    low = slot * free // wanted.clamp(min=1)
    high = (slot + 1) * free // wanted.clamp(min=1)
    jitter = (torch.rand(count, device=device, generator=generator) * (high - low)).long()
    offset = (torch.rand((), device=device, generator=generator) * free).long()
    drawn = (low + jitter + offset) % free
    negatives = torch.where(slot < wanted, shift_past(drawn, positives, positives < total), total)
    index = torch.sort(torch.cat([positives, negatives])).values[:count]
    return index, positives
