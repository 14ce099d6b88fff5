"""insightface verification sets (lfw.bin, cfp_fp.bin, agedb_30.bin, ...) read and written.

A .bin is a pickle of ``(images, issame)``: 2N encoded images (pair i is images 2i and
2i+1) and N booleans. The published files are Python-2 pickles, so they load with
``encoding="bytes"``. Some were packed from ``cv2.imencode`` output, so their images are
pickled numpy uint8 arrays rather than byte strings, which is why numpy array
reconstruction is admitted at all.

Pickle runs code named by the file. These files are downloaded from mirrors and shared
drives, so loading goes through an unpickler that resolves only the handful of globals
the legitimate files use (with their arguments checked) and refuses everything else
before it can be called.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from core.data.base import decode_image
from core.errors import DataError
from core.io import atomic_path

# numpy moved these between numpy.core and numpy._core; asking an object for its reducer
# finds them wherever this numpy keeps them without importing a deprecated module path.
NUMPY_RECONSTRUCT = np.zeros(1, dtype=np.uint8).__reduce__()[0]
NUMPY_SCALAR = np.bool_(True).__reduce__()[0]
_NUMPY_FROMBUFFER = np.zeros(1, dtype=np.uint8).__reduce_ex__(5)[0]  # protocol-5 arrays
_SAFE_DTYPE_KINDS = "biu"  # bool, signed and unsigned integers: plain bytes, no objects


class _NdarrayToken:
    """Stands in for ``numpy.ndarray`` so a pickle can name it only as _reconstruct's subtype."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, where: str) -> None:
        super().__init__(file, encoding="bytes")
        self._where = where
        self._allowed: dict[tuple[str, str], Any] = {
            ("_codecs", "encode"): self._latin1_encode,
            ("numpy", "ndarray"): _NdarrayToken,
            ("numpy", "dtype"): self._dtype,
        }
        for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            self._allowed[(module, "_reconstruct")] = self._reconstruct
            self._allowed[(module, "scalar")] = self._scalar
        for module in ("numpy.core.numeric", "numpy._core.numeric"):
            self._allowed[(module, "_frombuffer")] = self._frombuffer

    def find_class(self, module: str, name: str) -> Any:
        found = self._allowed.get((module, name))
        if found is None:
            raise DataError(
                f"{self._where}: refuses to load global {module}.{name}; a verification .bin holds only "
                f"encoded images and booleans, so this file is corrupt or malicious"
            )
        return found

    def _refuse(self, what: str) -> DataError:
        return DataError(f"{self._where}: refuses {what} while unpickling a verification .bin")

    def _latin1_encode(self, text: Any, encoding: Any = "utf-8") -> bytes:
        # Python 3 pickles bytes at protocol <= 2 as _codecs.encode(str, "latin1").
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise self._refuse(f"_codecs.encode with encoding {encoding!r}")
        return text.encode("latin-1")

    def _dtype(self, spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
        if isinstance(spec, bytes):
            spec = spec.decode("latin-1")
        if not isinstance(spec, str) or not isinstance(align, (bool, int)) or not isinstance(copy, (bool, int)):
            raise self._refuse(f"numpy.dtype({spec!r})")
        try:
            dtype = np.dtype(spec)
        except TypeError:
            raise self._refuse(f"numpy.dtype({spec!r})") from None
        if dtype.kind not in _SAFE_DTYPE_KINDS:
            raise self._refuse(f"numpy dtype {spec!r} (only bool and integer arrays are expected)")
        return np.dtype(spec, bool(align), bool(copy))

    def _reconstruct(self, subtype: Any, shape: Any, dtype_char: Any) -> np.ndarray:
        if subtype is not _NdarrayToken:
            raise self._refuse(f"array reconstruction of {subtype!r}")
        return NUMPY_RECONSTRUCT(np.ndarray, shape, dtype_char)

    def _frombuffer(self, buffer: Any, dtype: Any, shape: Any, order: Any, *rest: Any) -> np.ndarray:
        # Python >= 3.8 with pickle.HIGHEST_PROTOCOL stores cv2.imencode arrays this way.
        if not isinstance(buffer, (bytes, bytearray)) or not isinstance(dtype, np.dtype):
            raise self._refuse(f"numpy array from a {type(buffer).__name__} buffer")
        if dtype.kind not in _SAFE_DTYPE_KINDS:
            raise self._refuse(f"numpy array of dtype {dtype!r}")
        return _NUMPY_FROMBUFFER(buffer, dtype, shape, order, *rest)

    def _scalar(self, dtype: Any, data: Any = None) -> Any:
        if not isinstance(dtype, np.dtype) or dtype.kind not in _SAFE_DTYPE_KINDS:
            raise self._refuse(f"numpy scalar of dtype {dtype!r}")
        return NUMPY_SCALAR(dtype, data)


def _as_image_bytes(item: Any, index: int, where: str) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, bytearray):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype in (np.uint8, np.int8):
        return item.tobytes()
    raise DataError(f"{where}: image {index} is a {type(item).__name__}, expected encoded image bytes")


