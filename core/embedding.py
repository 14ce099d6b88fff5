"""Embeddings of a whole dataset: for the analyses, and written to disk for a user's own tools (``embed``).

Each image is embedded with its mirror image added (the published verification
protocol) and L2-normalised, streamed through a DataLoader so that memory holds one
batch of images and, with ``out`` a memory map, not even the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from core.data.base import sample_sources
from core.errors import ConfigError, DataError


@torch.no_grad()
def embed_dataset(model: torch.nn.Module, dataset, batch_size: int = 256, workers: int = 0,
                  device: torch.device | str = "cpu", progress: bool = True,
                  out: Optional[np.ndarray] = None) -> np.ndarray:
    """Flip-summed, L2-normalised embeddings ``float32 [N, D]`` of a whole dataset, in order.

    A DataLoader streams the images (decoding in workers), so memory holds one batch of
    images plus the result; pass ``out`` (e.g. a ``.npy`` memmap) to keep the result on
    disk instead of in memory.
    """
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    if len(dataset) == 0:
        raise DataError("the dataset holds no images; nothing to embed")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        persistent_workers=False)
    start = 0
    for images, _ in tqdm(loader, desc="embedding", unit="batch", disable=not progress, leave=False,
                          mininterval=1.0):
        x = images.to(device)
        feature = model(x) + model(torch.flip(x, dims=[-1]))
        feature = F.normalize(feature.float(), dim=1).cpu().numpy()
        if out is None:
            out = np.empty((len(dataset), feature.shape[1]), dtype=np.float32)
        out[start:start + len(feature)] = feature
        start += len(feature)
    if out is None or start != len(dataset):
        raise DataError(f"the data loader produced {start} of {len(dataset)} images")
    return out


def write_embeddings(network: torch.nn.Module, input_size: int, embedding_size: int, data: str | Path,
                     out: str | Path, device: torch.device, batch_size: int = 256, workers: int = 0,
                     progress: bool = True) -> tuple[Path, Path, int]:
    """``out`` (``.npy``, float32 ``[N, D]`` unit rows, in dataset order) and beside it ``out`` with ``.csv``:
    each row's index, label and where it came from (record key or path). Both are written through temporary
    names. Returns ``(npy, csv, N)``."""
    from core.data.loader import open_dataset
    from core.data.transforms import ModelInputTransform
    from core.io import atomic_path

    out = Path(out)
    if out.suffix != ".npy":
        raise ConfigError(f"--out {out}: embeddings are written as a NumPy array; give a name ending in .npy")
    table_path = out.with_suffix(".csv")
    dataset = open_dataset(data, transform=ModelInputTransform(input_size))
    if len(dataset) == 0:
        raise DataError(f"--data {data}: the dataset holds no images")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        stored = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(dataset), embedding_size))
        embed_dataset(network, dataset, batch_size, workers, device, progress, out=stored)
        stored.flush()
        del stored
    sources = sample_sources(dataset)
    table = pd.DataFrame({"index": np.arange(len(dataset)), "label": np.asarray(dataset.labels, dtype=np.int64)})
    if sources.records is not None:
        table["record"] = sources.records
    if sources.paths is not None:
        table["path"] = sources.paths
    with atomic_path(table_path) as tmp:
        table.to_csv(tmp, index=False)
    return out, table_path, len(dataset)
