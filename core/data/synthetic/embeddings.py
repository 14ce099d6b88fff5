"""Embeddings drawn straight from a long-tailed mixture on the unit hypersphere.

Head-only experiments and benchmarks at millions of classes need embeddings with known
label noise, where rendering images and running a backbone would be pointless; the labels
come from ``labels``, as the rendered dataset's do, so the ground truth has the same layout.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Optional

import numpy as np
import torch

from core.data.synthetic.labels import (
    _FORMAT,
    _assign_labels,
    _label_identity,
    _validate_long_tail,
    _validate_noise,
    long_tail_counts,
)
from core.data.synthetic.streams import (
    _S_CENTERS,
    _S_CLUSTERS,
    _S_EMB_COUNTS,
    _S_EMB_NOISE,
    _S_SPLIT,
    _S_STREAM,
    _default_workers,
    _rng,
)
from core.errors import ConfigError

__all__ = ["SyntheticEmbeddingConfig", "make_synthetic_embeddings", "class_centers", "embedding_batches"]

# ---------------------------------------------------------------------------------------
# Embeddings drawn directly: a long-tailed mixture on the unit hypersphere
# ---------------------------------------------------------------------------------------

_CENTER_CHUNK = 8192  # rows per random stream; fixed so results do not depend on threads


@dataclass
class SyntheticEmbeddingConfig:
    """Options of the embedding mixture; the same label-noise knobs as the image set.

    ``noise_sigma`` is the norm of the noise relative to the (unit) center: a sample is
    ``normalise(center + noise_sigma * g / sqrt(dim))`` with ``g ~ N(0, I)``, so its cosine
    to its center is about ``1 / sqrt(1 + noise_sigma**2)`` whatever ``dim`` is.
    ``clusters > 0`` groups centers around that many random directions (spread
    ``cluster_sigma``, same convention), which creates near-duplicate classes as real
    identity sets have.
    """

    num_classes: int = 10_000
    dim: int = 512
    min_images: int = 2
    max_images: int = 80
    zipf_exponent: float = 1.25
    flip_noise: float = 0.0
    split: float = 0.0
    noise_sigma: float = 0.6
    clusters: int = 0
    cluster_sigma: float = 0.8
    seed: int = 0

    def validate(self) -> None:
        """Reject options that would produce a silently wrong mixture."""
        if self.num_classes < 2:
            raise ConfigError(f"embeddings.num_classes must be >= 2, got {self.num_classes}")
        if self.dim < 2:
            raise ConfigError(f"embeddings.dim must be >= 2, got {self.dim}")
        _validate_long_tail("embeddings", self.min_images, self.max_images, self.zipf_exponent)
        _validate_noise("embeddings", self.flip_noise, self.split)
        if not (math.isfinite(self.noise_sigma) and self.noise_sigma >= 0):
            raise ConfigError(f"embeddings.noise_sigma must be >= 0, got {self.noise_sigma}")
        if self.clusters < 0:
            raise ConfigError(f"embeddings.clusters must be >= 0, got {self.clusters}")
        if not (math.isfinite(self.cluster_sigma) and self.cluster_sigma >= 0):
            raise ConfigError(f"embeddings.cluster_sigma must be >= 0, got {self.cluster_sigma}")


def _normalise_rows(block: np.ndarray) -> None:
    """L2-normalise rows in place (zero rows stay zero instead of becoming NaN)."""
    norms = np.sqrt(np.einsum("ij,ij->i", block, block, dtype=np.float32))
    np.maximum(norms, np.float32(1e-12), out=norms)
    block /= norms[:, None]


def _parallel_chunks(n_rows: int, fn, workers: Optional[int] = None) -> None:
    """Run ``fn(chunk_index, start, stop)`` over fixed-size row chunks on threads.

    numpy's generators and ufuncs release the GIL, so threads scale; chunk boundaries are
    fixed so the numbers never depend on how many threads ran.
    """
    from concurrent.futures import ThreadPoolExecutor

    chunks = [(j, s, min(s + _CENTER_CHUNK, n_rows)) for j, s in enumerate(range(0, n_rows, _CENTER_CHUNK))]
    workers = _default_workers() if workers is None else max(1, int(workers))
    if workers == 1 or len(chunks) == 1:
        for c in chunks:
            fn(*c)
        return
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(lambda c: fn(*c), chunks):
            pass


def _centers_and_clusters(num_classes: int, dim: int, seed: int, clusters: int, cluster_sigma: float,
                          dtype: Any) -> tuple[np.ndarray, Optional[np.ndarray]]:
    out = np.empty((int(num_classes), int(dim)), dtype=dtype)
    means = None
    assignment = None
    if clusters > 0:
        means = np.empty((int(clusters), int(dim)), dtype=np.float32)
        for j, s in enumerate(range(0, clusters, _CENTER_CHUNK)):
            block = means[s:s + _CENTER_CHUNK]
            _rng(seed, _S_CLUSTERS, j).standard_normal(out=block, dtype=np.float32)
            _normalise_rows(block)
        assignment = np.empty(int(num_classes), dtype=np.int64)
    scale = np.float32(cluster_sigma / math.sqrt(dim))
    direct = np.dtype(dtype) == np.float32

    def fill(j: int, start: int, stop: int) -> None:
        rng = _rng(seed, _S_CENTERS, j)
        block = out[start:stop] if direct else np.empty((stop - start, dim), dtype=np.float32)
        if means is not None:
            ids = rng.integers(0, clusters, stop - start)
            assignment[start:stop] = ids
            rng.standard_normal(out=block, dtype=np.float32)
            block *= scale
            block += means[ids]
        else:
            rng.standard_normal(out=block, dtype=np.float32)
        _normalise_rows(block)
        if not direct:
            out[start:stop] = block

    _parallel_chunks(int(num_classes), fill)
    return out, assignment


def class_centers(num_classes: int, dim: int, seed: int, clusters: int = 0, dtype: Any = np.float32,
                  cluster_sigma: float = 0.8) -> np.ndarray:
    """Random unit class centers ``[num_classes, dim]``, optionally clustered.

    Built in fixed chunks on all cores, in place, so 1M x 512 float32 costs one pass over
    its 2 GB; the values depend only on ``(seed, dim, clusters, cluster_sigma)`` and the
    first rows stay the same when ``num_classes`` grows.
    """
    if num_classes < 1 or dim < 1:
        raise ConfigError(f"class_centers: num_classes and dim must be >= 1, got {num_classes} and {dim}")
    return _centers_and_clusters(num_classes, dim, seed, clusters, cluster_sigma, dtype)[0]


def make_synthetic_embeddings(config: SyntheticEmbeddingConfig) -> tuple[np.ndarray, np.ndarray, dict]:
    """Embeddings ``float32 [N, D]``, given labels ``int64 [N]`` and their ground truth.

    For analysis tests and head-only experiments of small to medium size (everything is
    held in memory). Rows are in identity order (identity, then sample index), so the
    samples stay the same when only ``flip_noise`` or ``split`` change. The ground truth
    has the same layout as the image dataset's (see ``load_ground_truth``), with ``index``
    (row) in place of ``key``; per-sample and per-class columns are numpy arrays rather
    than lists, ``identity_cluster`` gives each identity's cluster (None without clusters).
    """
    config.validate()
    seed, dim = config.seed, config.dim
    counts = long_tail_counts(config.num_classes, config.min_images, config.max_images, config.zipf_exponent,
                              _rng(seed, _S_EMB_COUNTS))
    centers, assignment = _centers_and_clusters(config.num_classes, dim, seed, config.clusters,
                                                config.cluster_sigma, np.float32)
    lab = _assign_labels(counts, config.split, config.flip_noise, seed)
    total = len(lab.identity)
    emb = np.empty((total, dim), dtype=np.float32)
    scale = np.float32(config.noise_sigma / math.sqrt(dim))

    def fill(j: int, start: int, stop: int) -> None:
        block = emb[start:stop]
        _rng(seed, _S_EMB_NOISE, j).standard_normal(out=block, dtype=np.float32)
        block *= scale
        block += centers[lab.identity[start:stop]]
        _normalise_rows(block)

    _parallel_chunks(total, fill)
    ground_truth = {
        "format": _FORMAT,
        "kind": "embeddings",
        "seed": seed,
        "config": asdict(config),
        "counts": {
            "num_images": int(total),
            "num_classes": int(lab.num_classes),
            "num_identities": int(config.num_classes),
            "num_flipped": int(len(lab.flipped)),
            "num_split_pairs": int(len(lab.split_pairs)),
            "images_per_identity": counts,
            "images_per_label": np.bincount(lab.label, minlength=lab.num_classes),
        },
        "label_identity": _label_identity(lab),
        "split_pairs": lab.split_pairs.tolist(),
        "flipped": {
            "index": lab.flipped,
            "label": lab.label[lab.flipped],
            "true_label": lab.true_label[lab.flipped],
            "identity": lab.identity[lab.flipped],
        },
        "samples": {"identity": lab.identity, "true_label": lab.true_label, "image_index": lab.within},
        "identity_cluster": assignment,
    }
    return emb, lab.label.copy(), ground_truth


def embedding_batches(num_classes: int, dim: int, batch_size: int, seed: int = 0, *,
                      noise_sigma: float = 0.6, min_images: int = 2, max_images: int = 80,
                      zipf_exponent: float = 1.25, flip_noise: float = 0.0, split: float = 0.0,
                      clusters: int = 0, cluster_sigma: float = 0.8, centers: Optional[np.ndarray] = None,
                      device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                      steps: Optional[int] = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (or ``steps``-long) stream of ``(embeddings [B, D], labels [B])`` on ``device``.

    Feeds head-only training-step benchmarks at millions of classes without a backbone or
    a dataset on disk: classes are drawn with the long-tailed frequencies that
    ``make_synthetic_embeddings`` would give them, and samples are generated on the device
    so that the stream costs no host-to-device traffic per step. Split classes put half
    their samples under an extra label ``num_classes + j``; a flip relabels a sample to a
    uniformly random other label. Labels range over ``num_classes + round(split *
    num_classes)``. Deterministic for a given seed on a given device.
    """
    if batch_size < 1:
        raise ConfigError(f"embedding_batches: batch_size must be >= 1, got {batch_size}")
    _validate_long_tail("embedding_batches", min_images, max_images, zipf_exponent)
    _validate_noise("embedding_batches", flip_noise, split)
    device = torch.device(device)
    counts = long_tail_counts(num_classes, min_images, max_images, zipf_exponent, _rng(seed, _S_EMB_COUNTS))
    if centers is None:
        centers = class_centers(num_classes, dim, seed, clusters=clusters, cluster_sigma=cluster_sigma)
    if tuple(centers.shape) != (num_classes, dim):
        raise ConfigError(f"embedding_batches: centers have shape {tuple(centers.shape)}, "
                          f"expected ({num_classes}, {dim})")
    table = torch.as_tensor(np.asarray(centers)).to(device=device, dtype=dtype)
    cdf = torch.as_tensor(np.cumsum(counts) / counts.sum(), dtype=torch.float64, device=device)
    n_split = int(round(split * num_classes))
    extra_of = torch.full((num_classes,), -1, dtype=torch.int64, device=device)
    if n_split:
        eligible = np.flatnonzero(counts >= 2)
        chosen = np.sort(_rng(seed, _S_SPLIT).permutation(eligible)[:n_split])
        extra_of[torch.as_tensor(chosen, device=device)] = torch.arange(
            num_classes, num_classes + len(chosen), device=device)
    num_labels = num_classes + n_split
    gen = torch.Generator(device=device)
    gen.manual_seed(int(np.random.SeedSequence([int(seed), _S_STREAM]).generate_state(1, np.uint64)[0] >> 1))
    scale = noise_sigma / math.sqrt(dim)
    step = 0
    while steps is None or step < steps:
        u = torch.rand(batch_size, generator=gen, device=device, dtype=torch.float64)
        cls = torch.searchsorted(cdf, u, right=True).clamp_(max=num_classes - 1)
        noise = torch.randn(batch_size, dim, generator=gen, device=device, dtype=dtype)
        emb = torch.nn.functional.normalize(table[cls] + scale * noise, dim=1)
        labels = cls.clone()
        if n_split:
            extra = extra_of[cls]
            move = (extra >= 0) & (torch.rand(batch_size, generator=gen, device=device) < 0.5)
            labels = torch.where(move, extra, labels)
        if flip_noise > 0:
            flip = torch.rand(batch_size, generator=gen, device=device) < flip_noise
            other = torch.randint(0, num_labels - 1, (batch_size,), generator=gen, device=device)
            other = other + (other >= labels).long()
            labels = torch.where(flip, other, labels)
        yield emb, labels
        step += 1
