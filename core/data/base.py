"""The dataset contract every training and analysis path reads through.

A dataset exposes raw decoded images plus an int64 label array, so that samplers (DCQ's
identity-aware batches), analysis (class counts, per-sample provenance) and the loader
can all work from arrays without touching images.
"""

from __future__ import annotations

import io
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from core.errors import DataError


class FaceDataset(Dataset, ABC):
    """Base class: subclasses set ``labels``/``num_classes`` and implement ``load_image``.

    ``__getitem__`` returns ``(image_tensor, label)`` after ``transform``; with no transform
    the image is an ``HxWx3`` uint8 RGB numpy array.
    """

    labels: np.ndarray  # int64 [N], 0..num_classes-1
    num_classes: int
    transform: Optional[Callable[[np.ndarray], torch.Tensor]] = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @abstractmethod
    def load_image(self, index: int) -> np.ndarray:
        """Decoded RGB uint8 image ``[H, W, 3]``; raises DataError naming the record/path."""

    def source_of(self, index: int) -> dict:
        """Where sample ``index`` lives, e.g. ``{"record": key}`` or ``{"path": p}``."""
        return {}

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)

    def __getitem__(self, index: int):
        image = self.load_image(int(index))
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


@dataclass
class SampleSources:
    """Where each sample lives: RecordIO keys for .rec data, file paths for folders and lists."""

    records: Optional[np.ndarray]  # int64 [N] or None
    paths: Optional[list[str]]


def sample_sources(dataset: FaceDataset) -> SampleSources:
    """Provenance of every sample, from arrays when the dataset has them (millions of rows)."""
    keys = getattr(dataset, "image_keys", None)
    if keys is not None:
        return SampleSources(records=np.asarray(keys, dtype=np.int64), paths=None)
    from core.data.folder import record_reference

    paths = getattr(dataset, "paths", None)
    if paths is not None and not any(record_reference(p) for p in paths):  # "file.rec#KEY" entries name records
        return SampleSources(records=None, paths=[str(p) for p in paths])
    records, file_paths = [], []
    for index in range(len(dataset)):
        source = dataset.source_of(index)
        records.append(source.get("record", -1))
        file_paths.append(source.get("path", ""))
    has_records = any(r != -1 for r in records)
    has_paths = any(file_paths)
    return SampleSources(records=np.asarray(records, dtype=np.int64) if has_records else None,
                         paths=file_paths if has_paths else None)


def decode_image(encoded: bytes, where: str) -> np.ndarray:
    """Decode JPEG/PNG bytes to RGB uint8; ``where`` names the record or file on failure."""
    try:
        with Image.open(io.BytesIO(encoded)) as img:
            return np.asarray(img.convert("RGB"))
    except Exception as exc:  # PIL raises many types for corrupt data
        detail = re.sub(r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", str(exc))  # PIL names the buffer, not the file
        raise DataError(f"{where}: cannot decode image ({type(exc).__name__}: {detail})") from exc


def encode_image(image: np.ndarray, quality: int = 95) -> bytes:
    """JPEG-encode an RGB uint8 image, as insightface's packed datasets store them."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
