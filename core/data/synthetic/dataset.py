"""The rendered dataset on disk: ``train.rec``, ``val.bin``, ``val_tail.bin``, ``ground_truth.json``.

Training and analysis read files, not generators: this module renders the identities of
``faces`` under the labels of ``labels`` into the insightface layout, with held-out
identities, never seen in training, giving the ``val.bin`` verification pairs (and
``val_tail.bin`` from held-out identities with few images), and saves the ground truth
that ``load_ground_truth`` hands to analysis.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image
from tqdm import tqdm

from core.data.base import decode_image, encode_image
from core.data.recordio import write_insightface_rec
from core.data.synthetic_choices import FLIP_TARGETS, RENDERERS
from core.data.synthetic.faces import _expressions, _IdentityRenderer, _render_canonical, draw_identity_params
from core.data.synthetic.labels import (
    _FORMAT,
    _Labelling,
    _assign_labels,
    _label_identity,
    _validate_long_tail,
    _validate_noise,
    _verification_pairs,
    long_tail_counts,
)
from core.data.synthetic.shapes import draw_badge_params, render_badge_canonical
from core.data.synthetic.streams import (
    _S_HELDOUT_COUNTS,
    _S_HELDOUT_IMAGES,
    _S_HELDOUT_PARAMS,
    _S_OPEN_IMAGES,
    _S_OPEN_LABELS,
    _S_OPEN_PARAMS,
    _S_TRAIN_COUNTS,
    _S_TRAIN_IMAGES,
    _S_TRAIN_PARAMS,
    _S_VAL,
    _S_VAL_TAIL,
    _default_workers,
    _rng,
)
from core.data.verification_bin import write_verification_bin
from core.errors import ConfigError, DataError

__all__ = ["SyntheticConfig", "GROUND_TRUTH_FILE", "make_synthetic_dataset", "load_ground_truth"]

GROUND_TRUTH_FILE = "ground_truth.json"
PREVIEW_FILE = "preview.png"
# Everything make_synthetic_dataset writes: the only files it may replace.
_GENERATED_FILES = frozenset({"train.rec", "train.idx", "property", "val.bin", "val_tail.bin", GROUND_TRUTH_FILE,
                              PREVIEW_FILE, "images.npy", "labels.npy"})  # the last two: latent.py's


# ---------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------


@dataclass
class SyntheticConfig:
    """Options of the rendered dataset; saved verbatim in ``ground_truth.json``.

    The defaults give the CPU demo set: 600 training identities (8,407 images at seed 0,
    mean ~14 per identity, Zipf-like between 2 and 80) and 100 held-out identities for
    1,000 verification pairs; ``val_tail.bin`` is written when at least
    ``tail_min_identities`` held-out identities have ``<= tail_max_images`` images.
    ``image_size`` is the stored side; ``jpeg_quality`` the quality of the stored JPEGs.

    The noise can take three forms, each recorded in the ground truth's ``flipped`` with its
    ``kind``: ``flip_noise`` relabels images to another identity chosen uniformly
    (``flip_target="uniform"``) or among the three identities whose images look most alike
    (``"lookalike"``); ``open_set`` adds that share of images of people outside the set, each
    under a random training label (true label -1). ``renderer`` draws faces, or abstract
    badges in families of look-alikes (``shapes``), under the same camera nuisance.
    """

    identities: int = 600
    heldout_identities: int = 100
    min_images: int = 2
    max_images: int = 80
    zipf_exponent: float = 1.25
    flip_noise: float = 0.0
    split: float = 0.0
    val_pairs: int = 1000
    tail_max_images: int = 5
    tail_min_identities: int = 10
    image_size: int = 112
    jpeg_quality: int = 90
    renderer: str = "faces"
    flip_target: str = "uniform"
    open_set: float = 0.0
    seed: int = 0

    def validate(self) -> None:
        """Reject options that would produce a silently wrong dataset."""
        if self.identities < 2:
            raise ConfigError(f"synthetic.identities must be >= 2, got {self.identities}")
        if self.heldout_identities < 0:
            raise ConfigError(f"synthetic.heldout_identities must be >= 0, got {self.heldout_identities}")
        if self.heldout_identities == 1 or (self.heldout_identities and self.val_pairs < 2):
            raise ConfigError(
                "synthetic.heldout_identities must be 0 or >= 2 and synthetic.val_pairs >= 2 "
                f"(got {self.heldout_identities} identities, {self.val_pairs} pairs): "
                "verification pairs need two identities"
            )
        _validate_long_tail("synthetic", self.min_images, self.max_images, self.zipf_exponent)
        _validate_noise("synthetic", self.flip_noise, self.split)
        if self.tail_max_images < 2:
            raise ConfigError(f"synthetic.tail_max_images must be >= 2, got {self.tail_max_images}")
        if self.tail_min_identities < 2:
            raise ConfigError(f"synthetic.tail_min_identities must be >= 2, got {self.tail_min_identities}")
        if not 32 <= self.image_size <= 512:
            raise ConfigError(f"synthetic.image_size must be in [32, 512], got {self.image_size}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"synthetic.jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        if self.renderer not in RENDERERS:
            raise ConfigError(f"synthetic.renderer must be one of {', '.join(RENDERERS)}, got {self.renderer!r}")
        if self.flip_target not in FLIP_TARGETS:
            raise ConfigError(f"synthetic.flip_target must be one of {', '.join(FLIP_TARGETS)}, "
                              f"got {self.flip_target!r}")
        if not 0.0 <= self.open_set < 1.0:
            raise ConfigError(f"synthetic.open_set must be in [0, 1), got {self.open_set}")


# ---------------------------------------------------------------------------------------
# The rendered dataset
# ---------------------------------------------------------------------------------------


OPEN_SET_IMAGES_PER_IDENTITY = 3


def identity_params(renderer: str, seed: int, stream: int, index: int) -> dict:
    """Identity ``index``'s appearance under ``renderer`` (see RENDERERS)."""
    if renderer == "shapes":
        return draw_badge_params(seed, stream, index)
    return draw_identity_params(_rng(seed, stream, index))


