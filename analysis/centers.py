"""Class centers and per-class counters of a trained run, and embeddings of a dataset under it.

Two sources of centers exist, and the analyses need both:

* a method that trains per-class weights (Partial FC's center store, sub-center
  ArcFace's dominant sub-centers) yields its *stored* centers through its spec's
  ``stored_centers`` hook. Their raw norms are part of the long-tail story (a class that
  is rarely a positive but often a negative ends with a different norm), so they are
  kept un-normalised here;
* DCQ keeps no per-class weights, and any run can be asked about data it was not
  trained on, so centers can also be the class means of a dataset's embeddings under
  the run's backbone.

The checkpoint names its method's per-class statistics and where its sampler state
keeps them (core/checkpoint.py, ``method_record``), so the counters are read here
without knowing the method. Embeddings are cached beside the run, keyed by the
checkpoint's identity (path, size, mtime) and the data's, because embedding a dataset
is the one slow step and every analyze command needs it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from analysis.choices import CENTER_SOURCES
from core.embedding import embed_dataset
from core.errors import ConfigError, DataError
from core.method_spec import MethodSpec

CACHE_DIR_NAME = "analysis_cache"


def _array(value: Any, what: str, dtype: Any = None) -> np.ndarray:
    if value is None:
        raise DataError(f"checkpoint sampler state has no {what!r}")
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = (value.float() if value.is_floating_point() else value).numpy()
    return np.asarray(value, dtype=dtype)


class RunTables:
    """The sampler state of a run for all classes, read entry by entry when asked for.

    Per-class tables a run wrote as shards (``state["sampler_shards"]``) are reassembled
    from the shard files for all classes, whatever number of processes wrote them; an
    entry is read once, so asking for the centers does not also load their momentum.
    """

    def __init__(self, state: dict[str, Any], run_dir: Path) -> None:
        self._state = state
        self._run_dir = Path(run_dir)
        self._sharded = set((state.get("sampler_shards") or {}).get("names") or [])
        self._read: dict[str, np.ndarray] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._sharded or key in (self._state.get("sampler") or {})

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._read:
            if key in self._sharded:
                from core.checkpoint import read_rows

                total = sum(shard["count"] for shard in self._state["sampler_shards"]["shards"])
                value = read_rows(self._run_dir, self._state, key, 0, total)
            else:
                value = (self._state.get("sampler") or {}).get(key)
            self._read[key] = _array(value, key)
        return self._read[key]


@dataclass
class ClassStatistics:
    """The per-class counters a sampler recorded during training, by name, with what they mean.

    ``records`` are the checkpoint's statistic records (name, meaning, role,
    updates_weights; see core/method_spec.py ``Statistic``); ``series`` their values.
    A ``negative`` counter that ``updates_weights`` counts passive updates (Partial FC:
    a center pushed as a sampled negative); one that does not counts only exposure (DCQ:
    generated queue entries, never trained).
    """

    method: str
    num_classes: int
    records: list[dict[str, Any]]
    series: dict[str, np.ndarray]
    notes: list[str] = field(default_factory=list)

    def with_role(self, role: str) -> Optional[dict[str, Any]]:
        """The first recorded statistic with ``role``, if any."""
        return next((record for record in self.records if record["role"] == role), None)

    @property
    def passive(self) -> Optional[dict[str, Any]]:
        """The statistic that counts passive updates, if the method has any."""
        negative = self.with_role("negative")
        return negative if negative is not None and negative["updates_weights"] else None


def run_class_statistics(state: dict[str, Any], tables: RunTables) -> ClassStatistics:
    """Every per-class counter the checkpoint's method record names, checked to have one value per class."""
    config = state.get("config") or {}
    num_classes = int(state.get("num_classes", 0))
    record = state.get("method")
    if not isinstance(record, dict):  # checkpoint format 1 did not name its statistics
        return ClassStatistics(method=str(config.get("method")), num_classes=num_classes, records=[], series={},
                               notes=["This checkpoint was written by an earlier facequeue that did not record its "
                                      "per-class statistics by name; retrain to see them."])
    series = {}
    for statistic in record["class_statistics"]:
        values = tables[statistic["key"]].astype(np.int64)
        if values.shape != (num_classes,):
            raise DataError(f"checkpoint statistic {statistic['name']} has shape {list(values.shape)}, expected "
                            f"[{num_classes}] (one value per class)")
        series[statistic["name"]] = values
    return ClassStatistics(method=record["name"], num_classes=num_classes,
                           records=[{k: v for k, v in statistic.items() if k != "key"}
                                    for statistic in record["class_statistics"]], series=series)


