"""The network to evaluate, embed with, export or start from: a run's, or bare weights from anywhere.

A MODEL argument is a run directory, a run's ``checkpoint.pt``, or a plain
``state_dict`` file as insightface saves its ``backbone.pth`` (a ``"module."`` prefix
from DistributedDataParallel and a ``{"state_dict": ...}`` wrapper are accepted).
Bare weights say nothing of their network, so they come with ``--backbone NAME``; the
embedding size is read off the weights and the input size is the backbone's default
unless ``--input-size`` says otherwise. Every file is read with the weights-only
unpickler (``core.checkpoint.load_file``): weights from anywhere cannot run code.

Only the backbone is built (a run's ``eval_backbone``: the network its method is
evaluated with, e.g. DCQ's momentum encoder), so loading a run does not rebuild a
center store of millions of classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from core.backbones import available_backbones, build_backbone, default_input_size
from core.checkpoint import find_checkpoint, load_file, non_finite_names
from core.errors import ConfigError, DataError, FaceQueueError


@dataclass
class LoadedModel:
    """A network in eval mode, with what using it needs."""

    network: nn.Module
    backbone: str
    embedding_size: int
    input_size: int
    path: Path  # the checkpoint or weights file read
    run_state: Optional[dict[str, Any]] = None  # the run's checkpoint, None for bare weights


def evaluation_network(state: dict[str, Any]) -> str:
    """What the run is evaluated with: its checkpoint's record, or (older checkpoints) its method's spec."""
    record = state.get("method")
    if isinstance(record, dict) and "evaluation_network" in record:
        return record["evaluation_network"]
    from core.methods import get_method
    return get_method(state["config"].get("method")).evaluation_network


def is_run_checkpoint(state: Any) -> bool:
    return isinstance(state, dict) and "config" in state and "eval_backbone" in state


def load_model(source: str | Path, device: torch.device, backbone: Optional[str] = None,
               embedding_size: Optional[int] = None, input_size: Optional[int] = None,
               online: bool = False) -> LoadedModel:
    """The network of a run (its evaluation network, or with ``online`` its online backbone) or of bare weights.

    ``backbone``, ``embedding_size`` and ``input_size`` describe bare weights; given with a
    run they must agree with it (a run knows its network, and a contradiction is a mistake).
    """
    path, state = read_model_file(source)
    if is_run_checkpoint(state):
        model = _run_model(path, state, online, backbone, embedding_size, input_size)
    else:
        if online:
            raise ConfigError(f"--online: {path} holds bare weights, one network; --online picks a run's online "
                              "backbone")
        model = bare_model(path, state, backbone, embedding_size, input_size)
    broken = non_finite_names(model.network.state_dict().items())
    if broken:  # every embedding would be NaN; say so here, naming the file, not at the first metric
        raise DataError(f"{path}: non-finite weights in {', '.join(broken[:3])}"
                        + (f" and {len(broken) - 3} more" if len(broken) > 3 else ""))
    model.network.to(device).eval()
    return model


def read_model_file(source: str | Path) -> tuple[Path, Any]:
    """The file a MODEL names (a run directory's checkpoint, or the file itself) and what it holds."""
    path = find_checkpoint(source) if Path(source).is_dir() else Path(source)
    if not path.is_file():
        raise ConfigError(f"{source}: no such file (expected a run directory, a checkpoint or a state_dict file)")
    return path, load_file(path, "cpu")


def start_weights(source: str | Path, backbone: str, embedding_size: int, input_size: int) -> dict[str, torch.Tensor]:
    """``train --init``: the backbone weights of a run or of bare weights, for a new run of ``backbone`` with
    ``embedding_size`` and ``input_size``; a run of another network is named with the flags that would fit it."""
    path, state = read_model_file(source)
    if not is_run_checkpoint(state):
        return bare_model(path, state, backbone, embedding_size, input_size).network.state_dict()
    model = _run_model(path, state, False, None, None, None)
    wanted, has = (backbone, embedding_size, input_size), (model.backbone, model.embedding_size, model.input_size)
    if wanted != has:
        raise ConfigError(f"--init {source}: its network is {has[0]} ({has[1]}-d, input {has[2]}), this run trains "
                          f"{wanted[0]} ({wanted[1]}-d, input {wanted[2]}); give --backbone {has[0]} --embedding-size "
                          f"{has[1]} --input-size {has[2]} to start from it")
    return model.network.state_dict()


def check_run_flags(path: Path, state: dict[str, Any], backbone: Optional[str], embedding_size: Optional[int],
                    input_size: Optional[int]) -> None:
    """Flags that describe bare weights may be given with a run only where they agree with it."""
    config = state["config"]
    described = {"--backbone": (backbone, config["backbone"]), "--embedding-size": (embedding_size,
                 config["embedding_size"]), "--input-size": (input_size, state["input_size"])}
    contradicted = [f"{flag} {given} (the run has {had})" for flag, (given, had) in described.items()
                    if given is not None and given != had]
    if contradicted:
        raise ConfigError(f"{path}: a run knows its network; {'; '.join(contradicted)}. Leave these flags out for a "
                          "run (they describe bare weights)")


def _run_model(path: Path, state: dict[str, Any], online: bool, backbone: Optional[str],
               embedding_size: Optional[int], input_size: Optional[int]) -> LoadedModel:
    config = state["config"]
    if evaluation_network(state) == "backbone" and online:
        raise ConfigError(f"--online: {path} is a {config.get('method')} run, whose only encoder is the one "
                          "evaluated; --online picks the online backbone of a method evaluated with another network "
                          "(DCQ's momentum encoder)")
    check_run_flags(path, state, backbone, embedding_size, input_size)
    weights = state["backbone" if online else "eval_backbone"]
    network = fit_weights(path, weights, config["backbone"], config["embedding_size"], state["input_size"])
    return LoadedModel(network, config["backbone"], config["embedding_size"], state["input_size"], path, state)


def bare_model(path: Path, state: Any, backbone: Optional[str], embedding_size: Optional[int],
               input_size: Optional[int]) -> LoadedModel:
    """The network of bare weights ``state`` read from ``path``, described by the flags given."""
    weights = bare_weights(path, state)
    if backbone is None:
        raise ConfigError(f"{path}: bare weights (a state_dict) do not name their network; give --backbone NAME "
                          f"(one of {', '.join(available_backbones())})")
    embedding_size = embedding_size or embedding_size_of(weights, path)
    input_size = input_size or default_input_size(backbone)
    network = fit_weights(path, weights, backbone, embedding_size, input_size)
    return LoadedModel(network, backbone, embedding_size, input_size, path)


def bare_weights(path: Path, state: Any) -> dict[str, torch.Tensor]:
    """A state_dict's tensors by name: unwrapped from ``{"state_dict": ...}`` and without DDP's ``module.``."""
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(
            isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()):
        raise DataError(f"{path}: neither a facequeue run checkpoint nor a state_dict (a mapping of parameter names "
                        "to tensors)")
    if all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return state


def embedding_size_of(weights: dict[str, torch.Tensor], path: Path) -> int:
    """The embedding size of a backbone's weights: the output size of its last linear layer (insightface's ``fc``,
    MobileFaceNet's ``features`` linear)."""
    linear = [value for value in weights.values() if value.ndim == 2]
    if not linear:
        raise DataError(f"{path}: no linear layer among its weights to read the embedding size from; give "
                        "--embedding-size")
    return int(linear[-1].shape[0])


def fit_weights(path: Path, weights: dict[str, torch.Tensor], backbone: str, embedding_size: int,
                input_size: int) -> nn.Module:
    """``backbone`` built for ``embedding_size`` and ``input_size`` with ``weights`` loaded strictly; a mismatch is
    one line naming the file, the network and the keys or shapes that differ."""
    try:
        network = build_backbone(backbone, embedding_size, input_size)
    except FaceQueueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    expected = network.state_dict()
    missing = [key for key in expected if key not in weights]
    unexpected = [key for key in weights if key not in expected]
    reshaped = [f"{key} is {list(weights[key].shape)} in the file but {list(value.shape)} in the network"
                for key, value in expected.items() if key in weights and weights[key].shape != value.shape]
    if missing or unexpected or reshaped:
        problems = []
        if missing:
            problems.append(f"{len(missing)} key(s) missing (first: {', '.join(missing[:3])})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected key(s) (first: {', '.join(unexpected[:3])})")
        problems += reshaped[:3]
        hint = (" (another --input-size or --embedding-size?)" if reshaped and not (missing or unexpected)
                else " (another --backbone?)")
        raise DataError(f"{path}: its weights do not fit {backbone} (embedding {embedding_size}, input "
                        f"{input_size}): {'; '.join(problems)}{hint}")
    try:
        network.load_state_dict(weights)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: its weights do not fit {backbone}: {' '.join(str(exc).split())[:240]}") from exc
    return network
