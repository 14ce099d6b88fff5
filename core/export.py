"""Writing a network for deployment or insightface's tools: a state_dict, or ONNX checked against onnxruntime.

The network is any MODEL (``core.models.load_model``): a run's evaluation network, or
bare weights. An export never replaces one of a run's own files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from core.checkpoint import RUN_FILES, SHARD_GLOB
from core.errors import ConfigError, DataError
from core.models import load_model


EXPORT_FORMATS = ("state_dict", "onnx")
# onnxruntime's CPU provider runs every opset up to 21; 18 is the oldest that torch's exporter writes natively.
ONNX_OPSET = 18
# The largest |difference| between onnxruntime's embeddings and PyTorch's that an ONNX export may show.
ONNX_TOLERANCE = 1e-4


@dataclass
class ExportResult:
    """What was written, and what loading it needs."""

    path: Path
    export_format: str
    backbone: str
    embedding_size: int
    input_size: int
    onnx_max_difference: Optional[float] = None  # onnxruntime against PyTorch, on a fresh batch


def export_format_for(out: str | Path, export_format: Optional[str]) -> str:
    """The format asked for, or the one ``out``'s suffix names (``.onnx``: ONNX; otherwise a state_dict). A
    suffix that names another format than the one asked for is refused: the file would lie about its content."""
    named = "onnx" if Path(out).suffix.lower() == ".onnx" else None
    if export_format is None:
        return named or "state_dict"
    if export_format not in EXPORT_FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, got {export_format!r}")
    if named is not None and export_format != named:
        raise ConfigError(f"--out {out} with --format {export_format}: an .onnx file would hold a PyTorch "
                          "state_dict; give --format onnx, or another name (model.pt)")
    return export_format


def export_backbone(model_source: str | Path, out: str | Path, export_format: Optional[str] = None,
                    online: bool = False, backbone: Optional[str] = None, embedding_size: Optional[int] = None,
                    input_size: Optional[int] = None) -> ExportResult:
    """Write a MODEL's network as an insightface-style state_dict or as ONNX, atomically.

    ``out`` may not be one of a run's own files: replacing its checkpoint with an export
    would leave a run that can be neither resumed nor evaluated. An ONNX file is checked
    against onnxruntime before it is kept (see ``write_onnx``).
    """
    from core.io import atomic_path

    export_format = export_format_for(out, export_format)
    target = Path(out)
    if not target.name or str(out).endswith(("/", "\\")):
        raise ConfigError(f"--out {out!r}: a file name is needed (for example model.pt)")
    model = load_model(model_source, torch.device("cpu"), backbone, embedding_size, input_size, online)
    resolved = target.resolve()
    if model.run_state is not None and resolved.parent == model.path.parent.resolve() and (
            resolved.name in RUN_FILES or resolved.match(SHARD_GLOB)):
        raise ConfigError(f"--out {out}: that is a file of the run {model.path.parent} itself; export elsewhere "
                          "(for example model.pt)")
    if resolved == model.path.resolve():
        raise ConfigError(f"--out {out}: that is the file being exported; export elsewhere")
    result = ExportResult(target, export_format, model.backbone, model.embedding_size, model.input_size)
    try:
        with atomic_path(out) as tmp:
            if export_format == "state_dict":
                torch.save(model.network.state_dict(), tmp)
            else:
                result.onnx_max_difference = write_onnx(model.network, model.input_size, Path(tmp))
    except RuntimeError as exc:  # torch's file writer reports an unwritable path as a RuntimeError
        raise DataError(f"--out {out}: cannot write it ({' '.join(str(exc).split())[:240]})") from exc
    return result


def write_onnx(model: nn.Module, input_size: int, path: Path) -> float:
    """ONNX with a dynamic batch (input ``input``, output ``embedding``), then run by onnxruntime on a batch of
    another size than the one exported with: returns the largest |difference| from PyTorch's embeddings, and
    refuses the file when it exceeds ONNX_TOLERANCE."""
    import logging
    import warnings

    import onnxruntime

    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # it lists the torchvision operators it skips, which no backbone uses
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's own deprecation notices, about its internals
            torch.onnx.export(model, (torch.zeros(2, 3, input_size, input_size),), str(path), dynamo=True,
                              opset_version=ONNX_OPSET, input_names=["input"], output_names=["embedding"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    finally:
        exporter_log.setLevel(level)
    images = torch.randn(3, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(images).numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    produced = session.run(["embedding"], {"input": images.numpy()})[0]
    difference = float(abs(produced - expected).max())
    if not difference <= ONNX_TOLERANCE:
        raise DataError(f"the ONNX export differs from the PyTorch network by up to {difference:.2e} under "
                        f"onnxruntime (more than {ONNX_TOLERANCE:g}); it was not written")
    return difference


def loading_hint(result: ExportResult) -> str:
    """Python that loads the exported file as printed (run from this project's root for a state_dict)."""
    path = repr(str(result.path))
    if result.export_format == "onnx":
        return (f"import onnxruntime; session = onnxruntime.InferenceSession({path}); "
                "embeddings = session.run(['embedding'], {'input': images})[0]")
    return (f"import torch; from core.backbones import build_backbone; model = build_backbone("
            f"{result.backbone!r}, {result.embedding_size}, {result.input_size}); "
            f"model.load_state_dict(torch.load({path}, weights_only=True)); model.eval()")
