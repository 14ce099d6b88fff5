"""Decoded images kept as one uint8 array: ``images.npy`` ``[N, H, W, 3]`` and ``labels.npy`` ``[N]``.

For data that was never a photograph: the latent generator's observations
(core/data/synthetic/latent.py) at 10^5-10^6 identities, where encoding and decoding
millions of tiny images would cost more than training on them. Both files are read with
``allow_pickle=False`` (nothing in them can run code) and the images memory-mapped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.data.base import FaceDataset
from core.errors import DataError

IMAGES_FILE = "images.npy"
LABELS_FILE = "labels.npy"


def _load(path: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable numpy array ({type(exc).__name__}: {exc})") from exc


class ArrayDataset(FaceDataset):
    """A directory with ``images.npy`` and ``labels.npy``; record keys are 1-based row numbers, as in a .rec."""

    def __init__(self, root: str | Path, transform=None) -> None:
        root = Path(root)
        self.root = root
        self.images = _load(root / IMAGES_FILE, mmap=True)
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise DataError(f"{root / IMAGES_FILE}: expected uint8 images [N, H, W, 3], got {self.images.dtype} "
                            f"{list(self.images.shape)}")
        labels = _load(root / LABELS_FILE, mmap=False)
        if labels.ndim != 1 or labels.shape[0] != self.images.shape[0] or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{root / LABELS_FILE}: expected {self.images.shape[0]} integer labels (one per image), "
                            f"got {labels.dtype} {list(labels.shape)}")
        if len(labels) and labels.min() < 0:
            raise DataError(f"{root / LABELS_FILE}: label {int(labels.min())} at row {int(labels.argmin())}; labels "
                            "start at 0")
        self.labels = labels.astype(np.int64)
        self.num_classes = int(self.labels.max()) + 1 if len(self.labels) else 0
        self.image_keys = np.arange(1, len(self.labels) + 1, dtype=np.int64)
        self.transform = transform

    def load_image(self, index: int) -> np.ndarray:
        return np.asarray(self.images[index])

    def source_of(self, index: int) -> dict:
        return {"record": int(index) + 1}


def write_arrays(root: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write the two files (``root`` is a directory being built: the caller renames it into place)."""
    np.save(root / IMAGES_FILE, np.ascontiguousarray(images, dtype=np.uint8), allow_pickle=False)
    np.save(root / LABELS_FILE, np.asarray(labels, dtype=np.int64), allow_pickle=False)