@dataclass
class RunInfo:
    """What the analyses need from a run, read once from its checkpoint."""

    path: Path
    checkpoint: Path
    config: dict[str, Any]
    method: str
    num_classes: int
    input_size: int
    statistics: ClassStatistics
    backbone_state: dict[str, Any]
    tables: RunTables
    spec: Optional[MethodSpec]  # None: a method this installation does not have (its hooks are unavailable)
    dynamics: Optional[dict[str, Any]] = None  # per-sample training margins (core/dynamics.py), if recorded
    step: int = 0

    @property
    def cache_dir(self) -> Path:
        """Beside the checkpoint, so the cache goes wherever the run goes and dies with it."""
        return self.checkpoint.parent / CACHE_DIR_NAME

    @property
    def has_stored_centers(self) -> bool:
        return self.spec is not None and self.spec.stored_centers is not None

    def stored_centers(self, embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """The method's trained center of every class ``[C, D]``, raw (its spec's ``stored_centers`` hook)."""
        from core.method_spec import load_reference

        if not self.has_stored_centers:
            raise ConfigError(f"--centers store: the {self.method} run {self.checkpoint} keeps no per-class centers; "
                              "use --centers means")
        centers = np.asarray(load_reference(self.spec.stored_centers)(self.tables, embeddings, labels),
                             dtype=np.float32)
        if centers.ndim != 2 or centers.shape[0] != self.num_classes:
            raise DataError(f"{self.checkpoint}: the stored centers have shape {list(centers.shape)}, expected "
                            f"[{self.num_classes}, D] (one center per class)")
        return centers


BARE_WEIGHTS = "bare weights"


def load_run(run: str | Path, backbone: Optional[str] = None, embedding_size: Optional[int] = None,
             input_size: Optional[int] = None) -> RunInfo:
    """Read a run directory, a checkpoint file or bare weights (with ``backbone``, see core/models.py) on CPU; a
    clear error when there is none. Bare weights know no classes: ``num_classes`` is 0 until the data says."""
    from core.methods import METHODS, get_method
    from core.models import bare_model, check_run_flags, is_run_checkpoint, read_model_file

    checkpoint, state = read_model_file(run)
    if not is_run_checkpoint(state):
        model = bare_model(checkpoint, state, backbone, embedding_size, input_size)
        notes = [f"{checkpoint} holds bare weights: no sampler recorded per-class counters, and no center was "
                 "trained with them."]
        return RunInfo(path=Path(run), checkpoint=checkpoint, config={
            "backbone": model.backbone, "embedding_size": model.embedding_size, "data": None}, method=BARE_WEIGHTS,
            num_classes=0, input_size=model.input_size,
            statistics=ClassStatistics(BARE_WEIGHTS, 0, records=[], series={}, notes=notes),
            backbone_state=model.network.state_dict(), tables=RunTables({}, checkpoint.parent), spec=None)
    check_run_flags(checkpoint, state, backbone, embedding_size, input_size)
    tables = RunTables(state, checkpoint.parent)
    stats = run_class_statistics(state, tables)
    method = str(state["config"].get("method"))
    spec = get_method(method) if method in METHODS else None
    if spec is None:
        stats.notes.append(f"The method {method!r} is not registered here: its own analyses (stored centers, noise "
                           "signals) are unavailable.")
    return RunInfo(path=Path(run), checkpoint=checkpoint, config=dict(state["config"]), method=method,
                   num_classes=int(state["num_classes"]), input_size=int(state["input_size"]), statistics=stats,
                   backbone_state=state["eval_backbone"], tables=tables, spec=spec, dynamics=state.get("dynamics"),
                   step=int(state.get("step", 0)))


def resolve_data_path(run: RunInfo, data: Optional[str] = None) -> Path:
    """``--data``, defaulting to what the run trained on; "synthetic" means the run's own synthetic set."""
    from core.data.loader import synthetic_dataset_root

    value = data if data is not None else run.config.get("data")
    if value is None:
        what = "bare weights name no training data" if run.method == BARE_WEIGHTS else "the run's config names no data"
        raise ConfigError(f"{run.checkpoint}: {what}; pass --data")
    if value == "synthetic":
        config = run.config
        return synthetic_dataset_root(int(config.get("synthetic_identities", 600)),
                                      float(config.get("flip_noise", 0.0)), float(config.get("split", 0.0)))
    path = Path(value).expanduser()
    if not path.exists():
        source = "--data" if data is not None else f"the run's training data (from {run.checkpoint})"
        raise DataError(f"{source} {path}: no such file or directory")
    return path


def build_run_backbone(run: RunInfo, device: torch.device) -> torch.nn.Module:
    """The network the run is evaluated with (DCQ: the momentum encoder), in eval mode."""
    from core.backbones import build_backbone

    model = build_backbone(run.config["backbone"], int(run.config["embedding_size"]), run.input_size)
    model.load_state_dict(run.backbone_state)
    return model.to(device).eval()


def _stat_key(path: Path) -> list[Any]:
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def embedding_cache_key(run: RunInfo, data_path: Path, labels: np.ndarray,
                        files: Optional[Sequence[str]] = None) -> str:
    """Identity of (checkpoint, data): any retraining or data edit gives a new key.

    ``files`` are a folder's or list's samples (image paths or ``file.rec#KEY``): an image
    replaced in place, or a .rec its references point into, changes the key even though
    the folder or list file itself did not change.
    """
    data_path = Path(data_path)
    parts: list[Any] = [_stat_key(run.checkpoint)]
    root = data_path.parent if data_path.suffix == ".rec" else data_path
    if root.is_dir() and (root / "train.rec").exists():
        parts += [_stat_key(root / "train.rec"), _stat_key(root / "train.idx")]
    else:
        parts.append(_stat_key(data_path))
    if files is not None:
        parts.append(_files_key(files))
    parts.append(hashlib.sha1(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest())
    return hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:16]


def _files_key(files: Sequence[str]) -> str:
    from core.data.folder import record_reference

    digest = hashlib.sha1()
    record_files: set[str] = set()
    for name in map(str, files):
        reference = record_reference(name)
        if reference is not None:
            record_files.add(reference[0])
            continue
        stat = os.stat(name)
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    for rec in sorted(record_files):
        for path in (Path(rec), Path(rec).with_suffix(".idx")):
            digest.update(json.dumps(_stat_key(path)).encode())
    return digest.hexdigest()


def cached_embeddings(run: RunInfo, data_path: Path, dataset, device: torch.device, batch_size: int = 256,
                      workers: int = 0, progress: bool = True) -> tuple[np.ndarray, Path, bool]:
    """Embeddings of ``dataset`` under ``run``, from ``RUN/analysis_cache`` when still valid.

    They come back memory-mapped (read-only): every analysis reads them in chunks, so a
    dataset's embeddings need not fit in memory next to the analysis.

    Returns ``(embeddings, cache file, whether it was a cache hit)``. A new cache file is
    filled through a memory map beside its final name and renamed into place when
    complete, so an interrupted run never leaves a truncated cache behind.
    """
    from core.io import atomic_path, atomic_write_json

    key = embedding_cache_key(run, data_path, dataset.labels, getattr(dataset, "paths", None))
    path = run.cache_dir / f"{key}.npy"
    dim = int(run.config["embedding_size"])
    if path.is_file():
        try:
            embeddings = np.load(path, mmap_mode="r")
        except (OSError, ValueError):
            embeddings = None
        if embeddings is not None and embeddings.shape == (len(dataset), dim):
            return embeddings, path, True
    model = build_run_backbone(run, device)
    with atomic_path(path) as tmp:
        stored = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(dataset), dim))
        embed_dataset(model, dataset, batch_size=batch_size, workers=workers, device=device, progress=progress,
                      out=stored)
        stored.flush()
        del stored
    atomic_write_json(path.with_suffix(".json"), {
        "checkpoint": str(run.checkpoint.resolve()), "data": str(Path(data_path).resolve()),
        "num_samples": len(dataset), "dim": dim})
    return np.load(path, mmap_mode="r"), path, False


