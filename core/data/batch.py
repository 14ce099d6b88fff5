"""The typed batch at the seam between the data loader, the trainer and a method's sampler.

A method asks for what it needs beyond images and labels through a ``BatchLayout``
(DCQ: other images of each row's identity, from which its momentum encoder generates
the class weights); the loader then serves ``Batch`` objects with those fields filled.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

import torch


@dataclass(frozen=True)
class BatchLayout:
    """What a method needs in each batch beyond images and labels.

    ``key_images_per_row`` > 0 asks for an identity-aware loader that adds that many other
    images of each row's identity; ``identity_sampling`` draws the rows uniformly over
    images or over identities; ``strict`` makes an identity with too few images an error
    instead of repeating its images.
    """

    key_images_per_row: int = 0
    identity_sampling: str = "image"
    strict: bool = False


@dataclass
class Batch:
    """One (micro-)batch: ``images [B, 3, H, W]``, ``labels [B]`` and, if asked for, ``key_images [B, k, 3, H, W]``.

    ``positions`` (int64 ``[B]``, on the host), when the trainer sets them, say which draw of the whole run each
    row is (``epoch * dataset size + its place in the epoch's order``): augmentation keyed by them is the same
    for any number of processes and after any resume. ``indices`` (int64 ``[B]``, on the host) are the rows' places
    in the dataset, by which the trainer's per-sample records (core/dynamics.py) are kept.
    """

    images: torch.Tensor
    labels: torch.Tensor
    key_images: Optional[torch.Tensor] = None
    positions: Optional[torch.Tensor] = None
    indices: Optional[torch.Tensor] = None

    def to(self, device: torch.device, non_blocking: bool = False) -> "Batch":
        keys = None if self.key_images is None else self.key_images.to(device, non_blocking=non_blocking)
        return replace(self, images=self.images.to(device, non_blocking=non_blocking),
                       labels=self.labels.to(device, non_blocking=non_blocking), key_images=keys)

    def contiguous(self, memory_format: torch.memory_format) -> "Batch":
        """Images (and each row's keys) laid out for the network, e.g. channels_last."""
        keys = self.key_images
        if keys is not None:
            keys = keys.flatten(0, 1).contiguous(memory_format=memory_format).unflatten(0, keys.shape[:2])
        return replace(self, images=self.images.contiguous(memory_format=memory_format), key_images=keys)

    def pin_memory(self) -> "Batch":
        """Called by the DataLoader's pinning thread, so the copy to a GPU can run asynchronously."""
        keys = None if self.key_images is None else self.key_images.pin_memory()
        return replace(self, images=self.images.pin_memory(), labels=self.labels.pin_memory(), key_images=keys)

    def __len__(self) -> int:
        return self.labels.shape[0]


def collate_batch(items: Sequence[tuple]) -> Batch:
    """``(image, label)`` or ``(image, label, key images)`` items -> one Batch."""
    images = torch.stack([item[0] for item in items])
    labels = torch.tensor([int(item[1]) for item in items], dtype=torch.int64)
    keys = torch.stack([item[2] for item in items]) if len(items[0]) > 2 else None
    return Batch(images, labels, keys)
