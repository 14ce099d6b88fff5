"""MXNet RecordIO (.rec / .idx / property) read and write without mxnet.

insightface publishes its training sets (MS1MV2, Glint360K, WebFace...) in this format,
and users still have tools (mxnet, DALI) that read it, so files written here keep the
exact dmlc-core framing and insightface's header-record layout.

Framing of one record (dmlc-core ``RecordIOWriter``)::

    u32 magic 0xCED7230A | u32 (cflag << 29 | length) | data | zero pad to 4 bytes

A payload that contains the magic bytes at a 4-byte-aligned position is split there into
parts (cflag 1 = first, 2 = middle, 3 = last; 0 = the whole record in one part) and the
magic is dropped from the data, so a reader that resynchronises on magic never sees it
inside a record; the reader puts the magic back between the parts.

Payload of an image record (mxnet ``recordio.pack``): ``<IfQQ`` (flag, label, id, id2),
then ``flag`` float32 labels when ``flag > 0``, then the encoded image.
"""

from __future__ import annotations

import numbers
import operator
import os
import secrets
import struct
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, Callable, Iterable, Optional

import numpy as np
import torch
from tqdm import tqdm

from core.data.base import FaceDataset, decode_image
from core.errors import DataError
from core.io import atomic_write_text

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_FRAME = struct.Struct("<II")
_IR = struct.Struct("<IfQQ")
IR_SIZE = _IR.size  # 24
_LENGTH_MASK = (1 << 29) - 1
_MAX_RECORD = 1 << 29
# float32 holds every integer up to 2**24 exactly; insightface stores record keys as labels.
_FLOAT32_EXACT = 1 << 24
_SCAN_CHUNK = 1 << 16
_PROGRESS_ABOVE = 100_000
# Records whose framing ``data inspect`` reads in full (a few MB of a file of any size).
VERIFY_SAMPLE = 1000
# Image headers gathered when an insightface-layout dataset opens to learn whether its ids follow
# keys: enough for a clear majority, few enough to cost no noticeable time even on network storage.
_ID_SAMPLE = 256


@dataclass(frozen=True)
class IRHeader:
    """mxnet's image-record header; ``label`` is a float32 vector when ``flag > 0``."""

    flag: int
    label: float | np.ndarray
    id: int = 0
    id2: int = 0

    def __eq__(self, other: object) -> bool:
        # The generated __eq__ would compare label arrays elementwise and fail on truth value.
        if not isinstance(other, IRHeader):
            return NotImplemented
        return (
            self.flag == other.flag
            and self.id == other.id
            and self.id2 == other.id2
            and np.array_equal(np.asarray(self.label), np.asarray(other.label))
        )


def spread_rows(count: int, limit: int) -> np.ndarray:
    """Row numbers 0..count-1: all of them up to ``limit``, else ``limit`` spread evenly from first to last.

    Checks that cannot afford every record of a 5.8M-record file still see both ends and
    every region of it, and see every record of a small file.
    """
    if count <= limit:
        return np.arange(count, dtype=np.int64)
    return np.unique(np.linspace(0, count - 1, limit).round().astype(np.int64))


def _is_scalar_label(label: object) -> bool:
    if isinstance(label, np.ndarray):
        return label.ndim == 0
    return isinstance(label, numbers.Number)


def pack_record(header: IRHeader, payload: bytes = b"") -> bytes:
    """Build a record payload exactly as ``mx.recordio.pack`` does.

    The flag is derived from the label (0 for a scalar, the vector length otherwise) so a
    header can never announce a different number of labels than it carries.
    """
    if _is_scalar_label(header.label):
        head = _IR.pack(0, float(header.label), int(header.id), int(header.id2))
        return head + bytes(payload)
    vector = np.asarray(header.label, dtype="<f4").reshape(-1)
    if vector.size == 0:
        raise ValueError("pack_record: a vector label needs at least one element (flag 0 means scalar)")
    head = _IR.pack(int(vector.size), 0.0, int(header.id), int(header.id2))
    return head + vector.tobytes() + bytes(payload)


def unpack_record(record: bytes, where: str = "record") -> tuple[IRHeader, bytes]:
    """Split a record payload into its IRHeader and the remaining bytes (the image)."""
    if len(record) < IR_SIZE:
        raise DataError(
            f"{where}: record payload is {len(record)} bytes, shorter than the {IR_SIZE}-byte IRHeader"
        )
    flag, label, rid, rid2 = _IR.unpack_from(record, 0)
    if flag == 0:
        return IRHeader(0, float(label), rid, rid2), record[IR_SIZE:]
    end = IR_SIZE + 4 * flag
    if len(record) < end:
        raise DataError(
            f"{where}: IRHeader flag {flag} announces {flag} float32 labels ({4 * flag} bytes) "
            f"but only {len(record) - IR_SIZE} bytes follow the header"
        )
    vector = np.frombuffer(record, dtype="<f4", count=flag, offset=IR_SIZE).astype(np.float32)
    return IRHeader(flag, vector, rid, rid2), record[end:]


