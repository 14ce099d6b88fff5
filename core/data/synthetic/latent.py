"""Identities as latent codes, rendered by a fixed random network: 10^5-10^6 identities on a CPU.

Rendering faces does not reach the class counts at which Partial FC and DCQ make their
claims; this generator does, and keeps the structure that makes class sampling matter:

* **families of look-alikes**: identities come in families of ``family_size`` whose codes
  share a family center and differ by ``family_spread`` (the centers by 1): hard
  negatives exist, and are rare among random ones;
* **long-tailed images per identity**, drawn as the image generator draws them;
* **a sample** is its identity's code plus isotropic ``variation``, passed through a fixed
  random two-layer tanh network (the same for every seed and class count) into an
  ``side x side`` RGB observation, mirror-symmetric so the trainer's horizontal flip
  leaves it unchanged;
* **noise with ground truth**: split identities, flips (uniform, or to a family member:
  ``lookalike``) and open-set images, labelled by the image generator's own code, and
  recorded in the same ``ground_truth.json`` layout (``kind: "latent"``).

It writes ``images.npy``/``labels.npy`` (core/data/arrays.py), ``val.bin`` and ``val_tail.bin``
(held-out identities' pairs, PNG-encoded) and ``ground_truth.json``.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.data.arrays import write_arrays
from core.data.synthetic.dataset import (_check_destination, _open_set_counts, _pairs_record, _with_open_set,
                                         dataset_totals, ground_truth_record, install_with_ground_truth)
from core.data.synthetic.labels import (_assign_labels, _validate_long_tail, _validate_noise, _verification_pairs,
                                        long_tail_counts)
from core.data.synthetic.streams import (_S_HELDOUT_COUNTS, _S_HELDOUT_IMAGES, _S_HELDOUT_PARAMS, _S_OPEN_IMAGES,
                                         _S_OPEN_PARAMS, _S_TRAIN_COUNTS, _S_TRAIN_IMAGES, _S_TRAIN_PARAMS, _S_VAL,
                                         _S_VAL_TAIL, _rng)
from core.data.synthetic_choices import FLIP_TARGETS
from core.data.verification_bin import write_verification_bin
from core.errors import ConfigError

RENDERER_SEED = 20_211_130  # one renderer for every seed: a seed draws identities, not a new world
RENDERER_HIDDEN = 64
RENDERER_GAIN = 2.0  # pre-activation scale of both tanh layers: enough to make the map clearly nonlinear
RENDER_CHUNK = 1 << 16


@dataclass
class LatentConfig:
    """Options of a latent dataset; saved verbatim in ``ground_truth.json``."""

    identities: int = 2000
    heldout_identities: int = 200
    family_size: int = 4
    latent_dim: int = 16
    family_spread: float = 0.5
    variation: float = 0.9
    min_images: int = 2
    max_images: int = 40
    zipf_exponent: float = 2.0
    flip_noise: float = 0.0
    split: float = 0.0
    flip_target: str = "uniform"
    open_set: float = 0.0
    val_pairs: int = 3000
    tail_max_images: int = 5
    tail_min_identities: int = 10
    side: int = 8
    seed: int = 0

    def validate(self) -> None:
        if self.identities < 2:
            raise ConfigError(f"latent.identities must be >= 2, got {self.identities}")
        if self.heldout_identities == 1 or self.heldout_identities < 0:
            raise ConfigError(f"latent.heldout_identities must be 0 or >= 2, got {self.heldout_identities}")
        if self.family_size < 1 or self.latent_dim < 1:
            raise ConfigError(f"latent.family_size and latent.latent_dim must be >= 1, got {self.family_size} and "
                              f"{self.latent_dim}")
        if self.family_spread <= 0 or self.variation < 0:
            raise ConfigError(f"latent.family_spread must be > 0 and latent.variation >= 0, got "
                              f"{self.family_spread} and {self.variation}")
        if self.side < 2 or self.side % 2:
            raise ConfigError(f"latent.side must be even and >= 2 (the observation is mirror-symmetric), got "
                              f"{self.side}")
        _validate_long_tail("latent", self.min_images, self.max_images, self.zipf_exponent)
        _validate_noise("latent", self.flip_noise, self.split)
        if self.flip_target not in FLIP_TARGETS:
            raise ConfigError(f"latent.flip_target must be one of {', '.join(FLIP_TARGETS)}, got {self.flip_target!r}")
        if self.flip_target == "lookalike" and self.flip_noise and self.family_size < 2:
            raise ConfigError("latent.flip_target lookalike flips to a family member: it needs family_size >= 2")
        if not 0.0 <= self.open_set < 1.0:
            raise ConfigError(f"latent.open_set must be in [0, 1), got {self.open_set}")


def identity_codes(config: LatentConfig, count: int, stream: int) -> np.ndarray:
    """``[count, latent_dim]`` codes: family ``i // family_size``'s center plus the identity's own offset.

    Draws are sequential per stream, so the first identities' codes do not change when
    ``count`` grows (the sweep's class counts nest).
    """
    families = -(-count // config.family_size)
    centers = _rng(config.seed, stream, 0).standard_normal((families, config.latent_dim))
    offsets = _rng(config.seed, stream, 1).standard_normal((count, config.latent_dim)) * config.family_spread
    return (centers[np.arange(count) // config.family_size] + offsets).astype(np.float32)


def render(codes: np.ndarray, side: int) -> np.ndarray:
    """Latent samples ``[N, latent_dim]`` -> uint8 observations ``[N, side, side, 3]`` (mirror-symmetric)."""
    rng = np.random.default_rng(RENDERER_SEED)
    dim, half = codes.shape[1], side // 2
    first = rng.standard_normal((dim, RENDERER_HIDDEN)).astype(np.float32) * (RENDERER_GAIN / np.sqrt(dim))
    second = (rng.standard_normal((RENDERER_HIDDEN, side * half * 3)).astype(np.float32)
              * (RENDERER_GAIN / np.sqrt(RENDERER_HIDDEN)))
    out = np.empty((len(codes), side, side, 3), dtype=np.uint8)
    for start in range(0, len(codes), RENDER_CHUNK):
        values = np.tanh(np.tanh(codes[start:start + RENDER_CHUNK] @ first) @ second)
        left = np.rint((values + 1.0) * 127.5).astype(np.uint8).reshape(-1, side, half, 3)
        out[start:start + len(left), :, :half] = left
        out[start:start + len(left), :, half:] = left[:, :, ::-1]
    return out


def _samples(config: LatentConfig, codes: np.ndarray, counts: np.ndarray, stream: int) -> np.ndarray:
    """Every image of every identity, in identity order: its code plus ``variation`` noise, rendered."""
    owner = np.repeat(np.arange(len(counts)), counts)
    noise = _rng(config.seed, stream).standard_normal((len(owner), config.latent_dim)).astype(np.float32)
    return render(codes[owner] + config.variation * noise, config.side)


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_pairs(path: Path, images: np.ndarray, first: np.ndarray, pairs: tuple[list, list]) -> None:
    """``val.bin`` of ``(identity, image, identity, image)`` pairs and their issame flags (``first[i]``: identity i's
    first row of ``images``)."""
    encoded = []
    for identity_a, image_a, identity_b, image_b in pairs[0]:
        encoded += [_png(images[first[identity_a] + image_a]), _png(images[first[identity_b] + image_b])]
    write_verification_bin(path, encoded, pairs[1])


def make_latent_dataset(out_dir: str | Path, config: LatentConfig, progress: bool = True) -> dict[str, Any]:
    """Generate the dataset into ``out_dir`` (built beside it, renamed into place); returns what was written."""
    config.validate()
    out_dir = Path(out_dir)
    _check_destination(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    seed, n_id, n_held = config.seed, config.identities, config.heldout_identities
    counts = long_tail_counts(n_id, config.min_images, config.max_images, config.zipf_exponent,
                              _rng(seed, _S_TRAIN_COUNTS))
    held_counts = long_tail_counts(n_held, config.min_images, config.max_images, config.zipf_exponent,
                                   _rng(seed, _S_HELDOUT_COUNTS))
    open_counts = _open_set_counts(int(round(config.open_set * counts.sum())))
    lookalikes = None
    if config.flip_target == "lookalike" and config.flip_noise:  # the other members of the identity's family
        identity, size = np.arange(n_id)[:, None], config.family_size
        lookalikes = identity - identity % size + (identity % size + np.arange(1, size)[None]) % size
        # the last family may be short: a member past the end stands for the next identity instead
        lookalikes = np.where(lookalikes < n_id, lookalikes, (identity + 1) % n_id)
    lab = _assign_labels(counts, config.split, config.flip_noise, seed, lookalikes)
    truth = _with_open_set(lab, open_counts, n_id + n_held, seed)

    train = _samples(config, identity_codes(config, n_id, _S_TRAIN_PARAMS), counts, _S_TRAIN_IMAGES)
    open_images = _samples(config, identity_codes(config, len(open_counts), _S_OPEN_PARAMS), open_counts,
                           _S_OPEN_IMAGES)
    order = np.argsort(truth.label, kind="stable")
    images = np.concatenate([train, open_images])[order]
    key_of = np.empty(len(order), dtype=np.int64)
    key_of[order] = np.arange(1, len(order) + 1)

    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        write_arrays(tmp, images, truth.label[order])
        val_info = tail_info = None
        if n_held:
            held = _samples(config, identity_codes(config, n_held, _S_HELDOUT_PARAMS), held_counts,
                            _S_HELDOUT_IMAGES)
            first = np.concatenate([[0], np.cumsum(held_counts)[:-1]])
            pairs = _verification_pairs(held_counts, config.val_pairs, _rng(seed, _S_VAL))
            _write_pairs(tmp / "val.bin", held, first, pairs)
            val_info = {"file": "val.bin", "pairs": len(pairs[0]), "positives": int(sum(pairs[1])),
                        **_pairs_record(*pairs, n_id)}
            tail_ids = np.flatnonzero(held_counts <= config.tail_max_images)
            if len(tail_ids) >= config.tail_min_identities:
                tail = _verification_pairs(held_counts[tail_ids], config.val_pairs, _rng(seed, _S_VAL_TAIL))
                tail = ([(int(tail_ids[i]), a, int(tail_ids[j]), b) for i, a, j, b in tail[0]], tail[1])
                if tail[0]:
                    _write_pairs(tmp / "val_tail.bin", held, first, tail)
                    tail_info = {"file": "val_tail.bin", "pairs": len(tail[0]), "positives": int(sum(tail[1])),
                                 "identities": (tail_ids + n_id).tolist(), **_pairs_record(*tail, n_id)}
        totals = dataset_totals(lab, len(order), n_id, int(open_counts.sum()), n_held)
        install_with_ground_truth(tmp, out_dir, ground_truth_record(
            config, "latent", totals, counts, held_counts, lab, truth, order, key_of, val_info, tail_info,
            {"families": {"family_size": config.family_size}}))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"root": str(out_dir), **totals, "val_pairs": val_info["pairs"] if val_info else 0,
            "val_tail_pairs": tail_info["pairs"] if tail_info else 0,
            "seconds": round(time.perf_counter() - started, 2)}
