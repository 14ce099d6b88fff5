"""Atomic file writes: a reader (or a crash) never sees a half-written file.

Everything a run produces that a later step reads back (checkpoints, configs, metrics,
reports) goes through a temporary name in the same directory and ``os.replace``.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import torch


#: The temporary names ``atomic_path`` writes to: ``.NAME.PID.HEX.tmp`` beside the final name.
TEMPORARY_NAME = re.compile(r"^\..+\.\d+\.[0-9a-f]{8}\.tmp$")
#: The file ``exclusive_directory`` locks.
LOCK_NAME = ".lock"


@contextmanager
def atomic_path(path: str | Path, expected_bytes: Optional[int] = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is synced and renamed over ``path``.

    The temporary file is created by the caller with normal permissions (the umask's),
    unlike ``mkstemp``'s owner-only ones, so shared datasets and reports stay readable.
    A full disk is a DataError naming the file and the space left (``expected_bytes``: what
    the file needs, when known); the temporary file is removed and ``path`` keeps its old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        from core.errors import DataError

        free = shutil.disk_usage(path.parent).free
        if _out_of_space(exc, free, expected_bytes):
            needs = f"; it needs about {_megabytes(expected_bytes)}" if expected_bytes else ""
            raise DataError(f"{path}: cannot be written: no space left on its device ({_megabytes(free)} free"
                            f"{needs}). Its previous version, if any, is intact") from exc
        if isinstance(exc, RuntimeError) and "write failed" in str(exc):  # torch's writer, any other I/O error
            raise DataError(f"{path}: cannot be written ({str(exc).strip().splitlines()[0]}). Its previous "
                            "version, if any, is intact") from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _out_of_space(exc: BaseException, free: int, expected_bytes: Optional[int]) -> bool:
    """ENOSPC, as the OS raises it, or as torch's file writer reports it: a RuntimeError without an errno,
    "file write failed" for any failed write, so counted as a full disk only when the space left is too small."""
    if isinstance(exc, OSError):
        return exc.errno == errno.ENOSPC
    if "No space left" in str(exc):
        return True
    return "file write failed" in str(exc) and free < max(expected_bytes or 0, 1 << 20)


def _megabytes(size: int) -> str:
    return f"{size / 2**20:,.1f} MB"


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete the temporary files a killed writer left in ``directory`` (a checkpoint's can be gigabytes).

    Call it only while no other process writes there (see ``exclusive_directory``).
    """
    removed = [entry for entry in Path(directory).iterdir() if TEMPORARY_NAME.match(entry.name) and entry.is_file()]
    for entry in removed:
        entry.unlink(missing_ok=True)
    return removed


@contextmanager
def exclusive_directory(directory: str | Path, what: str = "--out") -> Iterator[None]:
    """Hold an advisory lock on ``directory`` for the block: a second writer is refused at once, naming the holder.

    The lock is ``flock`` on ``DIR/.lock`` (released by the kernel when the holder dies, so a
    killed run never leaves it taken); the file says who holds it.
    """
    import fcntl
    import socket
    import time

    from core.errors import ConfigError

    lock_path = Path(directory) / LOCK_NAME
    handle = open(lock_path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ConfigError(f"{what} {directory}: another training is writing into it ({holder}); wait for it to "
                              "end, or give another directory") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


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
    with atomic_path(path, expected_bytes=_tensor_bytes(obj)) as tmp:
        torch.save(obj, tmp)


def _tensor_bytes(value: Any) -> int:
    """The bytes of every tensor in a nest of dicts, lists and tuples: about what saving it takes."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(item) for item in value)
    return 0


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


def claim_settings(path: str | Path, wanted: dict[str, Any]) -> list[str]:
    """Record the settings a resumable output was begun with in ``path`` (JSON), or compare a resumed call's with
    them: the keys whose values differ, empty when they match or were just recorded. The caller refuses to mix."""
    path = Path(path)
    wanted = plain(wanted)
    if path.is_file():
        stored = read_json(path)
        return sorted(key for key in wanted.keys() | stored.keys() if stored.get(key) != wanted.get(key))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, wanted)
    return []


def read_json(path: str | Path) -> Any:
    """A JSON file's value, or a DataError naming the file when it is missing, truncated or not JSON."""
    from core.errors import DataError

    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read JSON ({type(exc).__name__}: {exc})") from exc
