"""Loading a trained network back from a run for evaluation, analysis and export.

Only the backbone is read (``eval_backbone``: the network the method is evaluated with,
e.g. DCQ's momentum encoder, or the backbone itself), so evaluating a run does not
rebuild a center store of millions of classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.backbones import build_backbone
from core.checkpoint import RUN_FILES, SHARD_GLOB, non_finite_names, read_checkpoint
from core.errors import ConfigError, DataError, FaceQueueError



def evaluation_network(state: dict[str, Any]) -> str:
    """What the run is evaluated with: its checkpoint's record, or (older checkpoints) its method's spec."""
    record = state.get("method")
    if isinstance(record, dict) and "evaluation_network" in record:
        return record["evaluation_network"]
    from core.methods import get_method
    return get_method(state["config"].get("method")).evaluation_network


def _build(checkpoint: Path, state: dict[str, Any], device: torch.device, online: bool) -> tuple[nn.Module, int]:
    config = state["config"]
    network = evaluation_network(state)
    if online and network == "backbone":
        raise ConfigError(f"--online: {checkpoint} is a {config.get('method')} run, whose only encoder is the one "
                          "evaluated; --online picks the online backbone of a method evaluated with another network "
                          "(DCQ's momentum encoder)")
    try:
        model = build_backbone(config["backbone"], config["embedding_size"], state["input_size"])
        model.load_state_dict(state["backbone" if online else "eval_backbone"])
    except (FaceQueueError, KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise DataError(f"{checkpoint}: its weights do not fit the network its config describes "
                        f"({_first_words(exc)})") from exc
    broken = non_finite_names(model.state_dict().items())
    if broken:  # every embedding would be NaN; say so here, naming the file, not at the first metric
        raise DataError(f"{checkpoint}: non-finite weights in {', '.join(broken[:3])}"
                        + (f" and {len(broken) - 3} more" if len(broken) > 3 else ""))
    return model.to(device).eval(), state["input_size"]


def load_evaluation_backbone(run: str | Path, device: torch.device, online: bool = False) -> tuple[nn.Module, int]:
    """The network a run is evaluated with, in eval mode, and its input size."""
    checkpoint, state = read_checkpoint(run, device)
    return _build(checkpoint, state, device, online)


def export_backbone(run: str | Path, out: str | Path, fmt: str = "state_dict", online: bool = False) -> int:
    """Write the evaluation network as a plain state_dict or a traced TorchScript module (atomically).

    ``out`` may not be one of the run's own files: replacing its checkpoint with an export
    would leave a run that can be neither resumed nor evaluated.
    """
    from core.io import atomic_path

    checkpoint, state = read_checkpoint(run, "cpu")
    target = Path(out)
    if not target.name or str(out).endswith(("/", "\\")):
        raise ConfigError(f"--out {out!r}: a file name is needed (for example model.pt)")
    resolved = target.resolve()
    if resolved.parent == checkpoint.parent.resolve() and (
            resolved.name in RUN_FILES or resolved.match(SHARD_GLOB)):
        raise ConfigError(f"--out {out}: that is a file of the run {checkpoint.parent} itself; export elsewhere "
                          "(for example model.pt)")
    model, input_size = _build(checkpoint, state, torch.device("cpu"), online)
    try:
        with atomic_path(out) as tmp:
            if fmt == "state_dict":
                torch.save(model.state_dict(), tmp)
            else:
                example = torch.zeros(1, 3, input_size, input_size)
                torch.jit.save(torch.jit.trace(model, example), str(tmp))
    except RuntimeError as exc:  # torch's file writer reports an unwritable path as a RuntimeError
        raise DataError(f"--out {out}: cannot write it ({_first_words(exc)})") from exc
    return input_size


def _first_words(exc: BaseException, limit: int = 240) -> str:
    """A multi-line torch message as one line of bounded length."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
