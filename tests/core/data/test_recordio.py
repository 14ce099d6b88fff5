"""RecordIO framing, index, insightface layout and every bad-input path."""

from __future__ import annotations

import os
import pickle
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.data import recordio
from core.data.base import decode_image, encode_image
from core.data.recordio import (
    MAGIC,
    IRHeader,
    RecordDataset,
    RecordIOReader,
    RecordIOWriter,
    pack_record,
    read_property,
    spread_rows,
    unpack_record,
    write_insightface_rec,
)
from core.errors import DataError

M = struct.pack("<I", MAGIC)  # b"\x0a\x23\xd7\xce"


def write_records(tmp: Path, records: dict[int, bytes]) -> tuple[Path, Path]:
    rec, idx = tmp / "data.rec", tmp / "data.idx"
    with RecordIOWriter(rec, idx) as writer:
        for key, payload in records.items():
            writer.write(key, payload)
    return rec, idx


def image(seed: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- known answers


def test_single_record_bytes_match_the_format_by_hand(tmp_path: Path) -> None:
    rec, idx = write_records(tmp_path, {7: b"\x01\x02\x03\x04\x05"})
    assert rec.read_bytes() == (
        b"\x0a\x23\xd7\xce"  # magic 0xCED7230A, little-endian
        b"\x05\x00\x00\x00"  # cflag 0 << 29 | length 5
        b"\x01\x02\x03\x04\x05"
        b"\x00\x00\x00"  # pad 5 -> 8
    )
    assert idx.read_text() == "7\t0\n"


def test_aligned_magic_is_split_into_continuation_parts_by_hand(tmp_path: Path) -> None:
    payload = b"AB\x00\x00" + M + b"C"  # magic at aligned offset 4, total length 9
    rec, _ = write_records(tmp_path, {0: payload, 1: b"\xff"})
    assert rec.read_bytes() == (
        M + b"\x04\x00\x00\x20" + b"AB\x00\x00"  # cflag 1 << 29 | 4
        + M + b"\x01\x00\x00\x60" + b"C" + b"\x00\x00\x00"  # cflag 3 << 29 | 1, pad of the 9-byte record
        + M + b"\x01\x00\x00\x00" + b"\xff\x00\x00\x00"  # next record at offset 24
    )
    assert (tmp_path / "data.idx").read_text() == "0\t0\n1\t24\n"


def test_pack_record_bytes_by_hand() -> None:
    assert pack_record(IRHeader(0, 3.0, 7, 0), b"img") == (
        b"\x00\x00\x00\x00" + b"\x00\x00\x40\x40" + b"\x07" + b"\x00" * 7 + b"\x00" * 8 + b"img"
    )
    vector = pack_record(IRHeader(0, np.array([1.0, 2.0]), 5, 6), b"")
    assert vector[:4] == b"\x02\x00\x00\x00"  # flag derived from the label's length
    assert vector[24:] == struct.pack("<2f", 1.0, 2.0)


# --------------------------------------------------------------------------- pack / unpack


def test_pack_unpack_scalar_and_vector() -> None:
    header, payload = unpack_record(pack_record(IRHeader(0, 12.0, 3, 4), b"jpeg"))
    assert header == IRHeader(0, 12.0, 3, 4) and payload == b"jpeg"
    header, payload = unpack_record(pack_record(IRHeader(99, [1.5, -2.0, 7.0], 1, 2), b"x"))
    assert header.flag == 3 and header.id == 1 and header.id2 == 2 and payload == b"x"
    np.testing.assert_array_equal(header.label, np.array([1.5, -2.0, 7.0], np.float32))
    assert header == IRHeader(3, np.array([1.5, -2.0, 7.0], np.float32), 1, 2)
    header, _ = unpack_record(pack_record(IRHeader(5, np.float32(4.0))))  # numpy scalar => flag 0
    assert header.flag == 0 and header.label == 4.0


def test_unpack_errors_name_the_record() -> None:
    with pytest.raises(DataError, match="rec 9.*shorter than the 24-byte IRHeader"):
        unpack_record(b"\x00" * 10, "rec 9")
    with pytest.raises(DataError, match="rec 3: IRHeader flag 4 announces 4 float32 labels"):
        unpack_record(struct.pack("<IfQQ", 4, 0.0, 0, 0) + b"\x00" * 8, "rec 3")


# --------------------------------------------------------------------------- round trips

AWKWARD_PAYLOADS = [
    b"",
    b"a",
    M,
    M + M,
    M + b"xyz",
    b"abcd" + M,
    b"abcd" + M + M + b"12",
    b"a" + M + b"bcd",  # unaligned: not split
    b"ab" + M + b"cd" + M,  # unaligned then aligned at 8
    b"abc" + M + b"d",
    b"\x00" * 4 + M + b"\x00" * 3 + M,  # aligned at 4, unaligned at 11
    bytes(range(256)) * 3,
]


def test_round_trip_awkward_payloads(tmp_path: Path) -> None:
    records = {key: payload for key, payload in enumerate(AWKWARD_PAYLOADS)}
    rec, idx = write_records(tmp_path, records)
    reader = RecordIOReader(rec, idx)
    assert len(reader) == len(records)
    np.testing.assert_array_equal(reader.keys, np.arange(len(records)))
    for key in reversed(list(records)):
        assert reader.read(key) == records[key]


def framed_magic_positions(data: bytes) -> list[int]:
    return [i for i in range(0, len(data) - 3, 4) if data[i : i + 4] == M]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.one_of(st.binary(max_size=9), st.just(M)), max_size=6).map(b"".join),
        min_size=1,
        max_size=5,
    )
)
def test_framing_property(payloads: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rec, idx = write_records(Path(tmp), dict(enumerate(payloads)))
        data = rec.read_bytes()
        reader = RecordIOReader(rec, idx)
        assert [reader.read(k) for k in range(len(payloads))] == payloads
    # dmlc's invariant that lets MXNet resynchronise: the only aligned magic words in the
    # file are part headers, and walking the parts reproduces every payload.
    assert len(data) % 4 == 0
    walked, parts, position = [], [], 0
    headers = []
    while position < len(data):
        headers.append(position)
        magic, lrec = struct.unpack_from("<II", data, position)
        assert magic == MAGIC
        cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
        assert cflag in ((0, 1) if not parts else (2, 3))
        parts.append(data[position + 8 : position + 8 + length])
        position += 8 + length + (-length % 4)
        if cflag in (0, 3):
            walked.append(M.join(parts))
            parts = []
    assert walked == payloads
    assert framed_magic_positions(data) == headers


def test_vector_labels_round_trip_through_a_file(tmp_path: Path) -> None:
    records = {k: pack_record(IRHeader(0, [float(k), 0.5, -1.0], k, 0), b"p" * k) for k in range(4)}
    rec, idx = write_records(tmp_path, records)
    reader = RecordIOReader(rec, idx)
    for key in range(4):
        header, payload = unpack_record(reader.read(key))
        assert header.flag == 3 and header.id == key and payload == b"p" * key
        np.testing.assert_array_equal(header.label, [key, 0.5, -1.0])


def test_writer_leaves_nothing_on_exception(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with RecordIOWriter(tmp_path / "a.rec", tmp_path / "a.idx") as writer:
            writer.write(0, b"abc")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_duplicate_keys_and_leaves_nothing(tmp_path: Path) -> None:
    write_records(tmp_path, {3: b"a"})  # an unrelated finished pair must survive
    with pytest.raises(DataError, match="record key 3 was written more than once"):
        with RecordIOWriter(tmp_path / "b.rec", tmp_path / "b.idx") as writer:
            writer.write(3, b"a")
            writer.write(3, b"b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.idx", "data.rec"]


def test_writer_files_have_final_names_only_after_close(tmp_path: Path) -> None:
    writer = RecordIOWriter(tmp_path / "c.rec", tmp_path / "c.idx")
    writer.write(1, b"x")
    assert not (tmp_path / "c.rec").exists()
    writer.close()
    assert (tmp_path / "c.rec").exists() and (tmp_path / "c.idx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.idx", "c.rec"]
    with pytest.raises(ValueError, match="closed"):
        writer.write(2, b"y")


# --------------------------------------------------------------------------- the .idx


def test_idx_variants_parse_like_mxnet(tmp_path: Path) -> None:
    rec = tmp_path / "d.rec"
    rec.write_bytes(b"\x00" * 4096)
    idx = tmp_path / "d.idx"
    strict = "5\t8\n2\t0\n9\t16\n"
    idx.write_text(strict)
    fast = RecordIOReader(rec, idx)
    idx.write_bytes(b"5\t8\r\n\n 2 \t 0\n9\t16")  # CRLF, blank line, blanks, no final newline
    slow = RecordIOReader(rec, idx)
    for reader in (fast, slow):
        np.testing.assert_array_equal(reader.keys, [5, 2, 9])
        np.testing.assert_array_equal(reader.offsets, [8, 0, 16])
        assert reader.offset_of(9) == 16 and reader.offset_of(2) == 0
        assert reader.keys.dtype == np.int64 and reader.offsets.dtype == np.int64
    with pytest.raises(DataError, match="no record with key 3"):
        fast.offset_of(3)


def test_idx_fast_parser_handles_large_values_and_many_lines() -> None:
    keys = np.arange(300_000, dtype=np.int64) * 7 + 123_456_789_012
    offsets = np.arange(300_000, dtype=np.int64) * 9_000_001
    text = "".join(f"{k}\t{o}\n" for k, o in zip(keys.tolist(), offsets.tolist())).encode()
    parsed_keys, parsed_offsets = recordio._parse_idx_fast(text)
    np.testing.assert_array_equal(parsed_keys, keys)
    np.testing.assert_array_equal(parsed_offsets, offsets)


@pytest.mark.parametrize(
    "content, line",
    [("0\t0\n1\tx\n", 2), ("0\t0\n1\t8\n2\n", 3), ("0\t0\t5\n", 1), ("0\t0\n-1\t0\n", 2)],
)
def test_malformed_idx_line_is_named(tmp_path: Path, content: str, line: int) -> None:
    (tmp_path / "e.rec").write_bytes(b"\x00" * 64)
    (tmp_path / "e.idx").write_text(content)
    with pytest.raises(DataError, match=rf"e\.idx: line {line}: expected 'key<TAB>offset'"):
        RecordIOReader(tmp_path / "e.rec", tmp_path / "e.idx")


def test_duplicate_idx_key_is_named(tmp_path: Path) -> None:
    (tmp_path / "f.rec").write_bytes(b"\x00" * 64)
    (tmp_path / "f.idx").write_text("0\t0\n4\t8\n4\t16\n")
    with pytest.raises(DataError, match="line 3: key 4 already appears on line 2"):
        RecordIOReader(tmp_path / "f.rec", tmp_path / "f.idx")


# --------------------------------------------------------------------------- reader errors


def test_missing_files_are_named(tmp_path: Path) -> None:
    rec, idx = write_records(tmp_path, {0: b"a"})
    with pytest.raises(DataError, match=r"missing\.idx: RecordIO index file not found"):
        RecordIOReader(rec, tmp_path / "missing.idx")
    with pytest.raises(DataError, match=r"missing\.rec: RecordIO data file not found"):
        RecordIOReader(tmp_path / "missing.rec", idx)


def test_bad_magic_names_file_key_and_offset(tmp_path: Path) -> None:
    rec, idx = write_records(tmp_path, {0: b"abcd", 1: b"efgh", 2: b"ijkl"})
    data = bytearray(rec.read_bytes())
    data[24] ^= 0xFF  # record 2 starts at byte 24
    rec.write_bytes(bytes(data))
    reader = RecordIOReader(rec, idx)
    assert reader.read(1) == b"efgh"
    with pytest.raises(DataError, match=r"data\.rec: record 2: bad magic 0x[0-9A-F]{8} at byte offset 24"):
        reader.read(2)


def test_bad_magic_in_a_continuation_part_names_its_offset(tmp_path: Path) -> None:
    rec, idx = write_records(tmp_path, {0: b"abcd" + M + b"xy"})
    data = bytearray(rec.read_bytes())
    data[12] ^= 0x01  # second part header: 8 (first header) + 4 (first part data)
    rec.write_bytes(bytes(data))
    with pytest.raises(DataError, match="record 0: bad magic .* at byte offset 12"):
        RecordIOReader(rec, idx).read(0)


def test_truncated_record(tmp_path: Path) -> None:
    rec, idx = write_records(tmp_path, {0: b"a" * 8, 1: b"b" * 40})
    rec.write_bytes(rec.read_bytes()[:-10])
    reader = RecordIOReader(rec, idx)
    assert reader.read(0) == b"a" * 8
    with pytest.raises(DataError, match="record 1: truncated, part at byte offset 16 declares 40 bytes"):
        reader.read(1)


def test_idx_offset_past_end_of_file(tmp_path: Path) -> None:
    rec, idx = write_records(tmp_path, {0: b"a", 1: b"b"})
    idx.write_text(idx.read_text() + "2\t4096\n")
    with pytest.raises(DataError, match=r"line 3: key 2 points at byte offset 4096, past the end of .*\(24 bytes\)"):
        RecordIOReader(rec, idx)


def test_reader_pickles_without_its_handle_and_reopens(tmp_path: Path) -> None:
    rec, idx = write_records(tmp_path, {k: bytes([k]) * (k + 1) for k in range(5)})
    reader = RecordIOReader(rec, idx)
    assert reader.read(3) == b"\x03" * 4
    state = reader.__getstate__()
    assert state["_handle"] is None
    clone = pickle.loads(pickle.dumps(reader))
    assert clone.read(4) == b"\x04" * 5
    assert reader.read(2) == b"\x02" * 3
    reader.close()
    clone.close()


def test_reader_reopens_when_the_process_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec, idx = write_records(tmp_path, {0: b"zero", 1: b"one"})
    reader = RecordIOReader(rec, idx)
    reader.read(0)
    first = reader._handle
    real_pid = os.getpid()
    monkeypatch.setattr(recordio.os, "getpid", lambda: real_pid + 1)
    assert reader.read(1) == b"one"
    assert reader._handle is not first and first.closed
    reader.close()


def test_spread_rows_keeps_both_ends_and_all_of_a_small_file() -> None:
    np.testing.assert_array_equal(spread_rows(3, 4), [0, 1, 2])
    np.testing.assert_array_equal(spread_rows(10, 4), [0, 3, 6, 9])
    rows = spread_rows(5_900_000, 1000)
    assert rows.size == 1000 and rows[0] == 0 and rows[-1] == 5_899_999


def test_verify_sample_reads_every_record_of_a_small_file(tmp_path: Path) -> None:
    rec, idx = write_records(tmp_path, {k: pack_record(IRHeader(0, 0.0, k), b"x" * k) for k in range(7)})
    assert RecordIOReader(rec, idx).verify_sample() == 7
    assert RecordIOReader(rec, idx).verify_sample(limit=3) == 3


def test_verify_sample_names_the_first_bad_record(tmp_path: Path) -> None:
    rec, idx = write_records(tmp_path, {0: pack_record(IRHeader(0, 0.0)), 1: b"abc", 2: b"xyz"})
    with pytest.raises(DataError, match=r"data\.rec: record 1 at byte offset 32: record payload is 3 bytes, shorter"):
        RecordIOReader(rec, idx).verify_sample()
    data = bytearray(rec.read_bytes())
    data[32] ^= 0xFF
    rec.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"data\.rec: record 1: bad magic 0x[0-9A-F]{8} at byte offset 32"):
        RecordIOReader(rec, idx).verify_sample()


# --------------------------------------------------------------------------- insightface layout


def insightface_dir(tmp_path: Path, counts: list[int], size: int = 16) -> tuple[Path, list[tuple[int, bytes]]]:
    samples = []
    seed = 0
    for label, count in enumerate(counts):
        for _ in range(count):
            samples.append((label, encode_image(image(seed, size))))
            seed += 1
    out = tmp_path / "ds"
    n = write_insightface_rec(out, iter(samples), len(counts), image_size=(size, size))
    assert n == len(samples)
    return out, samples


def test_insightface_layout_round_trip(tmp_path: Path) -> None:
    counts = [3, 1, 4, 2]
    out, samples = insightface_dir(tmp_path, counts)
    n, k = sum(counts), len(counts)
    assert sorted(p.name for p in out.iterdir()) == ["property", "train.idx", "train.rec"]
    assert (out / "property").read_text() == "4,16,16\n"
    assert read_property(out / "property") == (4, 16, 16)

    reader = RecordIOReader(out / "train.rec", out / "train.idx")
    np.testing.assert_array_equal(reader.keys, np.arange(n + k + 1))
    assert reader.offset_of(0) == 0  # header record first, as in insightface's files
    header0, rest = unpack_record(reader.read(0))
    assert header0.flag == 2 and rest == b""
    np.testing.assert_array_equal(header0.label, [n + 1, n + 1 + k])
    starts = np.concatenate(([1], 1 + np.cumsum(counts)))
    for j in range(k):
        header, rest = unpack_record(reader.read(n + 1 + j))
        assert header.flag == 2 and rest == b""
        np.testing.assert_array_equal(header.label, [starts[j], starts[j + 1]])
    for key, (label, encoded) in enumerate(samples, start=1):
        header, payload = unpack_record(reader.read(key))
        assert header.flag == 0 and header.label == float(label) and payload == encoded

    dataset = RecordDataset(out)
    assert len(dataset) == n and dataset.num_classes == k
    np.testing.assert_array_equal(dataset.labels, np.repeat(np.arange(k), counts))
    assert dataset.labels.dtype == np.int64
    np.testing.assert_array_equal(dataset.image_keys, np.arange(1, n + 1))
    np.testing.assert_array_equal(dataset.class_counts(), counts)
    for index in (0, 4, n - 1):
        expected = decode_image(samples[index][1], "expected")
        np.testing.assert_array_equal(dataset.load_image(index), expected)
        assert dataset.source_of(index) == {"record": index + 1}
    pixels, label = dataset[5]
    assert pixels.shape == (16, 16, 3) and label == int(dataset.labels[5])
    clone = pickle.loads(pickle.dumps(dataset))
    np.testing.assert_array_equal(clone.load_image(2), dataset.load_image(2))


def test_insightface_labels_come_from_identity_records_not_image_headers(tmp_path: Path) -> None:
    out, _ = insightface_dir(tmp_path, [2, 2])
    original = RecordIOReader.read
    touched: list[int] = []

    def spy(self: RecordIOReader, key: int) -> bytes:
        touched.append(int(key))
        return original(self, key)

    RecordIOReader.read = spy  # type: ignore[method-assign]
    try:
        dataset = RecordDataset(out)
    finally:
        RecordIOReader.read = original  # type: ignore[method-assign]
    np.testing.assert_array_equal(dataset.labels, [0, 0, 1, 1])
    assert touched == [0]  # identity records come from the vectorised gather


def test_dataset_without_property_infers_num_classes(tmp_path: Path) -> None:
    out, _ = insightface_dir(tmp_path, [1, 2, 1])
    (out / "property").unlink()
    dataset = RecordDataset(out)
    assert dataset.num_classes == 3 and dataset.image_size is None


def test_labels_beyond_property_num_classes(tmp_path: Path) -> None:
    out, _ = insightface_dir(tmp_path, [2, 3, 1])
    (out / "property").write_text("2,16,16\n")
    with pytest.raises(DataError, match=r"train\.rec: record 6 has label 2 but .*property declares num_classes = 2"):
        RecordDataset(out)


def test_unreadable_image_names_its_record(tmp_path: Path) -> None:
    out = tmp_path / "bad"
    samples = [(0, encode_image(image(1))), (0, b"not an image at all"), (1, encode_image(image(2)))]
    write_insightface_rec(out, samples, 2)
    dataset = RecordDataset(out)
    dataset.load_image(0)
    with pytest.raises(DataError, match=r"train\.rec record 2: cannot decode image"):
        dataset.load_image(1)


def test_empty_datasets_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    write_records(empty, {})
    (empty / "data.rec").rename(empty / "train.rec")
    (empty / "data.idx").rename(empty / "train.idx")
    with pytest.raises(DataError, match="index is empty"):
        RecordDataset(empty)

    header_only = tmp_path / "header_only"
    header_only.mkdir()
    with RecordIOWriter(header_only / "train.rec", header_only / "train.idx") as writer:
        writer.write(0, pack_record(IRHeader(2, [1.0, 1.0])))
    with pytest.raises(DataError, match="record 0: header declares 0 images and 0 identities"):
        RecordDataset(header_only)

    with pytest.raises(DataError, match="no samples given"):
        write_insightface_rec(tmp_path / "none", [], 3)
    assert not (tmp_path / "none" / "train.rec").exists()


@pytest.mark.parametrize(
    "labels, message",
    [
        ([0, 1, 0], "sample 2 has label 0 where 1 or 2 was expected"),
        ([0, 2], "sample 1 has label 2 where 0 or 1 was expected"),
        ([1, 1], "sample 0 has label 1 where 0 was expected"),
        ([0, 0, 1], "samples end at label 1 but num_classes is 3"),
    ],
)
def test_write_insightface_rec_requires_grouped_ascending_labels(
    tmp_path: Path, labels: list[int], message: str
) -> None:
    out = tmp_path / "w"
    with pytest.raises(DataError, match=message):
        write_insightface_rec(out, [(label, b"img") for label in labels], 3)
    assert list(out.iterdir()) == []


def test_identity_ranges_must_be_contiguous(tmp_path: Path) -> None:
    root = tmp_path / "gap"
    root.mkdir()
    with RecordIOWriter(root / "train.rec", root / "train.idx") as writer:
        writer.write(0, pack_record(IRHeader(2, [4.0, 6.0])))
        for key in (1, 2, 3):
            writer.write(key, pack_record(IRHeader(0, 0.0), b"img"))
        writer.write(4, pack_record(IRHeader(2, [1.0, 2.0])))
        writer.write(5, pack_record(IRHeader(2, [3.0, 4.0])))  # key 2 belongs to nobody
    with pytest.raises(DataError, match=r"record 5: identity 1 covers image keys \[3, 4\), expected .* starting at 2"):
        RecordDataset(root)


def test_missing_identity_record(tmp_path: Path) -> None:
    root = tmp_path / "noid"
    root.mkdir()
    with RecordIOWriter(root / "train.rec", root / "train.idx") as writer:
        writer.write(0, pack_record(IRHeader(2, [2.0, 4.0])))
        writer.write(1, pack_record(IRHeader(0, 0.0), b"img"))
        writer.write(2, pack_record(IRHeader(2, [1.0, 2.0])))
    with pytest.raises(DataError, match="no identity record with key 3"):
        RecordDataset(root)


def test_identity_record_with_a_payload_uses_the_slow_path(tmp_path: Path) -> None:
    root = tmp_path / "payload"
    root.mkdir()
    with RecordIOWriter(root / "train.rec", root / "train.idx") as writer:
        writer.write(0, pack_record(IRHeader(2, [3.0, 5.0])))
        writer.write(1, pack_record(IRHeader(0, 0.0), b"a"))
        writer.write(2, pack_record(IRHeader(0, 1.0), b"b"))
        writer.write(3, pack_record(IRHeader(2, [1.0, 2.0]), b"extra"))
        writer.write(4, pack_record(IRHeader(2, [2.0, 3.0]), M))
    np.testing.assert_array_equal(RecordDataset(root).labels, [0, 1])


# --------------------------------------------------------------------------- plain im2rec layout


def im2rec_dir(tmp_path: Path, labels: list, name: str = "plain") -> tuple[Path, list[bytes]]:
    root = tmp_path / name
    root.mkdir()
    images = [encode_image(image(100 + i, 8)) for i in range(len(labels))]
    with RecordIOWriter(root / "train.rec", root / "train.idx") as writer:
        for key, (label, encoded) in enumerate(zip(labels, images)):
            writer.write(key, pack_record(IRHeader(0, label, key, 0), encoded))
    return root, images


def test_flag0_layout_scans_scalar_and_vector_labels(tmp_path: Path) -> None:
    labels = [0.0, [2.0, 9.5], [1.0, 0.0, 3.0], 2.0, [0.0, 1.0]]
    root, images = im2rec_dir(tmp_path, labels)
    dataset = RecordDataset(root)
    np.testing.assert_array_equal(dataset.labels, [0, 2, 1, 2, 0])
    np.testing.assert_array_equal(dataset.image_keys, np.arange(5))
    assert dataset.num_classes == 3 and len(dataset) == 5
    np.testing.assert_array_equal(dataset.load_image(1), decode_image(images[1], "x"))


def test_record0_with_vector_label_and_image_is_an_image(tmp_path: Path) -> None:
    root, _ = im2rec_dir(tmp_path, [[1.0, 4.0], [0.0, 4.0]])
    dataset = RecordDataset(root)
    np.testing.assert_array_equal(dataset.labels, [1, 0])


def test_flag0_header_split_by_magic_falls_back_to_full_read(tmp_path: Path) -> None:
    root = tmp_path / "split"
    root.mkdir()
    with RecordIOWriter(root / "train.rec", root / "train.idx") as writer:
        writer.write(0, pack_record(IRHeader(0, 1.0, 0, 0), b"a"))
        writer.write(1, pack_record(IRHeader(0, 3.0, MAGIC, 0), b"b"))  # id word is the magic: split at 8
        writer.write(2, pack_record(IRHeader(0, [2.0, 0.0], MAGIC << 32, 0), b"c"))
    np.testing.assert_array_equal(RecordDataset(root).labels, [1, 3, 2])


def test_flag0_scan_reports_bad_magic_and_bad_labels(tmp_path: Path) -> None:
    root, _ = im2rec_dir(tmp_path, [0.0, 1.0, 2.0])
    reader = RecordIOReader(root / "train.rec", root / "train.idx")
    offset = reader.offset_of(2)
    data = bytearray((root / "train.rec").read_bytes())
    data[offset] ^= 0x10
    (root / "train.rec").write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"record 2: bad magic 0x[0-9A-F]{{8}} at byte offset {offset}"):
        RecordDataset(root)

    root, _ = im2rec_dir(tmp_path, [0.0, 1.5, 2.0], name="frac")
    with pytest.raises(DataError, match="record 1 has label 1.5, expected a non-negative integer"):
        RecordDataset(root)
    root, _ = im2rec_dir(tmp_path, [0.0, 1.0, 5.0], name="prop")
    (root / "property").write_text("3,8,8")
    with pytest.raises(DataError, match="record 2 has label 5 but .*num_classes = 3"):
        RecordDataset(root)


