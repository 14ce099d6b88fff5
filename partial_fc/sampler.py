"""Partial FC (An et al. 2020/2022): keep every class center, let each step's softmax see
the batch's positive classes plus a uniform random subset of the other centers, and
update only the centers that were seen.

The center store and its optimizer state live here, outside autograd and outside the
backbone's optimizer. ``select`` copies the sampled rows into a fresh leaf tensor; after
backward its gradient is exactly the sparse gradient of those rows, and ``step`` applies
the row optimizer to them alone. ``sample_rate=1.0`` skips sampling and is exact full
softmax. Classes are sharded in contiguous ranges so the same object serves one rank of
a model-parallel run.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from core.distributed import all_gather_no_grad, all_gather_with_grad
from core.errors import ConfigError
from core.sampler import ClassSampler, Selection
from partial_fc.center_optimizer import build_center_optimizer

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


class PartialFCSampler(ClassSampler):
    """Class centers ``[C_local, D]`` with sparse, exact per-row optimisation."""

    def __init__(self, num_classes: int, embedding_size: int, sample_rate: float = 0.1,
                 optimizer: str = "sgd", momentum: float = 0.9, weight_decay: float = 5e-4,
                 seed: int = 0, rank: int = 0, world_size: int = 1,
                 device: Optional[torch.device] = None, dtype: torch.dtype = torch.float32,
                 storage_dtype: Optional[torch.dtype] = None, sampling: str = "uniform") -> None:
        super().__init__()
        if not 0.0 < sample_rate <= 1.0:
            raise ConfigError(f"--sample-rate must be in (0, 1], got {sample_rate}")
        if sampling not in ("uniform", "stratified"):
            raise ConfigError(f"--pfc-sampling must be uniform or stratified, got {sampling!r}")
        self.sampling = sampling
        if num_classes < world_size:
            raise ConfigError(f"{num_classes} classes cannot be sharded over {world_size} processes")
        self.num_classes = num_classes
        self.world_size = world_size
        self.sample_rate = sample_rate
        self.shard_start, self.shard_size = class_shard(num_classes, rank, world_size)
        self.num_sample = int(sample_rate * self.shard_size)
        self.compute_dtype = dtype
        self.register_buffer("centers", init_centers(self.shard_start, self.shard_size, embedding_size, seed,
                                                     device, storage_dtype or dtype))
        self.center_optimizer = build_center_optimizer(optimizer, self.shard_size, embedding_size, momentum,
                                                       weight_decay, device, dtype, storage_dtype)
        self.register_buffer("positive_updates", torch.zeros(self.shard_size, dtype=torch.int64, device=device))
        self.register_buffer("negative_updates", torch.zeros(self.shard_size, dtype=torch.int64, device=device))
        self.generator = torch.Generator(device=self.centers.device)
        self.generator.manual_seed(seed * 7919 + rank)
        self.center_optimizer.rounding_generator = self.generator
        self._pending: list[tuple[Optional[torch.Tensor], torch.Tensor]] = []

    @property
    def samples_everything(self) -> bool:
        return self.num_sample >= self.shard_size

    def select(self, embeddings: torch.Tensor, labels: torch.Tensor, batch: dict[str, Any]) -> Selection:
        """Every rank sees the whole global batch against its own slice of the classes."""
        if self.world_size > 1:
            embeddings = all_gather_with_grad(embeddings)
            labels = all_gather_no_grad(labels.to(self.centers.device))
        labels = labels.to(self.centers.device, torch.int64)
        local = labels - self.shard_start
        in_shard = (local >= 0) & (local < self.shard_size)
        if self.samples_everything:
            index, positives = None, torch.unique(local[in_shard])
            # An alias of the store (a copy if it is kept in another dtype): its gradient is
            # dense, and the store only changes in step().
            weights = self.centers.detach().to(self.compute_dtype).requires_grad_(True)
            targets = torch.where(in_shard, local, -1)
        else:
            if self.sampling == "stratified" and self.num_sample >= local.numel():
                index, positives = stratified_columns(local, in_shard, self.shard_size, self.num_sample,
                                                      self.generator)
            else:
                positives = torch.unique(local[in_shard])
                index = self.choose_columns(positives)
            weights = self.centers[index].to(self.compute_dtype).requires_grad_(True)
            targets = torch.where(in_shard, torch.searchsorted(index, local.clamp(min=0)), -1)
        return Selection(embeddings=embeddings, weights=weights, targets=targets,
                         sharded_columns=self.world_size > 1, state={"index": index, "positives": positives})

    def choose_columns(self, positives: torch.Tensor) -> torch.Tensor:
        """Sorted local rows of this step: every positive plus uniform random negatives."""
        if positives.numel() >= self.num_sample:
            return positives
        negatives = sample_without(positives, self.shard_size, self.num_sample - positives.numel(), self.generator)
        return torch.sort(torch.cat([positives, negatives])).values

    def collect(self, selection: Selection) -> None:
        index, positives = selection.state["index"], selection.state["positives"]
        grad = selection.weights.grad
        if grad is None:
            raise RuntimeError("PartialFCSampler.collect needs the selection's weights to have a gradient")
        self._pending.append((index, grad))
        # Stratified selections pad their positives with shard_size: those rows count nothing.
        is_positive = (positives < self.shard_size).long()
        positives = positives.clamp(max=self.shard_size - 1)
        self.positive_updates.index_add_(0, positives, is_positive)
        if index is None:
            self.negative_updates += 1
        else:
            self.negative_updates[index] += 1
        self.negative_updates.index_add_(0, positives, -is_positive)

    def step(self, lr: float) -> None:
        if not self._pending:
            return
        indices = [index for index, _ in self._pending]
        leaders = None
        if len(self._pending) == 1:
            rows, grad = self._pending[0]
        elif any(index is None for index in indices):
            rows, grad = None, torch.zeros_like(self.centers)
            for index, part in self._pending:
                if index is None:
                    grad += part
                else:
                    grad.index_add_(0, index, part)
        else:
            # Micro-batches may share rows: every copy gets the row's summed gradient and
            # the optimizer writes each row once (see RowSGD.update).
            rows = torch.cat(indices)
            leaders = first_occurrence(rows)
            parts = torch.cat([part for _, part in self._pending])
            grad = torch.zeros_like(parts).index_add_(0, leaders, parts)[leaders]
        self._pending.clear()
        self.center_optimizer.update(self.centers, rows, grad, lr, leaders)

    def sharded_state_names(self) -> list[str]:
        names = ["centers", "positive_updates", "negative_updates"]
        return names + [f"center_optimizer.{name}" for name, _ in self.center_optimizer.named_buffers()]

    def shard_range(self) -> tuple[int, int]:
        return self.shard_start, self.shard_size

    def class_statistics(self) -> dict[str, torch.Tensor]:
        return {"positive_updates": self.positive_updates, "negative_updates": self.negative_updates}

    def get_extra_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


def sampler_from_config(config, num_classes: int, backbone, device: torch.device, context,
                        num_images: Optional[int] = None) -> PartialFCSampler:
    """The trainer's entry point (see core/build.py); the backbone is not needed here."""
    storage = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(config.center_dtype)
    if storage is None:
        raise ConfigError(f"--center-dtype must be float32 or bfloat16, got {config.center_dtype!r}")
    return PartialFCSampler(num_classes, config.embedding_size, config.sample_rate, config.optimizer,
                            config.momentum, config.weight_decay, config.seed, context.rank,
                            context.world_size, device, storage_dtype=storage, sampling=config.pfc_sampling)
