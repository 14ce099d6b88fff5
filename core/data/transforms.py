"""Image preprocessing shared by training and evaluation, so both see the same pixels.

insightface's convention: RGB, scaled to [-1, 1]; resizing happens only when the model's
input size differs from the stored 112x112 (the CPU default trains smaller images).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from core.data.batch import Batch


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``[N, H, W, 3]`` -> uint8 ``[N, size, size, 3]`` with PIL's antialiased bilinear.

    PIL is used rather than torch's interpolate: per image it is an order of magnitude
    cheaper, which matters when a whole dataset is decoded into the in-memory cache.
    """
    if images.shape[1:3] == (size, size):
        return images
    out = np.empty((images.shape[0], size, size, 3), dtype=np.uint8)
    for index, image in enumerate(images):
        out[index] = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    return out


def to_model_input(images: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` (or one ``[H, W, 3]``) -> float32 ``[N, 3, size, size]`` in [-1, 1]."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    pixels = np.ascontiguousarray(resize_images(images, size))
    if not pixels.flags.writeable:  # decoded PIL images are read-only views
        pixels = pixels.copy()
    batch = torch.from_numpy(pixels)
    return batch.permute(0, 3, 1, 2).float().sub_(127.5).div_(127.5)


class ModelInputTransform:
    """Per-sample transform for datasets: HWC uint8 -> CHW float in [-1, 1] at the model size.

    It is deterministic on purpose: random augmentation (the flip) happens on the batch in
    the trainer, from a generator the checkpoint saves, so resumed runs see the same flips.
    """

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return to_model_input(image, self.size)[0]


def random_horizontal_flip(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image of an NCHW batch left-right with probability 1/2."""
    flip = torch.rand(batch.shape[0], generator=generator) < 0.5
    flip = flip.to(batch.device, non_blocking=True).view(-1, 1, 1, 1)  # a blocking copy would wait for the GPU
    return torch.where(flip, batch.flip(-1), batch)


class RandomFlip:
    """Flips each image of a batch, and independently each of its key images, with probability 1/2.

    It runs on the batch after its copy to the device (a flip made on the host would turn
    the loader's pinned batch into pageable memory and stall the copy). The draws come
    from one generator, queries first, then keys, whose state the checkpoint saves, so a
    resumed run flips exactly as the uninterrupted one would have.
    """

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, batch: Batch) -> Batch:
        images = random_horizontal_flip(batch.images, self.generator)
        keys = batch.key_images
        if keys is not None:
            keys = random_horizontal_flip(keys.flatten(0, 1), self.generator).unflatten(0, keys.shape[:2])
        return Batch(images, batch.labels, keys)

    def state_dict(self) -> Any:
        return self.generator.get_state()

    def load_state_dict(self, state: Any) -> None:
        self.generator.set_state(state)
