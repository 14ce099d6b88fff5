"""From a ``--data`` argument to batches: format detection, the in-memory image cache,
deterministic (resumable) batch order, and the identity-aware batch hook DCQ uses.

Batch order depends only on (seed, epoch, rank), so a resumed run rebuilds exactly the
batches the interrupted one would have drawn, whatever the number of loader workers.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from core.data.base import FaceDataset
from core.data.batch import BatchLayout, collate_batch
from core.data.transforms import ModelInputTransform, resize_images, to_model_input
from core.errors import ConfigError, DataError

LIST_SUFFIXES = {".txt", ".lst", ".list", ".tsv"}
# Decoded images are kept in memory when they fit in this many bytes (at the model size).
CACHE_LIMIT_BYTES = 2 << 30


def open_dataset(path: str | Path, transform=None) -> FaceDataset:
    """A dataset from a .rec directory (or its train.rec), a directory of image arrays (images.npy, labels.npy),
    a folder of identities, or a list."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"--data {path}: no such file or directory")
    if path.is_file() and path.suffix == ".rec":
        path = path.parent
    if path.is_dir() and (path / "train.rec").exists():
        from core.data.recordio import RecordDataset
        return RecordDataset(path, transform=transform)
    if path.is_dir() and (path / "images.npy").exists():
        from core.data.arrays import ArrayDataset
        return ArrayDataset(path, transform=transform)
    if path.is_dir():
        from core.data.folder import FolderDataset
        return FolderDataset(path, transform=transform)
    if path.suffix.lower() in LIST_SUFFIXES:
        from core.data.folder import ListDataset
        return ListDataset(path, transform=transform)
    raise DataError(f"--data {path}: unknown format; expected a directory with train.rec/train.idx or "
                    f"images.npy/labels.npy, a folder with one sub-directory per identity, or a list file "
                    f"({', '.join(sorted(LIST_SUFFIXES))}) of 'path label' lines")


def cache_dir() -> Path:
    return Path(os.environ.get("FACEQUEUE_CACHE", Path.home() / ".cache" / "facequeue"))


def synthetic_dataset_root(identities: int, flip_noise: float, split: float, seed: int = 0,
                           progress: bool = True) -> Path:
    """The embedded default dataset, generated once per parameter set and then reused."""
    from core.data.synthetic import SyntheticConfig, make_synthetic_dataset
    config = SyntheticConfig(identities=identities, flip_noise=flip_noise, split=split, seed=seed)
    key = hashlib.sha1(json.dumps(vars(config), sort_keys=True).encode()).hexdigest()[:10]
    root = cache_dir() / "synthetic" / f"ids{identities}-flip{flip_noise}-split{split}-seed{seed}-{key}"
    if not (root / "train.rec").exists():
        print(f"Generating the synthetic dataset once into {root} ...", flush=True)
        make_synthetic_dataset(root, config, progress=progress)
    return root


class CachedImages(FaceDataset):
    """A dataset's images decoded once and kept at the model's input size.

    Small datasets (the synthetic default) otherwise spend most of a CPU step on JPEG
    decoding; the cache makes a step cost what the network costs.
    """

    def __init__(self, dataset: FaceDataset, size: int, progress: bool = True) -> None:
        self.dataset = dataset
        self.size = size
        self.labels = dataset.labels
        self.num_classes = dataset.num_classes
        self.images = np.empty((len(dataset), size, size, 3), dtype=np.uint8)
        for index in tqdm(range(len(dataset)), desc="decoding images", disable=not progress, leave=False,
                          mininterval=1.0):
            self.images[index] = resize_images(dataset.load_image(index)[None], size)[0]

    def load_image(self, index: int) -> np.ndarray:
        return self.images[index]

    def source_of(self, index: int) -> dict:
        return self.dataset.source_of(index)

    def __getitem__(self, index: int):
        return to_model_input(self.images[index], self.size)[0], int(self.labels[index])

    def __getitems__(self, indices: Sequence[int]) -> list:
        batch = to_model_input(self.images[np.asarray(indices)], self.size)
        return list(zip(batch.unbind(0), self.labels[np.asarray(indices)].tolist()))


def prepare_dataset(path: str | Path, size: int, cache: str = "auto", progress: bool = True) -> FaceDataset:
    """Open ``path`` for training at ``size``, caching decoded images when that pays."""
    dataset = open_dataset(path, transform=ModelInputTransform(size))
    if len(dataset) == 0:
        raise DataError(f"--data {path}: the dataset holds no images")
    if cache not in ("auto", "on", "off"):
        raise ConfigError(f"--cache-images must be auto, on or off; got {cache!r}")
    fits = len(dataset) * size * size * 3 <= CACHE_LIMIT_BYTES
    if cache == "on" or (cache == "auto" and fits):
        return CachedImages(dataset, size, progress=progress)
    return dataset


