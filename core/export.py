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
from core.checkpoint import find_checkpoint


def load_checkpoint(run: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    return torch.load(find_checkpoint(run), map_location=device, weights_only=False)


def load_evaluation_backbone(run: str | Path, device: torch.device, online: bool = False) -> tuple[nn.Module, int]:
    """The network a run is evaluated with, in eval mode, and its input size."""
    state = load_checkpoint(run, device)
    config = state["config"]
    model = build_backbone(config["backbone"], config["embedding_size"], state["input_size"])
    model.load_state_dict(state["backbone" if online else "eval_backbone"])
    return model.to(device).eval(), state["input_size"]