def test_flag0_scan_reports_truncated_record(tmp_path: Path) -> None:
    root, _ = im2rec_dir(tmp_path, [0.0, 1.0])
    rec = root / "train.rec"
    rec.write_bytes(rec.read_bytes()[:-40])
    with pytest.raises(DataError, match="record 1: truncated"):
        RecordDataset(root)


# --------------------------------------------------------------------------- header ids


def swap_offsets(idx: Path, a: int, b: int) -> dict[int, int]:
    """Exchange the byte offsets of keys a and b in an .idx; returns the new key -> offset map."""
    offsets = {int(k): int(o) for k, o in (line.split("\t") for line in idx.read_text().splitlines())}
    offsets[a], offsets[b] = offsets[b], offsets[a]
    idx.write_text("".join(f"{k}\t{o}\n" for k, o in offsets.items()))
    return offsets


def test_unmodified_files_follow_the_id_convention(tmp_path: Path) -> None:
    out, samples = insightface_dir(tmp_path, [3, 1, 4, 2])
    dataset = RecordDataset(out)
    assert dataset.ids_follow_keys
    for index, (_, encoded) in enumerate(samples):
        np.testing.assert_array_equal(dataset.load_image(index), decode_image(encoded, "expected"))
    root, _ = im2rec_dir(tmp_path, [0.0, 1.0, 2.0, 1.0])
    assert RecordDataset(root).ids_follow_keys