def _identity_images_job(job: tuple) -> list[bytes]:
    """Render and JPEG-encode one identity's images (runs in a worker process)."""
    renderer_name, params, seed, params_stream, images_stream, index, count, size, quality = job
    renderer = _IdentityRenderer(_canonical(renderer_name, params, size, seed, params_stream, index), size)
    rng = _rng(seed, images_stream, index)
    return [encode_image(renderer.render(rng), quality) for _ in range(count)]


def _render_all(jobs: list[tuple], workers: int, progress: bool, desc: str) -> list[list[bytes]]:
    """Run identity jobs in order, on ``workers`` processes when that pays off.

    Rendering holds the GIL too much for threads to help, so it uses processes. They are
    forked where the platform allows (a spawned worker would spend seconds importing
    torch through ``core.data``) and before the progress bar starts its monitor thread;
    workers touch only numpy and PIL, never torch or OpenMP. Results come back in job
    order, so the output does not depend on the number of workers.
    """
    results: list[list[bytes]] = []
    if workers <= 1 or len(jobs) < 8:
        with tqdm(total=len(jobs), desc=desc, unit="id", disable=not progress) as bar:
            for job in jobs:
                results.append(_identity_images_job(job))
                bar.update(1)
        return results
    import multiprocessing as mp

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with mp.get_context(method).Pool(min(workers, len(jobs))) as pool:
        with tqdm(total=len(jobs), desc=desc, unit="id", disable=not progress) as bar:
            for images in pool.imap(_identity_images_job, jobs, chunksize=4):
                results.append(images)
                bar.update(1)
    return results


def _open_set_counts(images: int) -> np.ndarray:
    """Images per open-set identity: people outside the set, a few images each."""
    full, rest = divmod(images, OPEN_SET_IMAGES_PER_IDENTITY)
    return np.array([OPEN_SET_IMAGES_PER_IDENTITY] * full + ([rest] if rest else []), dtype=np.int64)


