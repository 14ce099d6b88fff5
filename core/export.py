"""Loading a trained network back from a run for evaluation, analysis and export.

Only the backbone is read (``eval_backbone``: DCQ's momentum encoder, or the backbone
itself), so evaluating a run does not rebuild a center store of millions of classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.backbones import build_backbone
from core.checkpoint import read_checkpoint


def load_checkpoint(run: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    return read_checkpoint(run, device)[1]


def load_evaluation_backbone(run: str | Path, device: torch.device, online: bool = False) -> tuple[nn.Module, int]:
    """The network a run is evaluated with, in eval mode, and its input size."""
    state = load_checkpoint(run, device)
    config = state["config"]
    model = build_backbone(config["backbone"], config["embedding_size"], state["input_size"])
    model.load_state_dict(state["backbone" if online else "eval_backbone"])
    return model.to(device).eval(), state["input_size"]


def export_backbone(run: str | Path, out: str | Path, fmt: str = "state_dict", online: bool = False) -> int:
    """Write the evaluation network as a plain state_dict or a traced TorchScript module (atomically)."""
    from core.io import atomic_path

    model, input_size = load_evaluation_backbone(run, torch.device("cpu"), online=online)
    with atomic_path(out) as tmp:
        if fmt == "state_dict":
            torch.save(model.state_dict(), tmp)
        else:
            example = torch.zeros(1, 3, input_size, input_size)
            torch.jit.save(torch.jit.trace(model, example), str(tmp))
    return input_size
