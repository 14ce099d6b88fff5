"""Dynamic Class Queue (Li et al., CVPR 2021): a softmax with no stored class weights.

A momentum (EMA) copy of the backbone encodes k other images of each batch row's
identity; their normalised mean is that identity's class weight for this step (k=1 is
the official recipe). The softmax's columns are the batch's generated weights followed
by a FIFO queue of weights generated in recent steps; columns that carry a row's own
label (other than its target) and empty queue slots are masked. After the step the
generated weights are enqueued and the momentum encoder is updated. Memory depends on
the queue length, never on the number of classes.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel

from core.data.batch import Batch, BatchLayout
from core.distributed import all_gather_no_grad
from core.errors import ConfigError
from core.sampler import ClassSampler, SamplerEnvironment, Selection
from dcq.spec import DCQOptions


def resolve_queue_size(queue_size: float, num_classes: int, num_images: Optional[int] = None) -> int:
    """``--queue-size``: a count when >= 1, a fraction of the classes when < 1 (0.1 = 10 %)."""
    if queue_size <= 0:
        raise ConfigError(f"--queue-size must be > 0 (a count, or a fraction of the classes), got {queue_size}")
    if queue_size >= 1 and queue_size != int(queue_size):
        raise ConfigError(f"--queue-size {queue_size}: a count must be a whole number (a fraction of the classes "
                          "must be below 1)")
    size = int(round(queue_size * num_classes)) if queue_size < 1 else int(queue_size)
    if size < 1:
        raise ConfigError(f"--queue-size {queue_size} of {num_classes} classes leaves an empty queue")
    if num_images is not None and size > num_images:
        raise ConfigError(f"--queue-size {size} is larger than the dataset ({num_images} images): most slots "
                          f"would hold repeats of the same identities; use at most {num_images}")
    return size


def ema_decay(momentum: float, updates: int) -> float:
    """Mean-teacher ramp: a plain running mean at first, the EMA momentum once it is reached.

    With a fixed 0.999 a short run's encoder would still be mostly its random
    initialisation; ``(1 + t) / (10 + t)`` passes 0.999 after about 9,000 updates, so
    long runs (the paper's 220k iterations) follow the official recipe.
    """
    return min(momentum, (1.0 + updates) / (10.0 + updates))


class DCQSampler(ClassSampler):
    """Momentum encoder + class-weight generator + class queue."""

    def __init__(self, backbone: nn.Module, embedding_size: int, num_classes: int, queue_size: int,
                 momentum: float = 0.999, k_shot: int = 1, device: Optional[torch.device] = None,
                 rank: int = 0, world_size: int = 1, identity_sampling: str = "image",
                 strict_k_shot: bool = False) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"--dcq-momentum must be in [0, 1), got {momentum}")
        if k_shot < 1:
            raise ConfigError(f"--k-shot must be >= 1, got {k_shot}")
        self.momentum = momentum
        self.layout = BatchLayout(key_images_per_row=k_shot, identity_sampling=identity_sampling,
                                  strict=strict_k_shot)
        self.num_classes = num_classes
        self.rank, self.world_size = rank, world_size
        self.ema_updates = 0
        encoder = copy.deepcopy(backbone)
        for module in encoder.modules():
            # Keys are encoded with batch statistics (train mode); the running statistics
            # come only from the EMA of the online network's, never from key batches.
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = 0.0
        self.momentum_encoder = AveragedModel(encoder, use_buffers=True)
        self.momentum_encoder.requires_grad_(False)
        self.momentum_encoder.update_parameters(backbone)  # the first update copies the online network
        # A plain list, so the online backbone is not registered (and saved) as a submodule.
        self._online = [backbone]
        self.register_buffer("queue", torch.zeros(queue_size, embedding_size, device=device))
        self.register_buffer("queue_labels", torch.full((queue_size,), -1, dtype=torch.int64, device=device))
        self.register_buffer("queue_enqueued_at", torch.zeros(queue_size, dtype=torch.int64, device=device))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.int64, device=device))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64, device=device))
        self.register_buffer("positive_updates", torch.zeros(num_classes, dtype=torch.int64, device=device))
        self.register_buffer("queue_entries", torch.zeros(num_classes, dtype=torch.int64, device=device))
        self.register_buffer("queue_steps", torch.zeros(num_classes, dtype=torch.int64, device=device))
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []

    # -- the momentum encoder --------------------------------------------------------------
    @property
    def encoder(self) -> nn.Module:
        return self.momentum_encoder.module

    @torch.no_grad()
    def generate_weights(self, key_images: torch.Tensor) -> torch.Tensor:
        """``[B, k, 3, H, W]`` key images -> ``[B, D]`` unit class weights (mean of k unit features).

        With several processes the result covers the *global* batch (every rank's rows, in
        rank order), and the keys are encoded after a shuffle across ranks (the official
        shuffle-BN), so that BatchNorm's batch statistics do not pair a row with its key.
        """
        rows, k = key_images.shape[:2]
        flat = key_images.flatten(0, 1)
        self.encoder.train()
        if self.world_size > 1:
            flat = all_gather_no_grad(flat)
            generator = torch.Generator().manual_seed(self.ema_updates * 1_000_003 + 17)  # == steps, on the host
            order = torch.randperm(flat.shape[0], generator=generator).to(flat.device, non_blocking=True)
            chunk = flat.shape[0] // self.world_size
            mine = self.encoder(flat[order[self.rank * chunk:(self.rank + 1) * chunk]]).float()
            features = mine.new_empty(flat.shape[0], mine.shape[1])
            features[order] = all_gather_no_grad(mine)
            rows = rows * self.world_size
        else:
            features = self.encoder(flat).float()
        features = F.normalize(features, dim=1).view(rows, k, -1).mean(dim=1)
        return F.normalize(features, dim=1)

    # -- ClassSampler ----------------------------------------------------------------------
    def batch_layout(self) -> BatchLayout:
        return self.layout

    def select(self, embeddings: torch.Tensor, batch: Batch) -> Selection:
        if batch.key_images is None:
            raise ConfigError("DCQ needs key images per batch row: train it with an identity-aware loader")
        labels = batch.labels.to(self.queue.device, torch.int64)
        generated = self.generate_weights(batch.key_images)
        all_labels = all_gather_no_grad(labels)
        rows = labels.numel()
        weights = torch.cat([generated, self.queue.to(generated.dtype)])
        targets = torch.arange(rows, device=labels.device) + self.rank * rows
        column_labels = torch.cat([all_labels, self.queue_labels])
        mask = (column_labels.unsqueeze(0) == labels.unsqueeze(1)) | (column_labels < 0).unsqueeze(0)
        mask[torch.arange(rows, device=labels.device), targets] = False
        return Selection(embeddings=embeddings, weights=weights, targets=targets, negative_mask=mask, unit_weights=True,
                         column_classes=column_labels,
                         state={"generated": generated, "labels": all_labels})

    def collect(self, selection: Selection) -> None:
        self._pending.append((selection.state["generated"], selection.state["labels"]))

    def discard_step(self) -> None:
        self._pending.clear()

    def step(self, lr: float) -> None:
        if not self._pending:
            return
        generated = torch.cat([weights for weights, _ in self._pending])
        labels = torch.cat([labels for _, labels in self._pending])
        self._pending.clear()
        self.positive_updates.index_add_(0, labels, torch.ones_like(labels))
        self.steps += 1
        self.enqueue(generated, labels)
        self.update_momentum_encoder(self._online[0])

    @torch.no_grad()
    def enqueue(self, weights: torch.Tensor, labels: torch.Tensor) -> None:
        """FIFO write at the pointer, wrapping around; evicted entries update the residency counters."""
        size = self.queue.shape[0]
        if weights.shape[0] > size:  # only the newest entries fit
            weights, labels = weights[-size:], labels[-size:]
        slots = (self.pointer + torch.arange(weights.shape[0], device=weights.device)) % size
        evicted = self.queue_labels[slots]
        # Empty slots (label -1) add 0 to class 0 instead of being masked out: a boolean index would sync.
        resident = torch.where(evicted >= 0, self.steps - self.queue_enqueued_at[slots], 0)
        self.queue_steps.index_add_(0, evicted.clamp(min=0), resident)
        self.queue[slots] = weights.to(self.queue.dtype)
        self.queue_labels[slots] = labels
        self.queue_enqueued_at[slots] = self.steps
        self.queue_entries.index_add_(0, labels, torch.ones_like(labels))
        self.pointer.copy_((self.pointer + weights.shape[0]) % size)

    @torch.no_grad()
    def update_momentum_encoder(self, backbone: nn.Module) -> None:
        """EMA of the online network's parameters and buffers: one fused lerp over every float tensor.

        ``AveragedModel.update_parameters`` holds the copy and made it, but is not called per
        step: it compares its counter on the host and copies it to the device each call, a
        stream sync on CUDA. BatchNorm's integer batch counters are copied, not averaged.
        """
        decay = ema_decay(self.momentum, self.ema_updates)
        pairs = list(zip(itertools.chain(self.encoder.parameters(), self.encoder.buffers()),
                         itertools.chain(backbone.parameters(), backbone.buffers()), strict=True))
        averaged = [mine for mine, _ in pairs if mine.is_floating_point()]
        current = [theirs.detach() for mine, theirs in pairs if mine.is_floating_point()]
        torch._foreach_lerp_(averaged, current, 1.0 - decay)
        for mine, theirs in pairs:
            if not mine.is_floating_point():
                mine.copy_(theirs)
        self.ema_updates += 1

    def evaluation_model(self, backbone: nn.Module) -> nn.Module:
        return self.encoder

    def class_statistics(self) -> dict[str, torch.Tensor]:
        """Positives per class, entries enqueued, and steps spent in the queue (evicted entries)."""
        return {"positive_updates": self.positive_updates, "queue_entries": self.queue_entries,
                "queue_steps": self.queue_steps}

    def get_extra_state(self) -> dict[str, Any]:
        return {"ema_updates": self.ema_updates}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.ema_updates = state["ema_updates"]


def build_sampler(options: DCQOptions, environment: SamplerEnvironment) -> DCQSampler:
    """The spec's builder (see dcq/spec.py)."""
    queue_size = resolve_queue_size(options.queue_size, environment.num_classes, environment.num_images)
    return DCQSampler(environment.backbone, environment.embedding_size, environment.num_classes, queue_size,
                      options.dcq_momentum, options.k_shot, environment.device, environment.context.rank,
                      environment.context.world_size, options.identity_sampling, options.strict_k_shot)