def _as_flags(issame: Any, where: str) -> np.ndarray:
    if isinstance(issame, np.ndarray):
        if issame.dtype.kind not in _SAFE_DTYPE_KINDS or issame.ndim != 1:
            raise DataError(
                f"{where}: pair flags are a {issame.dtype} array of shape {issame.shape}, expected booleans"
            )
        values = list(issame.tolist())
    elif isinstance(issame, (list, tuple)):
        values = list(issame)
    else:
        raise DataError(f"{where}: pair flags are a {type(issame).__name__}, expected a list of booleans")
    flags = np.empty(len(values), dtype=bool)
    for index, value in enumerate(values):
        if isinstance(value, (bool, np.bool_)):
            flags[index] = bool(value)
        elif isinstance(value, (int, np.integer)) and value in (0, 1):
            flags[index] = bool(value)
        else:
            raise DataError(f"{where}: pair flag {index} is {value!r}, expected a boolean")
    return flags


def read_verification_bin(path: str | Path) -> tuple[list[bytes], np.ndarray]:
    """The 2N encoded images and N same-identity flags of a verification .bin."""
    path = Path(path)
    where = str(path)
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{where}: verification .bin not found") from None
    except OSError as exc:
        raise DataError(f"{where}: cannot open verification .bin ({exc})") from exc
    with handle:
        from core.data.recordio import MAGIC

        if handle.read(4) == struct.pack("<I", MAGIC):  # a .rec under another name: say so, not "unpickling"
            raise DataError(f"{where}: a RecordIO file (training data), not a verification .bin of image pairs")
        handle.seek(0)
        try:
            content = _RestrictedUnpickler(handle, where).load()
        except DataError:
            raise
        except Exception as exc:  # a damaged pickle can fail in any of a dozen ways
            raise DataError(
                f"{where}: not a readable verification .bin pickle ({type(exc).__name__}: {exc})"
            ) from exc
    if not isinstance(content, (tuple, list)) or len(content) != 2:
        size = f" of length {len(content)}" if isinstance(content, (tuple, list)) else ""
        raise DataError(
            f"{where}: expected a pickled pair (images, issame_list), got a {type(content).__name__}{size}"
        )
    raw_images, raw_flags = content
    if not isinstance(raw_images, (list, tuple)):
        raise DataError(f"{where}: images are a {type(raw_images).__name__}, expected a list of encoded images")
    images = [_as_image_bytes(item, index, where) for index, item in enumerate(raw_images)]
    flags = _as_flags(raw_flags, where)
    if len(images) != 2 * len(flags):
        raise DataError(
            f"{where}: {len(images)} images but {len(flags)} pair flags; expected 2 images per pair "
            f"({2 * len(flags)} images)"
        )
    return images, flags


def write_verification_bin(path: str | Path, images: Sequence[bytes], issame: Sequence[bool]) -> None:
    """Write a .bin that insightface's own ``load_bin`` reads, atomically.

    Protocol 4 with plain bytes and bools: no globals at all, so the file loads under the
    restricted unpickler and under a plain ``pickle.load``.
    """
    path = Path(path)
    payload = [_as_image_bytes(item, index, f"write_verification_bin({path})") for index, item in enumerate(images)]
    flags = [bool(flag) for flag in _as_flags(list(issame), f"write_verification_bin({path})")]
    if len(payload) != 2 * len(flags):
        raise DataError(
            f"write_verification_bin({path}): {len(payload)} images but {len(flags)} pair flags; "
            f"expected 2 images per pair ({2 * len(flags)} images)"
        )
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        pickle.dump((payload, flags), handle, protocol=4)


def load_verification_pairs(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Decoded images ``uint8 [2N, H, W, 3]`` and flags ``bool [N]``, ready for evaluation.

    Decoding up front (once per run) keeps JPEG decoding out of every evaluation pass.
    """
    images, flags = read_verification_bin(path)
    if not images:
        raise DataError(f"{path}: verification .bin holds no pairs")
    return decode_pair_images(images, [f"{path} image {index}" for index in range(len(images))]), flags


def decode_pair_images(images: Sequence[bytes], names: Sequence[str]) -> np.ndarray:
    """Encoded images decoded into one ``uint8 [2N, H, W, 3]`` array; ``names[i]`` names image i in errors.
    Pairs are aligned crops of one size (112 x 112 in insightface's sets), so another size is an error."""
    first = decode_image(images[0], names[0])
    decoded = np.empty((len(images),) + first.shape, dtype=np.uint8)
    decoded[0] = first
    for index in range(1, len(images)):
        image = decode_image(images[index], names[index])
        if image.shape != first.shape:
            raise DataError(f"{names[index]}: decoded shape {image.shape}, but {names[0]} is {first.shape}; pairs "
                            "are aligned crops of one size")
        decoded[index] = image
    return decoded
