"""The two layouts people bring their own faces in: a folder per identity, or a list file.

Both give the same FaceDataset contract as the packed .rec reader, so samplers and
analysis never care where images came from. Labels are always remapped to 0..C-1 (the
softmax and the samplers index classes densely) while ``class_names`` keeps the way back
to the user's identities for reports. ``write_list`` closes the loop for cleaning: the
analysis tools drop or relabel samples and write a list that ``ListDataset`` reads back
as training data.
"""

from __future__ import annotations

import operator
import os
import re
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from core.data.base import FaceDataset, decode_image
from core.errors import DataError
from core.io import atomic_write_text

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp"})


def _read_image_file(path: str) -> np.ndarray:
    try:
        with open(path, "rb") as handle:
            encoded = handle.read()
    except FileNotFoundError as exc:
        raise DataError(f"{path}: image file not found") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read image file ({exc.strerror or exc})") from exc
    return decode_image(encoded, path)


# A list entry naming one record of a RecordIO file, as cleaned .rec data is written:
# cleaning rewrites an index of references, never the images (TFace's convention).
_RECORD_REFERENCE = re.compile(r"^(?P<rec>.+\.rec)#(?P<key>\d+)$")


def record_reference(entry: str) -> Optional[tuple[str, int]]:
    """``(rec file, key)`` of a ``file.rec#KEY`` list entry; None for an image path."""
    match = _RECORD_REFERENCE.match(str(entry))
    return None if match is None else (match["rec"], int(match["key"]))


class _PathDataset(FaceDataset):
    """Shared storage for datasets whose samples are image files (or ``file.rec#KEY`` records)."""

    paths: list[str]
    class_names: list[str]

    def load_image(self, index: int) -> np.ndarray:
        path = self.paths[index]
        reference = record_reference(path)
        if reference is None:
            return _read_image_file(path)
        from core.data.recordio import RecordIOReader, unpack_record
        readers = self.__dict__.setdefault("_readers", {})
        rec, key = reference
        if rec not in readers:
            readers[rec] = RecordIOReader(rec, str(Path(rec).with_suffix(".idx")))
        where = f"{rec} record {key}"
        _, payload = unpack_record(readers[rec].read(key), where)
        return decode_image(payload, where)

    def source_of(self, index: int) -> dict:
        reference = record_reference(self.paths[index])
        if reference is not None:
            return {"record": reference[1], "path": self.paths[index]}
        return {"path": self.paths[index]}


class FolderDataset(_PathDataset):
    """One sub-directory per identity (sorted by name), its images sorted by file name.

    Sorting makes the label of an identity a function of the directory listing alone, so
    the same folder gives the same labels on every machine and file system. Hidden
    entries (``.ipynb_checkpoints``, ``.DS_Store``) are ignored; an identity directory with
    no images is an error, because a class with no samples would still occupy a softmax
    column and skew every per-class statistic.
    """

    def __init__(
        self,
        root: str | Path,
        transform: Optional[Callable[[np.ndarray], torch.Tensor]] = None,
    ) -> None:
        root_dir = Path(root).expanduser().absolute()
        if not root_dir.exists():
            raise DataError(f"{root_dir}: dataset folder does not exist")
        if not root_dir.is_dir():
            raise DataError(f"{root_dir}: expected a folder with one sub-folder per identity")
        identities = sorted(
            entry.name for entry in os.scandir(root_dir) if entry.is_dir() and not entry.name.startswith(".")
        )
        if not identities:
            raise DataError(f"{root_dir}: no identity sub-folders found (expected one folder per identity)")

        paths: list[str] = []
        labels: list[int] = []
        for label, name in enumerate(identities):
            identity_dir = root_dir / name
            files = sorted(
                entry.name
                for entry in os.scandir(identity_dir)
                if entry.is_file()
                and not entry.name.startswith(".")
                and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
            )
            if not files:
                raise DataError(
                    f"{identity_dir}: identity folder has no images "
                    f"(expected {', '.join(sorted(IMAGE_EXTENSIONS))})"
                )
            paths.extend(str(identity_dir / file) for file in files)
            labels.extend([label] * len(files))

        self.root = str(root_dir)
        self.paths = paths
        self.class_names = identities
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = len(identities)
        self.transform = transform


class ListDataset(_PathDataset):
    """A text file of ``path label`` lines; relative paths resolve against the list's folder.

    The label is the last whitespace-separated token, so paths with spaces survive.
    Labels may be any strings; when all are integers they are ordered numerically (so
    ``2`` comes before ``10`` and an already dense 0..C-1 labelling is kept as is),
    otherwise lexicographically. Resolving against the list's folder, not the working
    directory, lets a list travel with its images.
    """

    def __init__(
        self,
        list_path: str | Path,
        transform: Optional[Callable[[np.ndarray], torch.Tensor]] = None,
    ) -> None:
        list_file = Path(list_path).expanduser().absolute()
        if not list_file.exists():
            raise DataError(f"{list_file}: list file does not exist")
        if not list_file.is_file():
            raise DataError(f"{list_file}: expected a text file of 'path label' lines")
        try:
            text = list_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{list_file}: cannot read list file ({exc})") from exc

        base_dir = list_file.parent
        paths: list[str] = []
        raw_labels: list[str] = []
        for line_number, line in enumerate(text.splitlines(), start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            parts = stripped.rsplit(maxsplit=1)
            if len(parts) != 2:
                raise DataError(f"{list_file}:{line_number}: expected 'path label', got {stripped!r}")
            path, label = parts[0].strip(), parts[1]
            paths.append(path if os.path.isabs(path) else str(base_dir / path))
            raw_labels.append(label)
        if not paths:
            raise DataError(f"{list_file}: list file has no 'path label' lines")

        try:
            keys: list = [int(label) for label in raw_labels]
        except ValueError:
            keys = raw_labels
        ordered = sorted(set(keys))
        index_of = {key: index for index, key in enumerate(ordered)}

        self.list_path = str(list_file)
        self.paths = paths
        self.class_names = [str(key) for key in ordered]
        self.labels = np.asarray([index_of[key] for key in keys], dtype=np.int64)
        self.num_classes = len(ordered)
        self.transform = transform


def write_list(path: str | Path, paths: Sequence[str], labels: Sequence[int]) -> None:
    """Write a ``path label`` list that ``ListDataset`` reads back to the same samples.

    Written to a temporary file and renamed, so an interrupted cleaning run never leaves
    a truncated list that would later train on a silent subset. Paths are written as
    given; relative ones will be resolved against the list file's folder when read. Paths
    that could not be read back unchanged (empty, a newline, surrounding whitespace, a
    leading ``#``) are rejected here rather than corrupted.
    """
    target = Path(path).expanduser()
    if len(paths) != len(labels):
        raise DataError(f"write_list {target}: {len(paths)} paths but {len(labels)} labels")
    lines = []
    for position, (sample_path, label) in enumerate(zip(paths, labels)):
        text = str(sample_path)
        if not text or text != text.strip() or "\n" in text or "\r" in text or text.startswith("#"):
            raise DataError(f"write_list {target}: entry {position} has a path a list file cannot hold: {text!r}")
        try:
            value = operator.index(label)
        except TypeError as exc:
            raise DataError(f"write_list {target}: entry {position} has a non-integer label {label!r}") from exc
        lines.append(f"{text} {value}\n")

    atomic_write_text(target, "".join(lines))