def _frame(payload: bytes) -> bytes:
    """dmlc-core's on-disk encoding of one record, magic-splitting included."""
    length = len(payload)
    if length >= _MAX_RECORD:
        raise DataError(f"RecordIO record of {length} bytes exceeds the format's limit of 2**29 - 1 bytes")
    pieces: list[bytes] = []
    start = 0
    hit = payload.find(_MAGIC_BYTES)
    while hit != -1:
        if hit % 4 == 0:
            cflag = 1 if start == 0 else 2
            pieces.append(_FRAME.pack(MAGIC, (cflag << 29) | (hit - start)))
            pieces.append(payload[start:hit])
            start = hit + 4
            hit = payload.find(_MAGIC_BYTES, start)
        else:
            hit = payload.find(_MAGIC_BYTES, hit + 1)
    cflag = 3 if start else 0
    pieces.append(_FRAME.pack(MAGIC, (cflag << 29) | (length - start)))
    pieces.append(payload[start:])
    pieces.append(b"\0" * (-length % 4))
    return b"".join(pieces)


def _open_temp_sibling(path: Path, mode: str) -> tuple[Path, IO]:
    """An exclusively created hidden file beside ``path``, so the final rename stays on one
    filesystem (atomic) and the file gets the umask's permissions, unlike ``mkstemp``'s 0600."""
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            return tmp, open(tmp, mode.replace("w", "x"), **({} if "b" in mode else {"newline": "\n"}))
        except FileExistsError:
            continue


class RecordIOWriter:
    """Writes a .rec and its .idx under temporary names, renamed only on a clean close.

    A crash or exception half way through a multi-hour packing job must not leave a .rec
    that looks complete; readers only ever see finished pairs.
    """

    def __init__(self, rec_path: str | Path, idx_path: str | Path) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path)
        self._rec: Optional[BinaryIO] = None
        self._idx = None
        self._rec_tmp: Optional[Path] = None
        self._idx_tmp: Optional[Path] = None
        self._pos = 0
        self._keys = array("q")
        try:
            self._rec_tmp, self._rec = _open_temp_sibling(self.rec_path, "w+b")
            self._idx_tmp, self._idx = _open_temp_sibling(self.idx_path, "w")
        except BaseException:
            self._abort()
            raise

    def __enter__(self) -> "RecordIOWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._abort()

    @property
    def closed(self) -> bool:
        return self._rec is None

    def write(self, key: int, record: bytes) -> None:
        """Append one record; ``key`` is what the .idx maps to its byte offset."""
        if self._rec is None:
            raise ValueError(f"RecordIOWriter for {self.rec_path} is closed")
        key = operator.index(key)
        if key < 0:
            raise ValueError(f"RecordIOWriter: record keys must be non-negative, got {key}")
        framed = _frame(bytes(record))
        self._rec.write(framed)
        self._idx.write(f"{key}\t{self._pos}\n")
        self._keys.append(key)
        self._pos += len(framed)

    def _overwrite(self, offset: int, record: bytes) -> None:
        """Replace an earlier single-part record of the same framed size (a header patched at the end)."""
        if self._rec is None:
            raise ValueError(f"RecordIOWriter for {self.rec_path} is closed")
        framed = _frame(bytes(record))
        self._rec.seek(offset)
        old = self._rec.read(_FRAME.size)
        self._rec.seek(0, os.SEEK_END)
        if len(old) != _FRAME.size:
            raise ValueError(f"RecordIOWriter: no record written at byte offset {offset}")
        magic, lrec = _FRAME.unpack(old)
        old_length = lrec & _LENGTH_MASK
        old_size = _FRAME.size + old_length + (-old_length % 4)
        if magic != MAGIC or lrec >> 29 != 0 or old_size != len(framed):
            raise ValueError(
                f"RecordIOWriter: the record at byte offset {offset} is not a single part of "
                f"{len(framed)} framed bytes, so it cannot be replaced in place"
            )
        self._rec.seek(offset)
        self._rec.write(framed)
        self._rec.seek(0, os.SEEK_END)

    def close(self) -> None:
        """Check keys are unique, flush to disk and move both files to their final names."""
        if self._rec is None:
            return
        try:
            keys = np.frombuffer(self._keys, dtype=np.int64) if len(self._keys) else np.empty(0, np.int64)
            ordered = np.sort(keys)
            dup = np.flatnonzero(ordered[1:] == ordered[:-1])
            if dup.size:
                raise DataError(f"{self.rec_path}: record key {int(ordered[dup[0]])} was written more than once")
            for handle in (self._rec, self._idx):
                handle.flush()
                os.fsync(handle.fileno())
                handle.close()
            os.replace(self._rec_tmp, self.rec_path)
            self._rec_tmp = None
            os.replace(self._idx_tmp, self.idx_path)
            self._idx_tmp = None
        except BaseException:
            self._abort()
            raise
        self._rec = None
        self._idx = None

    def _abort(self) -> None:
        for handle in (self._rec, self._idx):
            if handle is not None:
                try:
                    handle.close()
                except OSError:
                    pass
        for tmp in (self._rec_tmp, self._idx_tmp):
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        self._rec = self._idx = None
        self._rec_tmp = self._idx_tmp = None


