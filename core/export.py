"""Loading a trained network back from a run for evaluation, analysis and export.

Only the backbone is read (``eval_backbone``: the network the method is evaluated with,
e.g. DCQ's momentum encoder, or the backbone itself), so evaluating a run does not
rebuild a center store of millions of classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

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


def export_backbone(run: str | Path, out: str | Path, export_format: Optional[str] = None,
                    online: bool = False) -> ExportResult:
    """Write the evaluation network as an insightface-style state_dict or as ONNX, atomically.

    ``out`` may not be one of the run's own files: replacing its checkpoint with an export
    would leave a run that can be neither resumed nor evaluated. An ONNX file is checked
    against onnxruntime before it is kept (see ``write_onnx``).
    """
    from core.io import atomic_path

    export_format = export_format_for(out, export_format)
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
    result = ExportResult(target, export_format, state["config"]["backbone"], state["config"]["embedding_size"],
                          input_size)
    try:
        with atomic_path(out) as tmp:
            if export_format == "state_dict":
                torch.save(model.state_dict(), tmp)
            else:
                result.onnx_max_difference = write_onnx(model, input_size, Path(tmp))
    except RuntimeError as exc:  # torch's file writer reports an unwritable path as a RuntimeError
        raise DataError(f"--out {out}: cannot write it ({_first_words(exc)})") from exc
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


def _first_words(exc: BaseException, limit: int = 240) -> str:
    """A multi-line torch message as one line of bounded length."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def loading_hint(result: ExportResult) -> str:
    """Python that loads the exported file as printed (run from this project's root for a state_dict)."""
    path = repr(str(result.path))
    if result.export_format == "onnx":
        return (f"import onnxruntime; session = onnxruntime.InferenceSession({path}); "
                "embeddings = session.run(['embedding'], {'input': images})[0]")
    return (f"import torch; from core.backbones import build_backbone; model = build_backbone("
            f"{result.backbone!r}, {result.embedding_size}, {result.input_size}); "
            f"model.load_state_dict(torch.load({path}, weights_only=True)); model.eval()")
