"""Checkpoints that do not depend on the number of processes that wrote them.

A method's per-class tables (Partial FC's centers and their optimizer rows) are split
over ranks by class. Each rank writes its rows to a shard file named after the step,
then rank 0 writes ``checkpoint.pt`` with everything replicated plus a manifest of the
shards and their row ranges. ``checkpoint.pt`` is the commit point: it is renamed into
place last, so a reader never pairs it with half-written shards, and shards of older
steps are deleted only after it. Loading reassembles any row range from the shards, so
a run written by 2 processes resumes on 1, 2 or 3.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Iterable

import torch

from core.distributed import DistributedContext
from core.errors import DataError, TrainingError
from core.figures import figure_files
from core.io import atomic_torch_save
from core.method_spec import MethodSpec
from core.sampler import ClassSampler

CHECKPOINT_NAME = "checkpoint.pt"
#: The training curves' file name, less its --figure-format suffix.
TRAINING_FIGURE = "training"
#: Every file training writes into a run directory (the checkpoint's shards match SHARD_GLOB).
RUN_FILES = (CHECKPOINT_NAME, "config.yaml", "env.json", "log.csv", "metrics.json",
             *sorted(figure_files((TRAINING_FIGURE,))))
SHARD_GLOB = "sampler-step*-rank*-of-*.pt"
# 2: the method's record (name, evaluation network, class statistics by name) and a sampler state laid out
# by the method plug-ins (Partial FC's tables under ``store.``).
# 3: the position in the data in samples and the world size (a run resumes on any number of processes), and
# no flip generator (flips are keyed by each sample's position).
# Older checkpoints still evaluate, export and analyse.
CHECKPOINT_FORMAT = 3


def _shard_name(step: int, rank: int, world_size: int) -> str:
    return f"sampler-step{step:09d}-rank{rank:03d}-of-{world_size:03d}.pt"


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the one inside a run directory; a clear error when there is none."""
    from core.errors import ConfigError
    path = Path(path)
    candidate = path / CHECKPOINT_NAME if path.is_dir() else path
    if not candidate.is_file():
        raise ConfigError(f"{path}: no checkpoint found (expected {candidate})")
    return candidate


def non_finite_names(named_values: Iterable[tuple[str, Any]]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity (other values are skipped)."""
    return [name for name, value in named_values
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()]


def load_file(path: Path, map_location: Any = "cpu", **options: Any) -> Any:
    """``torch.load`` with its ``weights_only`` unpickler (tensors, numbers, strings and containers only), so a
    checkpoint or shard from anywhere cannot run code; a DataError names the file when it is truncated, not a
    checkpoint, or asks for anything else."""
    try:
        with torch.serialization.safe_globals(_numpy_data_globals()):
            return torch.load(path, map_location=map_location, weights_only=True, **options)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):  # a damaged file, not a refused one
            raise DataError(f"{path}: cannot read checkpoint (UnpicklingError: {_first_line(exc)})") from exc
        asked = next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line or "but got" in line),
                     "an object")
        raise DataError(f"{path}: refused to load: it holds more than tensors, numbers and strings ({asked}). A "
                        "checkpoint from elsewhere could run code this way; facequeue never loads one that "
                        "can") from exc
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise DataError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {_first_line(exc)})") from exc


def _numpy_data_globals() -> list[Any]:
    """The constructors of numpy arrays, scalars and dtypes: checkpoints before format 2 held numpy's RNG state
    and numpy numbers. They build data from bytes and run nothing else; an object array still needs the
    globals of its objects, which stay refused. Each is allowed under both module paths numpy has pickled
    it from (``numpy.core`` before numpy 2, ``numpy._core`` since), whichever numpy is installed."""
    import numpy as np

    from core.data.verification_bin import NUMPY_RECONSTRUCT, NUMPY_SCALAR

    allowed: list[Any] = [np.ndarray, np.dtype]
    allowed += [type(np.dtype(kind)) for kind in (np.uint32, np.int64, np.float64, np.float32, np.bool_)]
    for function, name in ((NUMPY_RECONSTRUCT, "_reconstruct"), (NUMPY_SCALAR, "scalar")):
        allowed += [(function, f"{module}.multiarray.{name}") for module in ("numpy.core", "numpy._core")]
    return allowed


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


def read_checkpoint(run: str | Path, map_location: Any = "cpu") -> tuple[Path, dict[str, Any]]:
    """A run's (or a checkpoint file's) path and state, checked to be one of this project's checkpoints."""
    checkpoint = find_checkpoint(run)
    state = load_file(checkpoint, map_location)
    if not isinstance(state, dict) or "config" not in state or "eval_backbone" not in state:
        raise DataError(f"{checkpoint}: not a facequeue training checkpoint (no config / eval_backbone)")
    return checkpoint, state


