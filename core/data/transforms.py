"""Image preprocessing shared by training and evaluation, so both see the same pixels.

insightface's convention: RGB, scaled to [-1, 1]; resizing happens only when the model's
input size differs from the stored 112x112 (the CPU default trains smaller images).
"""

from __future__ import annotations

from dataclasses import replace

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
    the trainer, keyed by each sample's place in the data order (RandomFlip), so resumed runs and
    runs on any number of processes see the same flips.
    """

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return to_model_input(image, self.size)[0]


class RandomFlip:
    """Flips each image of a batch, and independently each of its key images, with probability 1/2.

    Each coin is a pure function of the seed, the row's ``batch.positions`` (which draw of
    the run it is) and the view (the query or key j): the same rows flip alike on any
    number of processes, with any batch split, and after any resume, with no state to save.
    It runs on the batch after its copy to the device (a flip made on the host would turn
    the loader's pinned batch into pageable memory and stall the copy).
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __call__(self, batch: Batch) -> Batch:
        if batch.positions is None:
            raise ValueError("RandomFlip needs batch.positions (the trainer sets them from the batch order)")
        draws = batch.positions.numpy()
        images = _flip_where(batch.images, fair_coins(self.seed, draws, 0))
        keys = batch.key_images
        if keys is not None:
            views = np.stack([fair_coins(self.seed, draws, 1 + j) for j in range(keys.shape[1])], axis=1)
            keys = _flip_where(keys.flatten(0, 1), views.reshape(-1)).unflatten(0, keys.shape[:2])
        return replace(batch, images=images, key_images=keys)


MAX_VIEWS = 64


def fair_coins(seed: int, draws: np.ndarray, view: int) -> np.ndarray:
    """One fair coin per draw: the top bit of splitmix64 of (seed, draw, view), a pure function of the three."""
    if not 0 <= view < MAX_VIEWS:
        raise ValueError(f"view must be in [0, {MAX_VIEWS}), got {view}")
    with np.errstate(over="ignore"):
        z = np.asarray(draws, dtype=np.uint64) * np.uint64(MAX_VIEWS) + np.uint64(view)
        z = z + np.uint64((seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(63)).astype(bool)


def _flip_where(images: torch.Tensor, coins: np.ndarray) -> torch.Tensor:
    flip = torch.from_numpy(coins).to(images.device, non_blocking=True).view(-1, 1, 1, 1)
    return torch.where(flip, images.flip(-1), images)