class EpochBatchSampler(Sampler[list[int]]):
    """Shuffled batches from a permutation seeded by (seed, epoch), split across ranks.

    Each rank takes every ``world_size``-th sample of the permutation, so each sample is
    seen once per epoch across ranks; incomplete last batches are dropped so that every
    step has the same batch size on every rank. ``start_batch`` resumes mid-epoch.

    Batch b of every rank together is the contiguous block ``[b * B * W, (b + 1) * B * W)``
    of the permutation: with the same global batch, any number of processes sees the same
    samples at each step, which is what lets a run resume on another number of them.
    ``positions(b)`` gives this rank's positions in that order.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if batch_size * world_size > num_samples:
            raise DataError(f"--batch-size {batch_size} x {world_size} process(es) is larger than the "
                            f"dataset ({num_samples} images)")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._order, self._order_epoch = np.zeros(0, dtype=np.int64), -1
        self.start_batch = 0

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.num_samples // (self.batch_size * self.world_size)

    def positions(self, batch: int) -> np.ndarray:
        """Where batch ``batch`` of this rank's rows stand in the epoch's order (the same for any world size)."""
        return (batch * self.batch_size + np.arange(self.batch_size)) * self.world_size + self.rank

    def _draw_order(self) -> np.ndarray:
        """Every rank's samples of this epoch, in the order the epoch visits them."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.num_samples, generator=generator).numpy()

    def _rank_order(self) -> np.ndarray:
        """This rank's samples of the current epoch in order, drawn once per epoch."""
        if self._order_epoch != self.epoch:
            self._order, self._order_epoch = self._draw_order()[self.rank::self.world_size], self.epoch
        return self._order

    def indices(self, batch: int) -> np.ndarray:
        """The dataset indices of batch ``batch``'s rows on this rank (what the trainer's per-sample records key on)."""
        return self._rank_order()[batch * self.batch_size:(batch + 1) * self.batch_size]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in range(self.start_batch, len(self)):
            yield self.indices(batch).tolist()


class IdentityBatchSampler(EpochBatchSampler):
    """Batches whose items are ``(query, key_1, ..., key_k)``: k other images of the query's identity.

    This is the identity-aware hook DCQ needs (its momentum encoder turns the keys into
    the identity's class weight). ``mode="image"`` draws queries uniformly over images,
    ``mode="category"`` uniformly over identities. An identity with fewer than k other
    images repeats them; a single-image identity uses the image itself, whose key copy is
    augmented independently by the trainer. ``strict=True`` makes those cases an error.
    Only arrays of the labels are kept, so it scales to millions of images. A query's keys
    are drawn from its position in the epoch's order, so any world size draws the same.
    """

    def __init__(self, labels: np.ndarray, batch_size: int, k: int, seed: int, mode: str = "image",
                 rank: int = 0, world_size: int = 1, strict: bool = False) -> None:
        super().__init__(len(labels), batch_size, seed, rank, world_size)
        if k < 1:
            raise ConfigError(f"--k-shot must be >= 1, got {k}")
        if mode not in ("image", "category"):
            raise ConfigError(f"--identity-sampling must be image or category, got {mode!r}")
        self.k, self.mode = k, mode
        self.by_class = np.argsort(labels, kind="stable")
        counts = np.bincount(labels)
        self.class_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.class_count = counts
        self.present = np.flatnonzero(counts)
        self.labels = labels
        if strict:
            short = np.flatnonzero((counts > 0) & (counts - 1 < k))
            if short.size:
                raise DataError(f"--k-shot {k} (strict): identity {int(short[0])} has only "
                                f"{int(counts[short[0]])} image(s), and {short.size} identities have fewer than "
                                f"k + 1")

    def _keys(self, query: int, rng: np.random.Generator) -> list[int]:
        label = self.labels[query]
        start, count = self.class_start[label], self.class_count[label]
        members = self.by_class[start:start + count]
        others = members[members != query]
        if others.size == 0:
            return [query] * self.k
        chosen = rng.choice(others, size=self.k, replace=others.size < self.k)
        return chosen.tolist()

    def _draw_order(self) -> np.ndarray:
        if self.mode == "image":
            return super()._draw_order()
        rng = np.random.default_rng([self.seed * 100_003 + self.epoch, 1])
        classes = rng.choice(self.present, size=self.num_samples)
        offsets = (rng.random(self.num_samples) * self.class_count[classes]).astype(np.int64)
        return self.by_class[self.class_start[classes] + offsets]

    def __iter__(self) -> Iterator[list[tuple[int, ...]]]:
        epoch_seed = self.seed * 100_003 + self.epoch
        for batch in range(self.start_batch, len(self)):
            yield [(query, *self._keys(query, np.random.default_rng([epoch_seed, 2, int(position)])))
                   for query, position in zip(self.indices(batch).tolist(), self.positions(batch))]