def test_swapped_idx_offsets_are_refused_when_the_dataset_opens(tmp_path: Path) -> None:
    out, _ = insightface_dir(tmp_path, [3, 1, 4, 2])
    offsets = swap_offsets(out / "train.idx", 2, 6)
    with pytest.raises(DataError, match=rf"train\.rec: record 2 at byte offset {offsets[2]} has header id 6, "
                                        rf"expected 2: train\.idx points this key at another record"):
        RecordDataset(out)

    root, _ = im2rec_dir(tmp_path, [0.0, 1.0, 2.0, 1.0, 0.0])
    offsets = swap_offsets(root / "train.idx", 4, 1)
    with pytest.raises(DataError, match=rf"record 1 at byte offset {offsets[1]} has header id 4, expected 1"):
        RecordDataset(root)


def test_swapped_offsets_outside_the_open_sample_are_refused_on_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, samples = insightface_dir(tmp_path, [3, 1, 4, 2])
    offsets = swap_offsets(out / "train.idx", 3, 8)
    monkeypatch.setattr(recordio, "_ID_SAMPLE", 2)  # only keys 1 and 10 are sampled at open
    dataset = RecordDataset(out)
    assert dataset.ids_follow_keys
    np.testing.assert_array_equal(dataset.load_image(0), decode_image(samples[0][1], "expected"))
    with pytest.raises(DataError, match=rf"record 3 at byte offset {offsets[3]} has header id 8, expected 3"):
        dataset.load_image(2)  # key 3
    with pytest.raises(DataError, match="record 8 .* has header id 3, expected 8"):
        pickle.loads(pickle.dumps(dataset)).load_image(7)  # a worker's copy checks too