def _canonical(renderer: str, params: dict, size: int, seed: int, stream: int, index: int) -> list:
    """The identity's nuisance-free canvases under ``renderer`` (what every image of it is warped from)."""
    if renderer == "shapes":
        return render_badge_canonical(params, size, seed, stream, index)
    return _render_canonical(params, size, _expressions(seed, stream, index))


def _appearance(renderer: str, params: dict, seed: int, stream: int, index: int, side: int = 16) -> np.ndarray:
    """A small nuisance-free picture of the identity (its first canonical canvas, shrunk), as a vector."""
    canvas = _canonical(renderer, params, 32, seed, stream, index)[0]
    return np.asarray(canvas.convert("RGB").resize((side, side), Image.Resampling.BOX), dtype=np.float32).reshape(-1)


def nearest_identities(looks: np.ndarray, neighbours: int = 3) -> np.ndarray:
    """``[identities, neighbours]``: for each row of ``looks``, the other rows nearest to it (nearest first).

    Computed in blocks of rows, so memory stays small at any identity count.
    """
    squared = (looks ** 2).sum(axis=1)
    out = np.empty((len(looks), neighbours), dtype=np.int64)
    for start in range(0, len(looks), 256):
        block = squared[start:start + 256, None] + squared[None] - 2 * looks[start:start + 256] @ looks.T
        block[np.arange(len(block)), start + np.arange(len(block))] = np.inf
        nearest = np.argpartition(block, neighbours, axis=1)[:, :neighbours]
        out[start:start + len(block)] = np.take_along_axis(
            nearest, np.argsort(np.take_along_axis(block, nearest, axis=1), axis=1), axis=1)
    return out


@dataclass
class _SampleTruth:
    """Every training record's truth, label flips and open-set images included (identity order, open set last)."""

    label: np.ndarray
    identity: np.ndarray
    true_label: np.ndarray  # -1: a person outside the set
    within: np.ndarray
    noisy: np.ndarray  # indices of the samples whose label is wrong
    kind: list[str]  # per noisy sample: uniform | lookalike | open_set


def _with_open_set(lab: _Labelling, open_counts: np.ndarray, first_open_id: int, seed: int) -> _SampleTruth:
    """Append the open-set images, each under a random training label."""
    n_open = int(open_counts.sum())
    open_identity = np.repeat(np.arange(len(open_counts), dtype=np.int64), open_counts)
    within = np.arange(n_open, dtype=np.int64) - np.repeat(np.cumsum(open_counts) - open_counts, open_counts)
    open_labels = _rng(seed, _S_OPEN_LABELS).integers(0, lab.num_classes, n_open)
    flip_kind = "lookalike" if lab.lookalike else "uniform"
    return _SampleTruth(label=np.concatenate([lab.label, open_labels]),
                        identity=np.concatenate([lab.identity, first_open_id + open_identity]),
                        true_label=np.concatenate([lab.true_label, np.full(n_open, -1, dtype=np.int64)]),
                        within=np.concatenate([lab.within, within]),
                        noisy=np.concatenate([lab.flipped, len(lab.label) + np.arange(n_open, dtype=np.int64)]),
                        kind=[flip_kind] * len(lab.flipped) + ["open_set"] * n_open)