@dataclass
class Centers:
    """One vector per class plus where it came from; ``vectors`` keep their raw norms."""

    vectors: np.ndarray  # float32 [C, D]
    source: str  # "store" (PFC center store) or "means" (class means of embeddings)
    counts: np.ndarray  # samples per class in the analysed data

    @property
    def norms(self) -> np.ndarray:
        return np.linalg.norm(self.vectors, axis=1)

    @property
    def present(self) -> np.ndarray:
        """Classes that have a center: every class of a store, classes with samples for means."""
        if self.source == "store":
            return np.ones(len(self.vectors), dtype=bool)
        return self.counts > 0


def class_sums(embeddings: np.ndarray, labels: np.ndarray, num_classes: int,
               chunk_rows: int = 65536, unit_rows: bool = False) -> np.ndarray:
    """Per-class sums of embeddings ``float32 [C, D]``, each block of rows accumulated in float64.

    Rows are read a block at a time, in order (a memory map streams from disk): a float64
    copy of millions of embeddings would need twice their memory, and a float64 table of
    a million classes 4 GB. Each block's per-class partial sums are exact to float64 and
    then added to the float32 table, one rounding per block a class appears in.
    ``unit_rows`` L2-normalises each row before it is added.
    """
    sums = np.zeros((num_classes, embeddings.shape[1]), dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    for start in range(0, len(labels), chunk_rows):
        block = torch.from_numpy(np.array(embeddings[start:start + chunk_rows], dtype=np.float64))
        if unit_rows:
            block = F.normalize(block, dim=1)
        present, local = np.unique(labels[start:start + chunk_rows], return_inverse=True)
        partial = torch.zeros(len(present), block.shape[1], dtype=torch.float64)
        partial.index_add_(0, torch.from_numpy(local.reshape(-1)), block)
        sums[present] += partial.float().numpy()
    return sums


def class_means(embeddings: np.ndarray, labels: np.ndarray, num_classes: int,
                sums: Optional[np.ndarray] = None) -> Centers:
    """Centers as the mean of each class's unit embeddings (classes with no samples: zero).

    ``sums``: ``class_sums`` of the same rows when the caller already has them (a pass over
    every embedding saved).
    """
    counts = np.bincount(labels, minlength=num_classes)
    means = class_sums(embeddings, labels, num_classes) if sums is None else sums.copy()
    means /= np.maximum(counts, 1)[:, None].astype(np.float32)  # in place: 2 GB at a million classes
    return Centers(vectors=means, source="means", counts=counts)


def choose_centers(source: str, purpose: str, run: RunInfo, embeddings: np.ndarray, labels: np.ndarray,
                   sums: Optional[np.ndarray] = None) -> Centers:
    """The centers an analysis uses; ``auto`` depends on the question asked.

    ``purpose="detection"`` (conflict, noise): class means of the data's embeddings.
    They say where the backbone actually puts each class's images; Partial FC's stored
    centers of tail classes are rarely updated and the softmax pushes the two labels of
    one person apart, so on the synthetic ground truth the means rank conflicts and
    flips markedly better (see docs/ANALYSIS.md). ``purpose="longtail"``: the
    method's stored centers when it has them, since how the classifier's centers behave
    is the subject there; class means otherwise (DCQ).
    """
    if source not in CENTER_SOURCES:
        raise ConfigError(f"--centers must be one of {', '.join(CENTER_SOURCES)}; got {source!r}")
    if purpose not in ("detection", "longtail"):
        raise ConfigError(f"centers purpose must be detection or longtail, got {purpose!r}")
    if source == "auto":
        source = "store" if purpose == "longtail" and run.has_stored_centers else "means"
    if source == "store":
        counts = np.bincount(labels, minlength=run.num_classes)
        return Centers(vectors=run.stored_centers(embeddings, labels), source="store", counts=counts)
    return class_means(embeddings, labels, run.num_classes, sums)
