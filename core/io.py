"""Atomic file writes: a reader (or a crash) never sees a half-written file.

Everything a run produces that a later step reads back (checkpoints, configs, metrics,
reports) goes through a temporary name in the same directory and ``os.replace``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is synced and renamed over ``path``.

    The temporary file is created by the caller with normal permissions (the umask's),
    unlike ``mkstemp``'s owner-only ones, so shared datasets and reports stay readable.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def staging_folder(parent: str | Path, prefix: str) -> Iterator[Path]:
    """A fresh hidden folder inside ``parent`` for outputs that are moved into place only once all are written;
    it is removed afterwards with whatever was not moved out (everything, when the work failed)."""
    Path(parent).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def plain(value: Any) -> Any:
    """``value`` with numpy numbers and arrays (and paths) turned into Python's own types, as JSON holds them:
    for JSON files, and for checkpoints that ``torch.load``'s ``weights_only`` unpickler must accept."""
    return json.loads(json.dumps(value, default=_plain_default))


def _plain_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def read_json(path: str | Path) -> Any:
    """A JSON file's value, or a DataError naming the file when it is missing, truncated or not JSON."""
    from core.errors import DataError

    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read JSON ({type(exc).__name__}: {exc})") from exc