def _check_destination(out_dir: Path) -> None:
    """Refuse to replace anything but an earlier synthetic dataset (its own files only) or an empty folder."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise DataError(f"{out_dir}: exists and is not a directory; cannot write a synthetic dataset there")
        if any(out_dir.iterdir()) and not (out_dir / GROUND_TRUTH_FILE).is_file():
            raise DataError(
                f"{out_dir}: directory is not empty and holds no {GROUND_TRUTH_FILE}; refusing to replace "
                "data that is not a synthetic dataset")
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in _GENERATED_FILES)
        if foreign:
            raise DataError(
                f"{out_dir}: besides an earlier synthetic dataset it holds {', '.join(foreign[:5])}"
                f"{' …' if len(foreign) > 5 else ''}, which regenerating would delete; move them or choose "
                "another --out")


def _install(tmp: Path, out_dir: Path) -> None:
    """Swap the finished temporary folder into place, so readers never see half a dataset.

    Two runs may generate the same default set at once; if another one has installed a
    complete dataset meanwhile, ours is dropped instead of failing (same config, same bytes).
    """
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        old.rmdir()
        os.rename(out_dir, old)
        os.rename(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.rename(tmp, out_dir)
    except OSError:
        if not (out_dir / GROUND_TRUTH_FILE).is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _preview(images: list[list[bytes]], counts: np.ndarray, path: Path, rows: int = 6, cols: int = 8) -> None:
    """A grid of a few identities (rows) by several of their images (columns)."""
    chosen = [i for i in range(len(counts)) if counts[i] >= cols][:rows]
    if len(chosen) < rows:
        chosen = list(np.argsort(-counts, kind="stable")[:rows])
    tiles = []
    for i in chosen:
        row = [decode_image(b, f"preview identity {i}") for b in images[int(i)][:cols]]
        size = row[0].shape[0]
        while len(row) < cols:
            row.append(np.full((size, size, 3), 255, dtype=np.uint8))
        tiles.append(row)
    size = tiles[0][0].shape[0]
    gap = 2
    grid = np.full((len(tiles) * (size + gap) - gap, cols * (size + gap) - gap, 3), 255, dtype=np.uint8)
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            grid[r * (size + gap):r * (size + gap) + size, c * (size + gap):c * (size + gap) + size] = tile
    Image.fromarray(grid).save(path, format="PNG")


def _json_ready(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _pairs_record(pairs: list[tuple[int, int, int, int]], issame: list[bool], offset: int) -> dict:
    return {"identity_a": [p[0] + offset for p in pairs], "image_a": [p[1] for p in pairs],
            "identity_b": [p[2] + offset for p in pairs], "image_b": [p[3] for p in pairs],
            "issame": list(issame)}


def dataset_totals(lab: _Labelling, num_images: int, num_identities: int, num_open_set: int,
                   num_heldout: int) -> dict[str, int]:
    """The counts a generator reports and ``ground_truth.json`` keeps."""
    return {"num_images": num_images, "num_classes": int(lab.num_classes), "num_identities": num_identities,
            "num_flipped": int(len(lab.flipped)), "num_open_set": num_open_set,
            "num_split_pairs": int(len(lab.split_pairs)), "num_heldout_identities": num_heldout}


def ground_truth_record(config: Any, kind: str, totals: dict, counts: np.ndarray, held_counts: np.ndarray,
                        lab: _Labelling, truth: _SampleTruth, order: np.ndarray, key_of: np.ndarray,
                        val_info: Optional[dict], tail_info: Optional[dict], extra: dict) -> dict:
    """``ground_truth.json`` as every generator writes it (``load_ground_truth`` documents the layout); ``extra``
    holds what only one generator knows (the image generator: each identity's appearance)."""
    n_id, n_held = len(counts), len(held_counts)
    return {
        "format": _FORMAT, "kind": kind, "seed": config.seed, "config": asdict(config),
        "counts": {**totals, "images_per_identity": counts,
                   "images_per_label": np.bincount(truth.label, minlength=lab.num_classes)},
        "label_identity": _label_identity(lab),
        "split_pairs": lab.split_pairs,
        "flipped": {"key": key_of[truth.noisy], "label": truth.label[truth.noisy],
                    "true_label": truth.true_label[truth.noisy], "identity": truth.identity[truth.noisy],
                    "kind": truth.kind},
        # per record, indexed by key - 1: the person and the correct label behind each image
        "samples": {"identity": truth.identity[order], "true_label": truth.true_label[order],
                    "image_index": truth.within[order]},
        **extra,
        "heldout": {"identities": list(range(n_id, n_id + n_held)), "images_per_identity": held_counts,
                    "tail_max_images": config.tail_max_images,
                    "tail_identities": np.flatnonzero(held_counts <= config.tail_max_images) + n_id},
        "val": val_info,
        "val_tail": tail_info,
    }


def install_with_ground_truth(tmp: Path, out_dir: Path, record: dict) -> None:
    """Write the ground truth into the finished temporary folder, then swap it into place (``_install``)."""
    with open(tmp / GROUND_TRUTH_FILE, "w", encoding="utf-8") as handle:
        json.dump(_json_ready(record), handle, separators=(",", ":"))
    _install(tmp, out_dir)


def make_synthetic_dataset(out_dir: str | Path, config: SyntheticConfig, progress: bool = True,
                           workers: Optional[int] = None) -> dict:
    """Render the dataset into ``out_dir``; returns a summary of what was written.

    Writes ``train.rec``/``train.idx``/``property`` (insightface layout), ``val.bin``,
    ``val_tail.bin`` when enough held-out identities have few images, ``ground_truth.json``
    and ``preview.png``. The folder is built beside ``out_dir`` and renamed into place at
    the end, so an interrupted run never leaves something that looks complete. The
    output is byte-identical for a given config whatever ``workers`` is.
    """
    config.validate()
    out_dir = Path(out_dir)
    _check_destination(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    workers = _default_workers() if workers is None else max(1, int(workers))
    started = time.perf_counter()
    seed, size = config.seed, config.image_size
    n_id, n_held = config.identities, config.heldout_identities

    counts = long_tail_counts(n_id, config.min_images, config.max_images, config.zipf_exponent,
                              _rng(seed, _S_TRAIN_COUNTS))
    held_counts = long_tail_counts(n_held, config.min_images, config.max_images, config.zipf_exponent,
                                   _rng(seed, _S_HELDOUT_COUNTS))
    params = [identity_params(config.renderer, seed, _S_TRAIN_PARAMS, i) for i in range(n_id)]
    held_params = [identity_params(config.renderer, seed, _S_HELDOUT_PARAMS, h) for h in range(n_held)]
    open_counts = _open_set_counts(int(round(config.open_set * counts.sum())))
    open_params = [identity_params(config.renderer, seed, _S_OPEN_PARAMS, j) for j in range(len(open_counts))]
    if n_held and not np.any(held_counts >= 2):
        raise ConfigError(
            f"synthetic: no held-out identity drew two images (min_images={config.min_images}, "
            f"heldout_identities={n_held}), so val.bin could hold no positive pairs")

    groups = [(params, _S_TRAIN_PARAMS, _S_TRAIN_IMAGES, counts),
              (held_params, _S_HELDOUT_PARAMS, _S_HELDOUT_IMAGES, held_counts),
              (open_params, _S_OPEN_PARAMS, _S_OPEN_IMAGES, open_counts)]
    jobs = [(config.renderer, group[i], seed, params_stream, images_stream, i, int(group_counts[i]), size,
             config.jpeg_quality) for group, params_stream, images_stream, group_counts in groups
            for i in range(len(group))]

    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        rendered = _render_all(jobs, workers, progress, desc="synthetic identities")
        train_images, held_images = rendered[:n_id], rendered[n_id:n_id + n_held]
        open_images = rendered[n_id + n_held:]
        lookalikes = None
        if config.flip_target == "lookalike" and config.flip_noise:  # alike as an annotator sees people: by looks
            lookalikes = nearest_identities(np.stack([_appearance(config.renderer, params[i], seed, _S_TRAIN_PARAMS, i)
                                                      for i in range(n_id)]))
        lab = _assign_labels(counts, config.split, config.flip_noise, seed, lookalikes)
        truth = _with_open_set(lab, open_counts, n_id + n_held, seed)

        order = np.argsort(truth.label, kind="stable")
        flat = [img for images in train_images + open_images for img in images]
        samples = ((int(truth.label[j]), flat[j]) for j in order)
        num_images = write_insightface_rec(tmp, samples, lab.num_classes, image_size=(size, size))
        if num_images != len(order):
            raise DataError(f"{tmp}: wrote {num_images} images, expected {len(order)}")
        key_of = np.empty(len(order), dtype=np.int64)
        key_of[order] = np.arange(1, len(order) + 1)

        val_info, tail_info = None, None
        if n_held:
            pairs, issame = _verification_pairs(held_counts, config.val_pairs, _rng(seed, _S_VAL))
            write_verification_bin(
                tmp / "val.bin", [x for i, a, j, b in pairs for x in (held_images[i][a], held_images[j][b])], issame)
            val_info = {"file": "val.bin", "pairs": len(pairs), "positives": int(sum(issame)),
                        **_pairs_record(pairs, issame, n_id)}
            tail_ids = np.flatnonzero(held_counts <= config.tail_max_images)
            if len(tail_ids) >= config.tail_min_identities:
                tpairs, tsame = _verification_pairs(held_counts[tail_ids], config.val_pairs,
                                                    _rng(seed, _S_VAL_TAIL))
                tpairs = [(int(tail_ids[i]), a, int(tail_ids[j]), b) for i, a, j, b in tpairs]
                if tpairs:
                    write_verification_bin(
                        tmp / "val_tail.bin",
                        [x for i, a, j, b in tpairs for x in (held_images[i][a], held_images[j][b])], tsame)
                    tail_info = {"file": "val_tail.bin", "pairs": len(tpairs), "positives": int(sum(tsame)),
                                 "identities": (tail_ids + n_id).tolist(), **_pairs_record(tpairs, tsame, n_id)}

        _preview(train_images, counts, tmp / PREVIEW_FILE)
        totals = dataset_totals(lab, len(order), n_id, int(open_counts.sum()), n_held)
        identities = ([{"id": i, "role": "train", "num_images": int(counts[i]), "params": params[i]}
                       for i in range(n_id)]
                      + [{"id": n_id + h, "role": "heldout", "num_images": int(held_counts[h]),
                          "params": held_params[h]} for h in range(n_held)]
                      + [{"id": n_id + n_held + j, "role": "open_set", "num_images": int(open_counts[j]),
                          "params": open_params[j]} for j in range(len(open_counts))])
        install_with_ground_truth(tmp, out_dir, ground_truth_record(
            config, "images", totals, counts, held_counts, lab, truth, order, key_of, val_info, tail_info,
            {"identities": identities}))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    paths = {"train_rec": out_dir / "train.rec", "train_idx": out_dir / "train.idx",
             "property": out_dir / "property", "ground_truth": out_dir / GROUND_TRUTH_FILE,
             "preview": out_dir / PREVIEW_FILE}
    if val_info:
        paths["val"] = out_dir / "val.bin"
    if tail_info:
        paths["val_tail"] = out_dir / "val_tail.bin"
    return {
        "root": str(out_dir),
        **totals,
        "val_pairs": val_info["pairs"] if val_info else 0,
        "val_tail_pairs": tail_info["pairs"] if tail_info else 0,
        "seconds": round(time.perf_counter() - started, 2),
        "paths": {k: str(v) for k, v in paths.items()},
    }


def load_ground_truth(root: str | Path) -> Optional[dict]:
    """The ground truth saved beside a synthetic dataset, or None for real data.

    Analysis code calls this on any dataset root to decide whether precision/recall
    against known flips and splits can be reported. Layout (labels are 0-based, record
    keys 1-based as in train.rec):

    * ``config``, ``seed``: how to regenerate the data exactly;
    * ``counts``: num_images, num_classes, num_identities, num_flipped, num_split_pairs,
      num_heldout_identities, images_per_identity, images_per_label;
    * ``label_identity[label]``: the person behind each label;
    * ``split_pairs``: ``[original_label, extra_label]`` pairs that are one person;
    * ``flipped``: columns ``key``, ``label`` (given), ``true_label``, ``identity``;
    * ``samples``: columns ``identity``, ``true_label``, ``image_index`` per record
      (row ``key - 1``);
    * ``identities``: id, role (train/heldout), num_images and appearance params;
    * ``heldout``: held-out identity ids, their image counts and the tail subset;
    * ``val`` / ``val_tail``: the pairs of ``val.bin`` / ``val_tail.bin`` (identity and
      image index of both sides, issame), or None when not written.
    """
    path = Path(root) / GROUND_TRUTH_FILE
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read ground truth ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise DataError(f"{path}: not a facequeue synthetic ground truth (expected format {_FORMAT!r})")
    return data
