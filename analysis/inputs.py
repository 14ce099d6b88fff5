"""Everything an analyze command reads, gathered and checked once: run, data, embeddings, truth.

All three analyses (and the combined report) need the same bundle; building it in one
function means a mismatched dataset, an empty dataset or a run without a checkpoint
fails the same way, with the same message, before any slow step runs.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from analysis.centers import RunInfo, cached_embeddings, load_run, resolve_data_path
from core.data.base import FaceDataset, SampleSources, sample_sources
from core.errors import ConfigError, DataError


@dataclass
class AnalysisInput:
    """The validated bundle: class i of the data is class i of the run, embeddings are unit rows."""

    run: RunInfo
    data_path: Path
    dataset: FaceDataset
    labels: np.ndarray
    embeddings: np.ndarray  # unit rows [N, D]
    sources: SampleSources
    ground_truth: Optional[dict]
    ground_truth_note: Optional[str] = None  # why a ground_truth.json beside the data was not used
    cache_file: Optional[Path] = None
    cache_hit: bool = False

    @property
    def num_classes(self) -> int:
        return self.run.num_classes


def data_root(path: Path) -> Path:
    """The folder a dataset's side files (ground_truth.json) live in."""
    path = Path(path)
    if path.is_file():
        return path.parent
    return path


def open_analysis_dataset(run: RunInfo, data_path: Path) -> "FaceDataset":
    """The dataset at ``data_path``, checked to be non-empty and to have the run's classes."""
    from core.data.loader import open_dataset
    from core.data.transforms import ModelInputTransform

    dataset = open_dataset(data_path, transform=ModelInputTransform(run.input_size))
    if len(dataset) == 0:
        raise DataError(f"--data {data_path}: the dataset holds no images")
    if run.num_classes == 0:  # bare weights: the classes are the data's
        run.num_classes = run.statistics.num_classes = int(dataset.num_classes)
    if int(dataset.num_classes) != run.num_classes:
        raise DataError(f"--data {data_path}: has {dataset.num_classes} classes but the run "
                        f"({run.checkpoint}) was trained on {run.num_classes}; class i of the data must be "
                        f"class i of the run, so analyse it with the data it was trained on")
    return dataset


def load_analysis_input(run: str | Path, data: Optional[str] = None, device: str = "auto",
                        batch_size: int = 256, workers: int = 0, progress: bool = True,
                        centers: str = "auto", backbone: Optional[str] = None, embedding_size: Optional[int] = None,
                        input_size: Optional[int] = None) -> AnalysisInput:
    """Run (or bare weights, described by ``backbone`` ...) + data + (cached) embeddings + ground truth,
    validated (everything that can be, before embedding)."""
    from core.distributed import resolve_device

    info = load_run(run, backbone, embedding_size, input_size)
    if centers == "store" and not info.has_stored_centers:
        raise ConfigError(f"--centers store: the {info.method} run {info.checkpoint} keeps no per-class centers; use "
                          "--centers means")
    data_path = resolve_data_path(info, data)
    dataset = open_analysis_dataset(info, data_path)
    ground_truth, ground_truth_note = usable_ground_truth(data_root(data_path), data_path, len(dataset),
                                                          info.num_classes)
    torch_device = resolve_device(device)
    embeddings, cache_file, hit = cached_embeddings(info, data_path, dataset, torch_device, batch_size, workers,
                                                    progress)
    labels = np.asarray(dataset.labels, dtype=np.int64)
    return AnalysisInput(run=info, data_path=data_path, dataset=dataset, labels=labels, embeddings=embeddings,
                         sources=sample_sources(dataset), ground_truth=ground_truth,
                         ground_truth_note=ground_truth_note, cache_file=cache_file,
                         cache_hit=hit)


def usable_ground_truth(root: Path, data_path: Path, num_images: int, num_classes: int
                        ) -> tuple[Optional[dict], Optional[str]]:
    """The ground truth beside the data, or None and why not. A ground_truth.json that is not this project's, or
    describes other data, is a warning and an unscored analysis, not a stop: a user's own file may bear the
    name, and the analysis is worth having without scores."""
    from core.data.synthetic import load_ground_truth

    try:
        truth = load_ground_truth(root)
        if truth is not None:
            check_ground_truth(truth, root, data_path, num_images, num_classes)
    except DataError as exc:
        note = f"{exc}; the analysis is not scored against it"
        print(f"warning: {note}", file=sys.stderr)
        return None, note
    return truth, None


def check_ground_truth(truth: dict, root: Path, data_path: Path, num_images: int, num_classes: int) -> None:
    """Refuse a ground_truth.json written for other data: its scores would be silently wrong.

    A list file (a cleaned subset, say) may hold fewer images than the set the ground
    truth describes, but never other classes.
    """
    counts = truth.get("counts", {})
    where = root / "ground_truth.json"
    if counts.get("num_classes") not in (None, num_classes):
        raise DataError(f"{where}: describes {counts['num_classes']} classes but the data has {num_classes}; "
                        "it belongs to another dataset")
    subset = Path(data_path).is_file()
    if counts.get("num_images") not in (None, num_images) and not (subset and num_images < counts["num_images"]):
        raise DataError(f"{where}: describes {counts['num_images']} images but {data_path} holds {num_images}; "
                        "it belongs to another dataset")
