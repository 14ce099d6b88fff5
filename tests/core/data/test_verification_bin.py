"""Verification .bin: round trip, the published pickle flavours, and refusing hostile pickles."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from core.data.base import decode_image, encode_image
from core.data.verification_bin import load_verification_pairs, read_verification_bin, write_verification_bin
from core.errors import DataError


def encoded_images(count: int, size: int = 12) -> list[bytes]:
    rng = np.random.default_rng(count)
    return [encode_image(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def test_round_trip(tmp_path: Path) -> None:
    images = encoded_images(6)
    flags = [True, False, True]
    path = tmp_path / "lfw.bin"
    write_verification_bin(path, images, flags)
    assert [p.name for p in tmp_path.iterdir()] == ["lfw.bin"]  # no temporary left behind

    read_images, read_flags = read_verification_bin(path)
    assert read_images == images
    assert read_flags.dtype == bool and read_flags.tolist() == flags

    with open(path, "rb") as handle:  # what insightface's own load_bin does
        plain_images, plain_flags = pickle.load(handle, encoding="bytes")
    assert plain_images == images and plain_flags == flags

    decoded, decoded_flags = load_verification_pairs(path)
    assert decoded.shape == (6, 12, 12, 3) and decoded.dtype == np.uint8
    for index, encoded in enumerate(images):
        np.testing.assert_array_equal(decoded[index], decode_image(encoded, "expected"))
    assert decoded_flags.tolist() == flags


def test_python2_style_protocol2_pickle_loads(tmp_path: Path) -> None:
    images = encoded_images(4)
    path = tmp_path / "agedb_30.bin"
    path.write_bytes(pickle.dumps((images, [True, False]), protocol=2))
    read_images, flags = read_verification_bin(path)
    assert read_images == images and flags.tolist() == [True, False]


def short_string(raw: bytes) -> bytes:
    return b"U" + bytes([len(raw)]) + raw  # SHORT_BINSTRING: a Python 2 str


def test_python2_pickle_of_cv2_imencode_arrays_loads(tmp_path: Path) -> None:
    # cfp_fp.bin / agedb_30.bin were packed from cv2.imencode output under Python 2: each
    # image is a pickled uint8 numpy array of shape (n, 1), strings are Python 2 str.
    jpeg = encoded_images(1)[0]

    def py2_array(raw: bytes) -> bytes:
        return (
            b"cnumpy.core.multiarray\n_reconstruct\n"
            b"cnumpy\nndarray\n"
            b"K\x00\x85" + short_string(b"b") + b"\x87R"
            b"(K\x01K" + bytes([len(raw)]) + b"K\x01\x86"
            b"cnumpy\ndtype\n" + short_string(b"u1") + b"K\x00K\x01\x87R"
            b"(K\x03" + short_string(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
            b"\x89" + short_string(raw) + b"tb"
        )

    data = (
        b"\x80\x02(]("
        + py2_array(jpeg[:200])
        + short_string(jpeg[:150])
        + b"e](\x88e"  # one pair: True
        + b"t."
    )
    assert len(jpeg) >= 200
    path = tmp_path / "cfp_fp.bin"
    path.write_bytes(data)
    images, flags = read_verification_bin(path)
    assert images == [jpeg[:200], jpeg[:150]] and flags.tolist() == [True]


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_python3_pickle_of_numpy_arrays_and_numpy_bools_loads(tmp_path: Path, protocol: int) -> None:
    images = encoded_images(2)
    arrays = [np.frombuffer(image, dtype=np.uint8).reshape(-1, 1) for image in images]
    path = tmp_path / "x.bin"
    path.write_bytes(pickle.dumps((arrays, [np.bool_(False)]), protocol=protocol))
    read_images, flags = read_verification_bin(path)
    assert read_images == images and flags.tolist() == [False]
    path.write_bytes(pickle.dumps((images, np.array([True])), protocol=protocol))
    assert read_verification_bin(path)[1].tolist() == [True]


class _ShellPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _OpenPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_malicious_os_system_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([_ShellPayload(marker), b"x"], [True]), protocol=2))
    with pytest.raises(DataError, match=r"evil\.bin: refuses to load global (posix|nt|os)\.system"):
        read_verification_bin(path)
    assert not marker.exists()


def test_malicious_open_pickle_is_refused_though_plain_pickle_would_run_it(tmp_path: Path) -> None:
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(_OpenPayload(live))).close()
    assert live.exists()  # the payload really acts under plain pickle

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    for protocol in (2, 4):
        path.write_bytes(pickle.dumps(([b"a", _OpenPayload(marker)], [False]), protocol=protocol))
        with pytest.raises(DataError, match=r"refuses to load global (builtins|_?io)\.open"):
            read_verification_bin(path)
    assert not marker.exists()


def test_numpy_object_arrays_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "obj.bin"
    path.write_bytes(pickle.dumps(([np.array([b"a", b"b"], dtype=object)], []), protocol=2))
    with pytest.raises(DataError, match="refuses numpy dtype 'O"):
        read_verification_bin(path)


def test_codecs_encode_only_for_latin1(tmp_path: Path) -> None:
    path = tmp_path / "codec.bin"
    # _codecs.encode("x", "rot13") spelled out at protocol 2
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R.")
    with pytest.raises(DataError, match="refuses _codecs.encode with encoding 'rot13'"):
        read_verification_bin(path)


def test_counts_that_disagree_name_both(tmp_path: Path) -> None:
    path = tmp_path / "lfw.bin"
    path.write_bytes(pickle.dumps((encoded_images(5), [True, False]), protocol=2))
    with pytest.raises(DataError, match=r"lfw\.bin: 5 images but 2 pair flags"):
        read_verification_bin(path)
    with pytest.raises(DataError, match="3 images but 1 pair flags"):
        write_verification_bin(tmp_path / "out.bin", encoded_images(3), [True])
    assert not (tmp_path / "out.bin").exists()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.bin: verification \.bin not found"):
        read_verification_bin(tmp_path / "nope.bin")


@pytest.mark.parametrize("content", [b"", b"hello, not a pickle", b"\x80\x02(]q\x00"])
def test_not_a_pickle(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.bin"
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"junk\.bin: not a readable verification \.bin pickle"):
        read_verification_bin(path)


@pytest.mark.parametrize(
    "content, message",
    [
        ({"a": 1}, "expected a pickled pair .* got a dict"),
        (([b"a", b"b"], [], [True]), "got a tuple of length 3"),
        ((b"ab", [True]), "images are a bytes"),
        (([b"a", 7], [True]), "image 1 is a int"),
        (([b"a", b"b"], ["yes"]), "pair flag 0 is 'yes'"),
        (([b"a", b"b"], 1), "pair flags are a int"),
    ],
)
def test_wrong_structure(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "odd.bin"
    path.write_bytes(pickle.dumps(content, protocol=4))
    with pytest.raises(DataError, match=message):
        read_verification_bin(path)


def test_decode_errors_name_file_and_index(tmp_path: Path) -> None:
    images = encoded_images(4)
    images[3] = b"broken"
    path = tmp_path / "bad.bin"
    write_verification_bin(path, images, [True, False])
    with pytest.raises(DataError, match=r"bad\.bin image 3: cannot decode image"):
        load_verification_pairs(path)

    mixed = encoded_images(2) + encoded_images(2, size=8)
    write_verification_bin(path, mixed, [True, True])
    with pytest.raises(DataError, match=r"bad\.bin image 2: decoded shape \(8, 8, 3\)"):
        load_verification_pairs(path)

    write_verification_bin(path, [], [])
    assert read_verification_bin(path)[0] == []
    with pytest.raises(DataError, match="holds no pairs"):
        load_verification_pairs(path)
