"""``python cli.py experiment run``: train and analyse every grid cell, resumably.

Each cell writes ``cells/NAME/result.json`` last (atomically), so a finished cell is
exactly one whose result file exists and a rerun skips it. A cell interrupted after a
checkpoint resumes from it; one interrupted before restarts. Datasets are rendered once
per (kind, seed) under ``data/`` and reused by every arm.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

from core.errors import ConfigError, DataError
from core.io import atomic_write_json, claim_settings, read_json
from experiments.grid import ARMS, DATASETS, Cell, GridScale, grid_cells

if TYPE_CHECKING:
    from analysis.centers import ClassStatistics

GRID_FILE = "grid.json"
RESULT_FILE = "result.json"
UPDATES_FILE = "updates.npz"


def dataset_root(out: Path, scale: GridScale, dataset: str, seed: int) -> Path:
    """The cell's dataset, rendered on first use (into a temporary name, then renamed)."""
    from core.data.synthetic import make_synthetic_dataset

    root = out / "data" / f"{dataset}-seed{seed}"
    if not (root / "ground_truth.json").exists():
        flip_noise, split = DATASETS[dataset]
        partial = root.with_name(root.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        make_synthetic_dataset(partial, scale.synthetic(flip_noise, split, seed), progress=False)
        shutil.rmtree(root, ignore_errors=True)
        partial.rename(root)
    return root


def _check_grid_file(out: Path, scale: GridScale) -> None:
    """One output directory holds one scale: mixing quick and full cells would corrupt the means."""
    from dataclasses import asdict

    grid_file = out / GRID_FILE
    wanted = {"scale": asdict(scale)}
    if grid_file.exists():
        saved = read_json(grid_file)
        if saved.get("scale") != json.loads(json.dumps(wanted["scale"])):
            raise ConfigError(f"{out} holds a {saved.get('scale', {}).get('name', 'different')} grid with other "
                              f"settings; resume it with the same flags or pick another --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(grid_file, {**wanted, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                                  "machine": {"platform": platform.platform(), "processor": platform.processor(),
                                              "cpus": _cpu_count()},
                                  "versions": versions()})


def claim_setup(out: Path, file: str, wanted: dict[str, Any], what: str) -> None:
    """Record an experiment's settings in ``OUT/file``, or check a resumed one's: one output directory holds one
    setup, since mixing cells of two would corrupt every mean."""
    path = out / file
    if claim_settings(path, wanted):
        raise ConfigError(f"{out} holds a {what} with other settings ({path}); resume it with the same flags or "
                          "pick another --out")


def versions() -> dict[str, str]:
    """Library versions and the commit, recorded when a grid starts (the report quotes them)."""
    import subprocess

    import faiss
    import pandas
    import sklearn
    import torch

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent.parent).stdout.strip()
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "faiss": faiss.__version__, "scikit-learn": sklearn.__version__, "pandas": pandas.__version__,
            "commit": commit or "unknown"}


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_cell(cell: Cell, scale: GridScale, data: Path, cell_dir: Path, device: str = "cpu") -> dict[str, Any]:
    """Train one cell, evaluate it on val.bin / val_tail.bin, analyse it if asked, record it."""
    from analysis.centers import load_run
    from analysis.inputs import load_analysis_input
    from analysis.runner import AnalysisOptions, run_analyses
    from core.config import TrainConfig
    from core.data.loader import open_dataset
    from core.trainer import Trainer

    run_dir = cell_dir / "run"
    val = [str(data / name) for name in ("val.bin", "val_tail.bin") if (data / name).exists()]
    config = TrainConfig(data=str(data), val=val, epochs=scale.epochs, batch_size=scale.batch_size, seed=cell.seed,
                         out=str(run_dir), device=device, val_every=10 ** 9,
                         checkpoint_every=200).replace(**cell.arm.overrides())
    started = time.perf_counter()
    trainer = Trainer(config, run_dir, progress=False)
    if (run_dir / "checkpoint.pt").exists():
        trainer.resume(run_dir)
    metrics = trainer.fit()
    train_seconds = time.perf_counter() - started

    statistics = load_run(run_dir).statistics
    counts = np.bincount(np.asarray(open_dataset(data).labels), minlength=statistics.num_classes)
    np.savez_compressed(cell_dir / UPDATES_FILE, **{"counts": counts, **role_series(statistics)})

    result: dict[str, Any] = {**cell.describe(), "name": cell.name, "scale": scale.name,
                              "steps": trainer.step, "classes": trainer.num_classes, "images": len(trainer.dataset),
                              "train_seconds": round(train_seconds, 1),
                              **{name: value for name, value in metrics.items() if not name.startswith("_")}}
    if cell.analysed:
        started = time.perf_counter()
        inputs = load_analysis_input(run_dir, device=device, progress=False)
        analysis = run_analyses(inputs, cell_dir / "analysis", ("conflict", "noise", "longtail"),
                                AnalysisOptions(progress=False))
        summary = analysis.summary
        result["analysis"] = {task: summary[task]["ground_truth"] for task in ("noise", "conflict")
                              if "ground_truth" in summary.get(task, {})}
        result["analysis_seconds"] = round(time.perf_counter() - started, 1)
        inputs.cache_file.unlink(missing_ok=True)  # the embeddings are large and the figures are recorded
    atomic_write_json(cell_dir / RESULT_FILE, result)
    return result