class WithKeyImages(FaceDataset):
    """Serves ``(query image, [k, 3, H, W] key images, label)`` for IdentityBatchSampler items."""

    def __init__(self, dataset: FaceDataset) -> None:
        self.dataset = dataset
        self.labels = dataset.labels
        self.num_classes = dataset.num_classes

    def load_image(self, index: int) -> np.ndarray:
        return self.dataset.load_image(index)

    def source_of(self, index: int) -> dict:
        return self.dataset.source_of(index)

    def __getitem__(self, item: tuple[int, ...]):
        query, *keys = item
        image, label = self.dataset[query]
        return image, label, torch.stack([self.dataset[key][0] for key in keys])

    def __getitems__(self, items: Sequence[tuple[int, ...]]) -> list:
        fetch = getattr(self.dataset, "__getitems__", None)
        if fetch is None:
            return [self[item] for item in items]
        k = len(items[0]) - 1
        flat = fetch([index for item in items for index in item])
        return [(flat[i * (k + 1)][0], flat[i * (k + 1)][1],
                 torch.stack([image for image, _ in flat[i * (k + 1) + 1:(i + 1) * (k + 1)]]))
                for i in range(len(items))]


def batch_order(dataset: FaceDataset, layout: BatchLayout, batch_size: int, seed: int, rank: int = 0,
                world_size: int = 1) -> tuple[FaceDataset, EpochBatchSampler]:
    """The dataset and batch order a method's ``BatchLayout`` asks for: plain shuffled batches, or
    identity-aware ones whose items carry ``layout.key_images_per_row`` other images of the row's identity."""
    if layout.key_images_per_row > 0:
        return WithKeyImages(dataset), IdentityBatchSampler(
            dataset.labels, batch_size, layout.key_images_per_row, seed, layout.identity_sampling, rank,
            world_size, strict=layout.strict)
    return dataset, EpochBatchSampler(len(dataset), batch_size, seed, rank, world_size)


def make_loader(dataset: FaceDataset, batch_sampler: Sampler, workers: int, pin_memory: bool) -> DataLoader:
    """A DataLoader of ``Batch`` objects; in-memory datasets are served in the main process (workers cost more).

    It gets a generator of its own: by default each new loader iterator draws a worker
    seed from torch's global RNG, which would make a resumed run drift from a straight one.
    """
    if isinstance(dataset, CachedImages) or isinstance(getattr(dataset, "dataset", None), CachedImages):
        workers = 0
    return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=workers, pin_memory=pin_memory,
                      collate_fn=collate_batch, persistent_workers=False, prefetch_factor=4 if workers > 0 else None,
                      generator=torch.Generator().manual_seed(0))


def default_val_files(data_root: Optional[Path]) -> list[str]:
    """The ``val.bin`` a synthetic dataset ships with, if any."""
    if data_root is not None and (data_root / "val.bin").exists():
        return [str(data_root / "val.bin")]
    return []


# Files that hold training data (RecordIO records, their index, an image list), never verification pairs.
TRAINING_DATA_SUFFIXES = (".rec", ".idx", ".lst")


def resolve_val_files(values: Sequence[str], data: str | Path) -> list[str]:
    """``--val`` entries as files: a path as given, or a name (``lfw``) as ``NAME.bin`` beside the training data,
    where insightface keeps ``lfw.bin``, ``cfp_fp.bin`` and ``agedb_30.bin`` next to ``train.rec``."""
    folder = Path(data) if Path(data).is_dir() else Path(data).parent
    files = []
    for value in values:
        if Path(value).suffix.lower() in TRAINING_DATA_SUFFIXES:
            raise DataError(f"--val {value}: a {Path(value).suffix} file is training data; --val takes a "
                            "verification .bin of image pairs (lfw.bin), or its name (lfw) when it lies beside "
                            "the training data")
        if Path(value).exists() or Path(value).suffix:  # a file; a missing one is named when it is read
            files.append(str(value))
            continue
        beside = folder / f"{value}.bin"
        if not beside.is_file():
            raise DataError(f"--val {value}: neither a file nor {beside} (a name means NAME.bin beside the "
                            "training data)")
        files.append(str(beside))
    return files