def test_files_whose_ids_are_not_keys_are_read(tmp_path: Path) -> None:
    root = tmp_path / "shuffled"  # arcface_torch's shuffle_rec.py: new keys 0.., ids of the source file
    root.mkdir()
    source_ids = [5, 3, 1, 4, 2]
    with RecordIOWriter(root / "train.rec", root / "train.idx") as writer:
        for key, source_id in enumerate(source_ids):
            writer.write(key, pack_record(IRHeader(0, float(source_id % 2), source_id), encode_image(image(key, 8))))
    dataset = RecordDataset(root)
    assert not dataset.ids_follow_keys
    np.testing.assert_array_equal(dataset.labels, [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(dataset.load_image(4), decode_image(encode_image(image(4, 8)), "x"))

    root = tmp_path / "zero_ids"  # a writer that leaves every id 0, in insightface's layout
    root.mkdir()
    with RecordIOWriter(root / "train.rec", root / "train.idx") as writer:
        writer.write(0, pack_record(IRHeader(2, [5.0, 7.0])))
        for key in range(1, 5):
            writer.write(key, pack_record(IRHeader(0, float((key - 1) // 2)), encode_image(image(key, 8))))
        writer.write(5, pack_record(IRHeader(2, [1.0, 3.0])))
        writer.write(6, pack_record(IRHeader(2, [3.0, 5.0])))
    dataset = RecordDataset(root)
    assert not dataset.ids_follow_keys
    np.testing.assert_array_equal(dataset.load_image(3), decode_image(encode_image(image(4, 8)), "x"))


# --------------------------------------------------------------------------- property


@pytest.mark.parametrize("text", ["", "85742,112", "a,112,112", "0,112,112", "10,112,112,3"])
def test_malformed_property(tmp_path: Path, text: str) -> None:
    (tmp_path / "property").write_text(text)
    with pytest.raises(DataError, match="property: expected 'num_classes,height,width'"):
        read_property(tmp_path / "property")


def test_property_missing_and_valid(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="property file not found"):
        read_property(tmp_path / "property")
    (tmp_path / "property").write_text("85742,112,112\n")
    assert read_property(tmp_path / "property") == (85742, 112, 112)