def role_series(statistics: "ClassStatistics") -> dict[str, np.ndarray]:
    """The run's counters by role, whatever the method calls them: ``positive`` (steps as a positive),
    ``negative`` (steps as a negative column) and whether those moved trained weights (passive updates)."""
    series = {}
    for role in ("positive", "negative"):
        record = statistics.with_role(role)
        if record is not None:
            series[role] = statistics.series[record["name"]]
            if role == "negative":
                series["negative_updates_weights"] = np.array(bool(record["updates_weights"]))
    return series


RESULT_KEYS = ("dataset", "arm", "seed", "name")


def _check_result(path: Path, result: Any) -> None:
    """A result.json must name a cell of this grid and carry numbers where figures go."""
    def damaged(why: str) -> DataError:
        return DataError(f"{path}: not a cell result ({why}); delete it to rerun that cell")

    if not isinstance(result, dict) or any(key not in result for key in RESULT_KEYS):
        raise damaged(f"needs {', '.join(RESULT_KEYS)}")
    if result["dataset"] not in ARMS:
        raise damaged(f"dataset {result['dataset']!r} is not one of {', '.join(ARMS)}")
    if result["arm"] not in [arm.label for arm in ARMS[result["dataset"]]]:
        raise damaged(f"arm {result['arm']!r} is not an arm of the {result['dataset']} data")
    if not isinstance(result["seed"], int) or isinstance(result["seed"], bool):
        raise damaged(f"seed {result['seed']!r} is not a whole number")
    figures = [("train_seconds", result.get("train_seconds"), None)]
    for name in ("val", "val_tail"):
        block = result.get(name, {})
        if not isinstance(block, dict):
            raise damaged(f"{name} is not a table of figures")
        figures.append((f"{name}.accuracy", block.get("accuracy"), (0.0, 1.0)))
        tar = block.get("tar_at_far", {})
        for far, value in (tar.items() if isinstance(tar, dict) else [("", tar)]):
            figures.append((f"{name}.tar_at_far[{far}]", value, (0.0, 1.0)))
    for name, value, bounds in figures:
        if value is None and name != "train_seconds":  # a cell may lack a held-out set, never its timing
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise damaged(f"{name} is {value!r}, not a number")
        if bounds is not None and not bounds[0] <= value <= bounds[1]:
            raise damaged(f"{name} is {value}, outside [{bounds[0]}, {bounds[1]}]")
        if bounds is None and value < 0:
            raise damaged(f"{name} is {value}, below 0")


def load_results(out: Path) -> list[dict[str, Any]]:
    """Every finished cell's result (in directory-name order); a damaged one is an error naming its file."""
    results = []
    for path in sorted((out / "cells").glob(f"*/{RESULT_FILE}")):
        result = read_json(path)
        _check_result(path, result)
        results.append(result)
    return results


def run_unfinished(out: Path, cells: list[Any], run: Callable[[Any, Path], dict[str, Any]],
                   summary: Callable[[dict[str, Any]], str], echo: Callable[[str], None]) -> None:
    """Run each cell (anything with a ``name``) whose ``OUT/cells/NAME/result.json`` is missing, in order, echoing
    a line per cell; ``run(cell, cell_dir)`` writes that file last, so an interrupted experiment resumes."""
    for position, cell in enumerate(cells, 1):
        cell_dir = out / "cells" / cell.name
        if (cell_dir / RESULT_FILE).exists():
            echo(f"[{position}/{len(cells)}] {cell.name}: done earlier, skipped")
            continue
        cell_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        result = run(cell, cell_dir)
        echo(f"[{position}/{len(cells)}] {cell.name}: {summary(result)} ({time.perf_counter() - started:.0f} s)")


def run_grid(out: Path, scale: GridScale, device: str = "cpu",
             echo: Callable[[str], None] = print, only: Optional[int] = None) -> list[dict[str, Any]]:
    """Run every unfinished cell (the first ``only`` cells when given); return all results."""
    _check_grid_file(out, scale)
    run_unfinished(out, grid_cells(scale)[:only],
                   lambda cell, cell_dir: run_cell(cell, scale, dataset_root(out, scale, cell.dataset, cell.seed),
                                                   cell_dir, device), cell_summary, echo)
    return load_results(out)


def cell_summary(result: dict[str, Any]) -> str:
    parts = [f"{name} {result[name]['accuracy']:.4f}" for name in ("val", "val_tail") if name in result]
    for task, figures in result.get("analysis", {}).items():
        parts.append(f"{task} AP {figures['average_precision']:.3f}")
    return ", ".join(parts)