# ---------------------------------------------------------------------------------------
# .idx parsing


def _parse_idx_fast(data: bytes) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """Vectorised parse of strictly formatted ``digits<TAB>digits<LF>`` lines.

    MS1MV2's .idx has 5.9M lines; a Python loop over them costs seconds per worker start,
    this costs a fraction. Returns None for anything unusual so the careful parser can
    report the exact line.
    """
    if not data:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
    if not data.endswith(b"\n"):
        data += b"\n"
    buf = np.frombuffer(data, dtype=np.uint8)
    keys_out: list[np.ndarray] = []
    offs_out: list[np.ndarray] = []
    chunk_bytes = 1 << 23
    start = 0
    while start < buf.size:
        stop = min(start + chunk_bytes, buf.size)
        if stop < buf.size:
            newline = data.rfind(b"\n", start, stop)
            stop = newline + 1 if newline >= start else data.find(b"\n", stop) + 1
        chunk = buf[start:stop]
        start = stop
        is_sep = (chunk == 9) | (chunk == 10)
        if not np.all(is_sep | ((chunk - 48) < 10)):
            return None
        sep = np.flatnonzero(is_sep)
        kinds = chunk[sep]
        if sep.size % 2 or not (np.all(kinds[0::2] == 9) and np.all(kinds[1::2] == 10)):
            return None
        field_start = np.empty_like(sep)
        field_start[0] = 0
        field_start[1:] = sep[:-1] + 1
        width = sep - field_start
        if width.min() == 0 or width.max() > 18:
            return None
        values = np.zeros(sep.size, dtype=np.int64)
        for column in range(int(width.max()), 0, -1):
            pos = sep - column
            digit = chunk[np.maximum(pos, 0)].astype(np.int64) - 48
            values = np.where(pos >= field_start, values * 10 + digit, values)
        keys_out.append(values[0::2])
        offs_out.append(values[1::2])
    return np.concatenate(keys_out), np.concatenate(offs_out)


