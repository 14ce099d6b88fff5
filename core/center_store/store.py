"""A classifier's per-class rows, sharded over ranks by class and updated only where a step touched them.

This is the machinery of Partial FC (An et al. 2020/2022), kept apart from Partial FC
itself so that any center-based variant (sub-center ArcFace, a prototype queue with
stored centers, ...) builds on the same public interface instead of another method's
private state:

* ``select`` takes a batch's embeddings and labels (gathered from every rank), keeps
  every positive class, adds uniform or stratified random negatives up to ``num_sample``
  of this rank's classes, and copies those rows into a fresh leaf tensor: after the
  backward its gradient is exactly the sparse gradient of those rows;
* ``collect`` (after each micro-batch's backward) queues that gradient;
* ``step`` merges the queued gradients, applies the row optimizer to the touched rows
  alone (unsampled rows keep their value *and* optimizer state bit for bit), and counts
  positive and passive (sampled negative) updates per class.

A row is ``row_shape`` values: ``(D,)`` for one center per class, ``(K, D)`` for K
prototypes per class (the loss then scores a class by its best prototype). With
``num_sample >= shard_size`` nothing is sampled: exact full softmax / model parallelism.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn

from core.center_store.row_optimizers import build_center_optimizer
from core.center_store.sampling import (class_shard, first_occurrence, init_centers, sample_without,
                                        stratified_columns)
from core.triton_head import resolve_head_kernel
from core.distributed import all_gather_no_grad, all_gather_with_grad
from core.errors import ConfigError
from core.sampler import Selection

SAMPLINGS = ("uniform", "stratified")
STORAGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
PROTOTYPE_SEED_STRIDE = 104_729  # prototype p of a row draws with seed + p x this


class CenterStore(nn.Module):
    """Rows ``[C_local, *row_shape]`` of this rank's classes, their optimizer state and update counters."""

    def __init__(self, num_classes: int, row_shape: tuple[int, ...], optimizer: str = "sgd", momentum: float = 0.9,
                 weight_decay: float = 5e-4, seed: int = 0, rank: int = 0, world_size: int = 1,
                 device: Optional[torch.device] = None, dtype: torch.dtype = torch.float32,
                 storage_dtype: Optional[torch.dtype] = None, head_kernel: str = "torch") -> None:
        """``head_kernel``: ``torch`` copies each step's rows for the loss; ``triton`` leaves them in the table for
        the fused head and updates them with its fused SGD (core/triton_head.py); ``auto``: triton where it runs."""
        super().__init__()
        if num_classes < world_size:
            raise ConfigError(f"{num_classes} classes cannot be sharded over {world_size} processes")
        self.num_classes = num_classes
        self.world_size = world_size
        self.row_shape = tuple(row_shape)
        self.shard_start, self.shard_size = class_shard(num_classes, rank, world_size)
        self.compute_dtype = dtype
        self.register_buffer("centers", self._initial_rows(seed, device, storage_dtype or dtype))
        self.center_optimizer = build_center_optimizer(optimizer, tuple(self.centers.shape), momentum, weight_decay,
                                                       device, dtype, storage_dtype)
        self.register_buffer("positive_updates", torch.zeros(self.shard_size, dtype=torch.int64, device=device))
        self.register_buffer("negative_updates", torch.zeros(self.shard_size, dtype=torch.int64, device=device))
        self.generator = torch.Generator(device=self.centers.device)
        self.generator.manual_seed(seed * 7919 + rank)
        self.center_optimizer.rounding_generator = self.generator
        self.head_kernel = resolve_head_kernel(head_kernel, self.centers.device, self.row_shape)
        if self.head_kernel == "triton":
            self.center_optimizer.use_fused_kernel()
        self._pending: list[tuple[Optional[torch.Tensor], torch.Tensor, torch.Tensor]] = []  # index, grad, positives

    def _initial_rows(self, seed: int, device: Optional[torch.device], dtype: torch.dtype) -> torch.Tensor:
        """N(0, 0.01) rows, each prototype of a row from its own stream (the first one's is a one-prototype
        store's), drawn a ``[C_local, D]`` slice at a time so the draw never holds K times one table."""
        prototypes, dim = math.prod(self.row_shape[:-1]), self.row_shape[-1]
        if prototypes == 1:  # one center per class: the draw is the table (no second copy at 20M classes)
            return init_centers(self.shard_start, self.shard_size, dim, seed, device, dtype).view(
                self.shard_size, *self.row_shape)
        rows = torch.empty(self.shard_size, prototypes, dim, device=device, dtype=dtype)
        for prototype in range(prototypes):
            rows[:, prototype] = init_centers(self.shard_start, self.shard_size, dim,
                                              seed + PROTOTYPE_SEED_STRIDE * prototype, device, dtype)
        return rows.view(self.shard_size, *self.row_shape)

    # -- one step ---------------------------------------------------------------------------
    def select(self, embeddings: torch.Tensor, labels: torch.Tensor, num_sample: int,
               sampling: str = "uniform") -> Selection:
        """Every rank sees the whole global batch against ``num_sample`` of its own classes (``sampling``: one
        of ``SAMPLINGS``; stratified needs ``num_sample`` >= the global batch, else it draws uniformly)."""
        if self.world_size > 1:
            embeddings = all_gather_with_grad(embeddings)
            labels = all_gather_no_grad(labels.to(self.centers.device))
        labels = labels.to(self.centers.device, torch.int64)
        local = labels - self.shard_start
        in_shard = (local >= 0) & (local < self.shard_size)
        if num_sample >= self.shard_size:
            index, positives = None, torch.unique(local[in_shard])
            targets = torch.where(in_shard, local, -1)
        else:
            if sampling == "stratified" and num_sample >= local.numel():
                index, positives = stratified_columns(local, in_shard, self.shard_size, num_sample, self.generator)
            else:
                positives = torch.unique(local[in_shard])
                index = self.choose_columns(positives, num_sample)
            targets = torch.where(in_shard, torch.searchsorted(index, local.clamp(min=0)), -1)
        columns = torch.arange(self.shard_size, device=labels.device) if index is None else index
        fused = self.head_kernel == "triton"
        if fused:  # the head reads the rows in place; this leaf only receives their gradient
            weights = self.centers.new_zeros((), dtype=self.compute_dtype).expand(
                columns.numel(), *self.row_shape).detach().requires_grad_(True)
        elif index is None:  # an alias of the store (a copy in another dtype); the store only changes in step()
            weights = self.centers.detach().to(self.compute_dtype).requires_grad_(True)
        else:  # a fresh leaf: its gradient is exactly the sparse gradient of these rows
            weights = self.centers[index].to(self.compute_dtype).requires_grad_(True)
        return Selection(embeddings=embeddings, weights=weights, targets=targets, sharded_columns=self.world_size > 1,
                         column_classes=columns + self.shard_start, weight_table=self.centers if fused else None,
                         weight_rows=index, state={"index": index, "positives": positives})

    def choose_columns(self, positives: torch.Tensor, num_sample: int) -> torch.Tensor:
        """Sorted local rows of this step: every positive plus uniform random negatives."""
        if positives.numel() >= num_sample:
            return positives
        negatives = sample_without(positives, self.shard_size, num_sample - positives.numel(), self.generator)
        return torch.sort(torch.cat([positives, negatives])).values

    def collect(self, selection: Selection) -> None:
        """Queue the selected rows' gradient (after each backward); ``step`` applies it and counts the updates."""
        grad = selection.weights.grad
        if grad is None:
            raise RuntimeError("CenterStore.collect needs the selection's weights to have a gradient")
        self._pending.append((selection.state["index"], grad, selection.state["positives"]))

    def discard_step(self) -> None:
        self._pending.clear()

    def _count_updates(self, index: Optional[torch.Tensor], positives: torch.Tensor) -> None:
        """One positive update for each of a micro-batch's classes, one passive one for its other columns."""
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
        """Apply the row optimizer to every row the queued micro-batches touched, once each."""
        if not self._pending:
            return
        for index, _, positives in self._pending:
            self._count_updates(index, positives)
        indices = [index for index, _, _ in self._pending]
        leaders = None
        if len(self._pending) == 1:
            rows, grad, _ = self._pending[0]
        elif any(index is None for index in indices):
            rows, grad = None, torch.zeros(self.centers.shape, dtype=self.compute_dtype, device=self.centers.device)
            for index, part, _ in self._pending:
                if index is None:
                    grad += part
                else:
                    grad.index_add_(0, index, part)
        else:
            # Micro-batches may share rows: every copy gets the row's summed gradient and
            # the optimizer writes each row once (see RowSGD.update).
            rows = torch.cat(indices)
            leaders = first_occurrence(rows)
            parts = torch.cat([part for _, part, _ in self._pending])
            grad = torch.zeros_like(parts).index_add_(0, leaders, parts)[leaders]
        self._pending.clear()
        self.center_optimizer.update(self.centers, rows, grad, lr, leaders)

    # -- checkpoints and analysis -----------------------------------------------------------
    def sharded_state_names(self) -> list[str]:
        """Its state_dict entries that are per-class rows (saved as shards, see core/checkpoint.py)."""
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


def storage_dtype(name: str) -> torch.dtype:
    """``--center-dtype`` as a torch dtype."""
    if name not in STORAGE_DTYPES:
        raise ConfigError(f"--center-dtype must be one of {', '.join(STORAGE_DTYPES)}, got {name!r}")
    return STORAGE_DTYPES[name]