def method_record(spec: MethodSpec, sampler: ClassSampler) -> dict[str, Any]:
    """What a checkpoint says about its method, so that reading it needs no registry: its name, the network
    evaluation uses, and each per-class statistic by name, with the sampler state key that holds it."""
    keys = {id(tensor): key for key, tensor in sampler.state_dict(keep_vars=True).items()}
    recorded = sampler.class_statistics()
    statistics = []
    for statistic in spec.statistics:
        tensor = recorded.get(statistic.name)
        if tensor is None or id(tensor) not in keys:
            raise TrainingError(f"method {spec.name}: its spec names the statistic {statistic.name!r}, but the "
                                "sampler's class_statistics() does not return it as a tensor of its state_dict")
        statistics.append({"name": statistic.name, "key": keys[id(tensor)], "meaning": statistic.meaning,
                           "role": statistic.role, "updates_weights": statistic.updates_weights})
    return {"name": spec.name, "title": spec.title, "evaluation_network": spec.evaluation_network,
            "class_statistics": statistics}


def check_resumable(checkpoint: Path, state: dict[str, Any]) -> None:
    """Only a checkpoint of this format carries the state a resumed run loads."""
    if state.get("format") != CHECKPOINT_FORMAT:
        raise DataError(f"{checkpoint}: written by an earlier facequeue (checkpoint format "
                        f"{state.get('format', 1)}, this one reads {CHECKPOINT_FORMAT}); it still evaluates and "
                        "exports, but training cannot resume from it")


def save_checkpoint(run_dir: Path, state: dict[str, Any], sampler: ClassSampler, step: int,
                    context: DistributedContext) -> Path:
    """Write shards (every rank) then ``checkpoint.pt`` (rank 0); ``state`` lacks the sampler."""
    sampler_state = sampler.state_dict()
    sharded = {name: sampler_state.pop(name) for name in sampler.sharded_state_names()}
    start, count = sampler.shard_range()
    if sharded:
        shard_file = _shard_name(step, context.rank, context.world_size)
        atomic_torch_save({"start": start, "count": count, "step": step, "tensors": sharded}, run_dir / shard_file)
    ranges = _gather_ranges(start, count, context) if sharded else []
    context.barrier()
    path = run_dir / CHECKPOINT_NAME
    if context.is_main:
        manifest = {"names": sorted(sharded), "shards": [
            {"file": _shard_name(step, rank, context.world_size), "start": s, "count": c}
            for rank, (s, c) in enumerate(ranges)]}
        atomic_torch_save({**state, "sampler": sampler_state, "sampler_shards": manifest}, path)
        keep = {shard["file"] for shard in manifest["shards"]}
        for old in run_dir.glob(SHARD_GLOB):
            if old.name not in keep:
                old.unlink()
    context.barrier()
    return path


def _gather_ranges(start: int, count: int, context: DistributedContext) -> list[tuple[int, int]]:
    if not context.enabled:
        return [(start, count)]
    import torch.distributed as dist
    ranges: list[Any] = [None] * context.world_size
    dist.all_gather_object(ranges, (start, count))
    return ranges


def read_rows(run_dir: Path, state: dict[str, Any], name: str, start: int, count: int) -> torch.Tensor:
    """Rows ``start .. start+count`` of the logical table ``name``, from whichever shards hold them."""
    manifest = state["sampler_shards"]
    parts = []
    for shard in manifest["shards"]:
        lo, hi = max(start, shard["start"]), min(start + count, shard["start"] + shard["count"])
        if lo >= hi:
            continue
        path = run_dir / shard["file"]
        if not path.is_file():
            raise DataError(f"{run_dir / CHECKPOINT_NAME}: its shard {path} is missing")
        content = load_file(path, mmap=True)
        if content.get("step", state["step"]) != state["step"]:  # a shard of another step renamed into place
            raise DataError(f"{path}: holds step {content['step']}, but {run_dir / CHECKPOINT_NAME} is step "
                            f"{state['step']}; the shards of a checkpoint cannot come from another one")
        parts.append(content["tensors"][name][lo - shard["start"]:hi - shard["start"]].clone())
    table = torch.cat(parts) if parts else torch.empty(0)
    if table.shape[0] != count:
        raise DataError(f"{run_dir / CHECKPOINT_NAME}: shards hold {table.shape[0]} of rows {start}..{start + count}"
                        f" of {name}")
    return table


def sampler_state_for(run_dir: Path, state: dict[str, Any], start: int, count: int) -> dict[str, Any]:
    """The sampler state_dict for a rank owning rows ``start .. start+count`` (any world size)."""
    sampler_state = dict(state["sampler"])
    for name in state["sampler_shards"]["names"]:
        sampler_state[name] = read_rows(run_dir, state, name, start, count)
    return sampler_state