def _parse_idx_lines(data: bytes, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Line-by-line parse accepting what mxnet accepts (surrounding blanks, blank lines)."""
    keys = array("q")
    offsets = array("q")
    lines = array("q")
    for number, raw in enumerate(data.split(b"\n"), start=1):
        line = raw.strip()
        if not line:
            continue
        fields = line.split(b"\t")
        try:
            if len(fields) != 2:
                raise ValueError
            key, offset = int(fields[0].strip()), int(fields[1].strip())
            if key < 0 or offset < 0:
                raise ValueError
        except ValueError:
            shown = raw[:80].decode("latin-1")
            raise DataError(
                f"{path}: line {number}: expected 'key<TAB>offset' with two non-negative integers, got {shown!r}"
            ) from None
        keys.append(key)
        offsets.append(offset)
        lines.append(number)
    as_np = lambda a: np.frombuffer(a, dtype=np.int64).copy() if len(a) else np.empty(0, np.int64)  # noqa: E731
    return as_np(keys), as_np(offsets), as_np(lines)


class RecordIOReader:
    """Random access to records by key through the .idx.

    The index lives in two int64 arrays, not a dict: a dict of 5.9M Python ints costs
    ~700 MB per DataLoader worker. The file handle is per process (opened lazily, re-opened
    after fork, never pickled) because a handle shared across forked workers shares its
    seek position and returns other workers' bytes.
    """

    keys: np.ndarray
    offsets: np.ndarray

    def __init__(self, rec_path: str | Path, idx_path: str | Path) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path)
        if not self.rec_path.is_file():
            raise DataError(f"{self.rec_path}: RecordIO data file not found")
        if not self.idx_path.is_file():
            raise DataError(f"{self.idx_path}: RecordIO index file not found (needed beside {self.rec_path.name})")
        self._size = self.rec_path.stat().st_size
        self._handle: Optional[BinaryIO] = None
        self._pid: Optional[int] = None

        data = self.idx_path.read_bytes()
        parsed = _parse_idx_fast(data)
        line_numbers: Optional[np.ndarray] = None
        if parsed is None:
            keys, offsets, line_numbers = _parse_idx_lines(data, self.idx_path)
        else:
            keys, offsets = parsed
        self.keys = keys
        self.offsets = offsets

        def line_of(position: int) -> int:
            return int(line_numbers[position]) if line_numbers is not None else position + 1

        if keys.size and np.all(keys[1:] > keys[:-1]):
            self._order: Optional[np.ndarray] = None
            self._sorted_keys = keys
        else:
            self._order = np.argsort(keys, kind="stable")
            self._sorted_keys = keys[self._order]
            dup = np.flatnonzero(self._sorted_keys[1:] == self._sorted_keys[:-1])
            if dup.size:
                first, second = self._order[dup[0]], self._order[dup[0] + 1]
                raise DataError(
                    f"{self.idx_path}: line {line_of(int(second))}: key {int(keys[second])} already "
                    f"appears on line {line_of(int(first))}"
                )
        self._contiguous = bool(
            keys.size and self._order is None and int(keys[-1]) - int(keys[0]) == keys.size - 1
        )
        past = np.flatnonzero(offsets > self._size - _FRAME.size)
        if past.size:
            at = int(past[0])
            raise DataError(
                f"{self.idx_path}: line {line_of(at)}: key {int(keys[at])} points at byte offset "
                f"{int(offsets[at])}, past the end of {self.rec_path} ({self._size} bytes)"
            )

    def __len__(self) -> int:
        return int(self.keys.size)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_pid"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def close(self) -> None:
        """Release this process's handle; a later read simply opens it again."""
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = None
        self._pid = None

    def _file(self) -> BinaryIO:
        pid = os.getpid()
        if self._handle is None or self._pid != pid:
            if self._handle is not None:
                self._handle.close()  # our forked copy of the parent's descriptor only
            try:
                self._handle = open(self.rec_path, "rb")
            except OSError as exc:
                raise DataError(f"{self.rec_path}: cannot open RecordIO data file ({exc})") from exc
            self._pid = pid
            self._size = os.fstat(self._handle.fileno()).st_size
        return self._handle

    def positions_of(self, keys: np.ndarray, what: str = "record") -> np.ndarray:
        """Rows of the index holding ``keys`` (vectorised); DataError naming the first missing key."""
        keys = np.asarray(keys, dtype=np.int64)
        count = self._sorted_keys.size
        if count == 0:
            rows = np.zeros(keys.shape, dtype=np.int64)
            found = np.zeros(keys.shape, dtype=bool)
        elif self._contiguous:
            rows = keys - self._sorted_keys[0]
            found = (rows >= 0) & (rows < count)
        else:
            rows = np.minimum(np.searchsorted(self._sorted_keys, keys), count - 1)
            found = self._sorted_keys[rows] == keys
            if self._order is not None:
                rows = self._order[rows]
        if not np.all(found):
            missing = int(keys[np.flatnonzero(~found)[0]])
            raise DataError(f"{self.idx_path}: no {what} with key {missing}")
        return rows

    def offset_of(self, key: int) -> int:
        """Byte offset of one record; scalar fast path because every image read goes through it."""
        key = int(key)
        count = self._sorted_keys.size
        if self._contiguous:
            row = key - int(self._sorted_keys[0])
            if 0 <= row < count:
                return int(self.offsets[row])
        elif count:
            row = int(np.searchsorted(self._sorted_keys, key))
            if row < count and int(self._sorted_keys[row]) == key:
                return int(self.offsets[row if self._order is None else self._order[row]])
        raise DataError(f"{self.idx_path}: no record with key {key}")

    def read(self, key: int) -> bytes:
        """The record's payload, continuation parts re-joined with the magic bytes."""
        key = int(key)
        offset = self.offset_of(key)
        handle = self._file()
        parts: list[bytes] = []
        position = offset
        while True:
            handle.seek(position)
            head = handle.read(_FRAME.size)
            if len(head) < _FRAME.size:
                raise DataError(
                    f"{self.rec_path}: record {key}: truncated, frame header at byte offset {position} "
                    f"runs past the end of the file ({self._size} bytes)"
                )
            magic, lrec = _FRAME.unpack(head)
            if magic != MAGIC:
                raise DataError(
                    f"{self.rec_path}: record {key}: bad magic 0x{magic:08X} at byte offset {position} "
                    f"(expected 0x{MAGIC:08X}; .idx and .rec out of sync or file corrupt)"
                )
            cflag = lrec >> 29
            length = lrec & _LENGTH_MASK
            expected = (0, 1) if not parts else (2, 3)
            if cflag not in expected:
                raise DataError(
                    f"{self.rec_path}: record {key}: continuation flag {cflag} at byte offset {position}, "
                    f"expected one of {expected}"
                )
            data = handle.read(length)
            if len(data) < length:
                raise DataError(
                    f"{self.rec_path}: record {key}: truncated, part at byte offset {position} declares "
                    f"{length} bytes but the file ends after {len(data)}"
                )
            parts.append(data)
            if cflag in (0, 3):
                break
            position += _FRAME.size + length + (-length % 4)
        return parts[0] if len(parts) == 1 else _MAGIC_BYTES.join(parts)

    def verify_sample(self, limit: int = VERIFY_SAMPLE) -> int:
        """Read and parse the records at ``spread_rows`` of the index; returns how many were checked.

        Counting through an index says nothing about the bytes it points at, so a file with a
        corrupt record would pass as fine; reading all of a 100 GB file is too slow for an
        inspection. Each checked record's magic, continuation flags, lengths and IRHeader must
        hold; the first that does not raises a DataError naming its key and byte offset.
        """
        rows = spread_rows(len(self), limit)
        for row in rows:
            key, offset = int(self.keys[row]), int(self.offsets[row])
            unpack_record(self.read(key), f"{self.rec_path}: record {key} at byte offset {offset}")
        return int(rows.size)

    def peek(self, offsets: np.ndarray, nbytes: int) -> np.ndarray:
        """The first ``nbytes`` at each offset as ``[n, nbytes]`` uint8, zero past end of file.

        Label scans need only a few header bytes per record; gathering them through a
        memory map avoids a Python-level seek+read per record.
        """
        offsets = np.asarray(offsets, dtype=np.int64)
        out = np.zeros((offsets.size, nbytes), dtype=np.uint8)
        if offsets.size == 0 or self._size == 0:
            return out
        mapped = np.memmap(self.rec_path, dtype=np.uint8, mode="r", shape=(self._size,))
        span = np.arange(nbytes, dtype=np.int64)
        for begin in range(0, offsets.size, _SCAN_CHUNK):
            where = offsets[begin : begin + _SCAN_CHUNK, None] + span
            block = np.asarray(mapped[np.minimum(where, self._size - 1)])
            block[where >= self._size] = 0
            out[begin : begin + _SCAN_CHUNK] = block
        del mapped
        return out


def read_property(path: str | Path) -> tuple[int, int, int]:
    """insightface's ``property`` file: ``num_classes,height,width``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise DataError(f"{path}: property file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read property file ({exc})") from exc
    fields = [field.strip() for field in text.split(",")]
    try:
        values = tuple(int(field) for field in fields)
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) <= 0:
        raise DataError(
            f"{path}: expected 'num_classes,height,width' with three positive integers, got {text[:80]!r}"
        )
    return values  # type: ignore[return-value]


def write_insightface_rec(
    out_dir: str | Path,
    samples: Iterable[tuple[int, bytes]],
    num_classes: int,
    image_size: tuple[int, int] = (112, 112),
) -> int:
    """Pack labelled images into insightface's train.rec / train.idx / property.

    Streams: only one image and the per-identity start keys are held at a time, so
    datasets larger than memory can be packed. Record 0 is written first as a placeholder
    and patched at the end, keeping insightface's order (header record first in file).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    num_classes = operator.index(num_classes)
    if num_classes < 1:
        raise DataError(f"write_insightface_rec: num_classes must be at least 1, got {num_classes}")
    height, width = (operator.index(v) for v in image_size)
    if height <= 0 or width <= 0:
        raise DataError(f"write_insightface_rec: image_size must be positive, got {tuple(image_size)}")
    if num_classes + 2 > _FLOAT32_EXACT:
        raise DataError(
            f"write_insightface_rec: {num_classes} classes exceed what float32 record-key labels hold exactly"
        )
    rec_path, idx_path = out / "train.rec", out / "train.idx"
    starts = np.zeros(num_classes + 1, dtype=np.int64)
    placeholder = pack_record(IRHeader(2, np.zeros(2, np.float32)))
    with RecordIOWriter(rec_path, idx_path) as writer:
        writer.write(0, placeholder)
        count = 0
        current = -1
        for index, (label, encoded) in enumerate(samples):
            try:
                value = int(label)
            except (TypeError, ValueError):
                value = None
            if value is None or value != label:
                raise DataError(f"write_insightface_rec: sample {index} has non-integer label {label!r}")
            if value != current:
                if value != current + 1 or value >= num_classes:
                    if current < 0:
                        expected = "0"
                    elif current + 1 < num_classes:
                        expected = f"{current} or {current + 1}"
                    else:
                        expected = str(current)
                    raise DataError(
                        f"write_insightface_rec: sample {index} has label {value} where {expected} was expected; "
                        f"samples must be grouped by label, labels ascending 0..{num_classes - 1}, none skipped"
                    )
                current = value
                starts[value] = count + 1
            count += 1
            if count + 1 + num_classes > _FLOAT32_EXACT:
                raise DataError(
                    f"write_insightface_rec: {count} images + {num_classes} identities exceed 2**24 record "
                    f"keys, which insightface's float32 header labels cannot address exactly"
                )
            writer.write(count, pack_record(IRHeader(0, float(value), count, 0), encoded))
        if count == 0:
            raise DataError("write_insightface_rec: no samples given; refusing to write an empty dataset")
        if current != num_classes - 1:
            raise DataError(
                f"write_insightface_rec: samples end at label {current} but num_classes is {num_classes}; "
                f"labels {current + 1}..{num_classes - 1} have no images"
            )
        starts[num_classes] = count + 1
        for identity in range(num_classes):
            bounds = np.array([starts[identity], starts[identity + 1]], dtype=np.float32)
            writer.write(count + 1 + identity, pack_record(IRHeader(2, bounds)))
        first_identity = count + 1
        writer._overwrite(
            0, pack_record(IRHeader(2, np.array([first_identity, first_identity + num_classes], np.float32)))
        )
    # After the .rec/.idx are final: a property never describes a pack that did not land.
    atomic_write_text(out / "property", f"{num_classes},{height},{width}\n")
    return count


def _exact_nonnegative_ints(values: np.ndarray) -> np.ndarray:
    return np.isfinite(values) & (values >= 0) & (np.floor(values) == values)


def _header_ids(words: np.ndarray) -> np.ndarray:
    """The u64 IRHeader id of each row of peeked little-endian words (magic, length, flag, label, id)."""
    return np.ascontiguousarray(words[:, 4:6]).view("<u8").reshape(-1)


def _ids_follow_keys(keys: np.ndarray, ids: np.ndarray) -> bool:
    """Whether a file numbers its image headers' ids by .idx key, judged by most of the records given.

    mxnet's im2rec.py, insightface's face2rec2.py, dataset_merge.py and RecBuilder, and
    write_insightface_rec all write an image record's IRHeader id equal to its key (record 0,
    insightface's header, has id 0 = its key). Some writers legitimately do not, and their files
    are never checked: arcface_torch's scripts/shuffle_rec.py and insightface's dataset_clean.py
    copy records under new keys keeping the source file's ids, and other writers leave every id 0.
    A majority rather than all decides, so a numbered file with a few swapped .idx offsets is
    still recognised as numbered and those records are refused.
    """
    return 2 * int(np.count_nonzero(ids == keys.astype(np.uint64))) > ids.size


class RecordDataset(FaceDataset):
    """A FaceDataset over an insightface-style directory (train.rec, train.idx, property).

    Labels come from the identity records' [start, end) ranges when record 0 is
    insightface's header (flag 2, no payload): 85k small records instead of 5.8M image
    headers. Any other record 0 means every key is an image and the image headers are
    scanned. Record 0 with flag > 0 *and* a payload is an im2rec image with a vector label.

    When the file numbers header ids by key (``ids_follow_keys``, see ``_ids_follow_keys``),
    an image whose header id is not its key is refused: the .idx points that key at another
    record's bytes, and training on it would use another image's label.
    """

    image_keys: np.ndarray
    labels: np.ndarray
    num_classes: int
    ids_follow_keys: bool

    def __init__(self, root: str | Path, transform: Optional[Callable[[np.ndarray], torch.Tensor]] = None) -> None:
        self.root = Path(root)
        self.transform = transform
        self.rec_path = self.root / "train.rec"
        self.reader = RecordIOReader(self.rec_path, self.root / "train.idx")
        if len(self.reader) == 0:
            raise DataError(f"{self.reader.idx_path}: index is empty, the dataset has no images")

        header0: Optional[IRHeader] = None
        if np.any(self.reader.keys == 0):
            header0, rest = unpack_record(self.reader.read(0), f"{self.rec_path} record 0")
            if not (header0.flag > 0 and len(rest) == 0):
                header0 = None
        if header0 is not None:
            self.image_keys, self.labels = self._insightface_labels(header0)
            checked = self.image_keys[spread_rows(self.image_keys.size, _ID_SAMPLE)]
            ids = self._sampled_ids(checked)
        else:
            self.image_keys, self.labels, ids = self._scanned_labels()
            checked = self.image_keys
        if self.labels.size == 0:
            raise DataError(f"{self.rec_path}: the dataset has no images")
        self.ids_follow_keys = self._check_ids(checked, ids)

        property_path = self.root / "property"
        self.image_size: Optional[tuple[int, int]] = None
        if property_path.exists():
            num_classes, height, width = read_property(property_path)
            self.image_size = (height, width)
            bad = np.flatnonzero(self.labels >= num_classes)
            if bad.size:
                at = int(bad[0])
                raise DataError(
                    f"{self.rec_path}: record {int(self.image_keys[at])} has label {int(self.labels[at])} "
                    f"but {property_path} declares num_classes = {num_classes}"
                )
            self.num_classes = num_classes
        else:
            self.num_classes = int(self.labels.max()) + 1

    def _insightface_labels(self, header0: IRHeader) -> tuple[np.ndarray, np.ndarray]:
        where = f"{self.rec_path} record 0"
        bounds = np.asarray(header0.label, dtype=np.float64)
        if header0.flag != 2 or not np.all(_exact_nonnegative_ints(bounds)) or not 1 <= bounds[0] <= bounds[1]:
            raise DataError(
                f"{where}: header record must have flag 2 and label [first identity key, end key] "
                f"with 1 <= first <= end, got flag {header0.flag} label {bounds.tolist()}"
            )
        first, end = int(bounds[0]), int(bounds[1])
        num_images, num_identities = first - 1, end - first
        if num_images == 0 or num_identities == 0:
            raise DataError(
                f"{where}: header declares {num_images} images and {num_identities} identities; the dataset is empty"
            )
        identity_keys = np.arange(first, end, dtype=np.int64)
        ranges = self._identity_ranges(identity_keys)
        starts, ends = ranges[:, 0], ranges[:, 1]
        expected_starts = np.concatenate(([1], ends[:-1]))
        broken = np.flatnonzero((starts != expected_starts) | (ends < starts))
        if broken.size or ends[-1] != first:
            at = int(broken[0]) if broken.size else num_identities - 1
            hint = " (float32 labels are exact only up to 2**24)" if end > _FLOAT32_EXACT else ""
            raise DataError(
                f"{self.rec_path} record {int(identity_keys[at])}: identity {at} covers image keys "
                f"[{int(starts[at])}, {int(ends[at])}), expected contiguous ranges starting at "
                f"{int(expected_starts[at])} that together cover keys 1..{num_images}{hint}"
            )
        image_keys = np.arange(1, first, dtype=np.int64)
        self.reader.positions_of(image_keys, what="image record")
        labels = np.repeat(np.arange(num_identities, dtype=np.int64), ends - starts)
        return image_keys, labels

    def _identity_ranges(self, identity_keys: np.ndarray) -> np.ndarray:
        """[start, end) of every identity, from a memory-mapped gather with a per-record fallback."""
        offsets = self.reader.offsets[self.reader.positions_of(identity_keys, what="identity record")]
        words = self.reader.peek(offsets, 40).view("<u4")
        fast = (words[:, 0] == MAGIC) & (words[:, 1] == IR_SIZE + 8) & (words[:, 2] == 2)
        fast &= offsets + 40 <= self.reader._size
        ranges = words[:, 8:10].copy().view("<f4").astype(np.float64)
        for row in np.flatnonzero(~fast):
            key = int(identity_keys[row])
            header, _ = unpack_record(self.reader.read(key), f"{self.rec_path} record {key}")
            if header.flag != 2:
                raise DataError(
                    f"{self.rec_path} record {key}: identity record must have flag 2 and label [start, end), "
                    f"got flag {header.flag}"
                )
            ranges[row] = np.asarray(header.label, dtype=np.float64)
        bad = np.flatnonzero(~np.all(_exact_nonnegative_ints(ranges), axis=1))
        if bad.size:
            row = int(bad[0])
            raise DataError(
                f"{self.rec_path} record {int(identity_keys[row])}: identity range {ranges[row].tolist()} "
                f"is not a pair of non-negative integers"
            )
        return ranges.astype(np.int64)

    def _sampled_ids(self, keys: np.ndarray) -> np.ndarray:
        """Header ids of ``keys``' image records: a memory-mapped gather, full reads for split or odd frames."""
        reader = self.reader
        offsets = reader.offsets[reader.positions_of(keys, what="image record")]
        words = reader.peek(offsets, _FRAME.size + 16).view("<u4")  # frame, flag, label, id
        ids = _header_ids(words)
        whole = (words[:, 0] == MAGIC) & ((words[:, 1] >> 29) <= 1) & ((words[:, 1] & _LENGTH_MASK) >= 16)
        whole &= offsets + _FRAME.size + 16 <= reader._size
        for row in np.flatnonzero(~whole):
            key = int(keys[row])
            ids[row] = unpack_record(reader.read(key), f"{self.rec_path} record {key}")[0].id
        return ids

    def _check_ids(self, keys: np.ndarray, ids: np.ndarray) -> bool:
        """Whether header ids follow keys in this file; if they do, refuse the first record whose id differs."""
        if not _ids_follow_keys(keys, ids):
            return False
        wrong = np.flatnonzero(ids != keys.astype(np.uint64))
        if wrong.size:
            raise self._id_error(int(keys[wrong[0]]), int(ids[wrong[0]]))
        return True

    def _id_error(self, key: int, found: int) -> DataError:
        return DataError(
            f"{self.rec_path}: record {key} at byte offset {self.reader.offset_of(key)} has header id {found}, "
            f"expected {key}: {self.reader.idx_path.name} points this key at another record (offsets swapped "
            f"or stale), whose label would be wrong"
        )

    def _scanned_labels(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Labels and header ids of every record, from the header bytes of each (im2rec layout)."""
        reader = self.reader
        keys, offsets = reader.keys, reader.offsets
        labels = np.empty(keys.size, dtype=np.float64)
        ids = np.empty(keys.size, dtype=np.uint64)
        with tqdm(
            total=int(keys.size),
            desc=f"scanning {self.rec_path.name} headers",
            unit="rec",
            disable=keys.size <= _PROGRESS_ABOVE,
        ) as bar:
            for begin in range(0, keys.size, _SCAN_CHUNK):
                stop = min(begin + _SCAN_CHUNK, keys.size)
                labels[begin:stop], ids[begin:stop] = self._scan_chunk(keys[begin:stop], offsets[begin:stop])
                bar.update(stop - begin)
        bad = np.flatnonzero(~_exact_nonnegative_ints(labels))
        if bad.size:
            at = int(bad[0])
            raise DataError(
                f"{self.rec_path}: record {int(keys[at])} has label {float(labels[at])!r}, "
                f"expected a non-negative integer"
            )
        return keys.copy(), labels.astype(np.int64), ids

    def _scan_chunk(self, keys: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Labels and header ids of one chunk of image records from frame + IRHeader + first label (36 bytes)."""
        reader = self.reader
        words = reader.peek(offsets, 36).view("<u4")
        bad = np.flatnonzero(words[:, 0] != MAGIC)
        if bad.size:
            at = int(bad[0])
            raise DataError(
                f"{self.rec_path}: record {int(keys[at])}: bad magic 0x{int(words[at, 0]):08X} at byte offset "
                f"{int(offsets[at])} (expected 0x{MAGIC:08X})"
            )
        cflag = words[:, 1] >> 29
        length = (words[:, 1] & _LENGTH_MASK).astype(np.int64)
        flag = words[:, 2].astype(np.int64)
        # Single-part records holding their whole header; others (a header split by an
        # aligned magic word, or too short) go through a full read, which also names errors.
        fast = (cflag == 0) & (length >= IR_SIZE + 4 * np.minimum(flag, 1 << 20))
        truncated = np.flatnonzero(fast & (offsets + _FRAME.size + length > reader._size))
        if truncated.size:
            at = int(truncated[0])
            raise DataError(
                f"{self.rec_path}: record {int(keys[at])}: truncated, declares {int(length[at])} bytes at byte "
                f"offset {int(offsets[at])} but the file has {reader._size} bytes"
            )
        scalar = words[:, 3].copy().view("<f4")
        first = words[:, 8].copy().view("<f4")
        labels = np.where(flag == 0, scalar, first).astype(np.float64)
        ids = _header_ids(words)
        for row in np.flatnonzero(~fast):
            key = int(keys[row])
            header, _ = unpack_record(reader.read(key), f"{self.rec_path} record {key}")
            labels[row] = float(header.label) if header.flag == 0 else float(header.label[0])
            ids[row] = header.id
        return labels, ids

    def load_image(self, index: int) -> np.ndarray:
        """Decode one image; its header (read anyway) must carry its key when the file numbers ids."""
        key = int(self.image_keys[index])
        where = f"{self.rec_path} record {key}"
        header, encoded = unpack_record(self.reader.read(key), where)
        if self.ids_follow_keys and header.id != key:
            raise self._id_error(key, header.id)
        return decode_image(encoded, where)

    def source_of(self, index: int) -> dict:
        return {"record": int(self.image_keys[index])}
