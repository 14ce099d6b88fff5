"""Writing datasets in insightface's formats: any dataset packed into ``.rec``, LFW-style pairs into ``.bin``.

Both are written beside their final name and moved into place when complete, so an
interrupted command leaves no half-written set that a training could pick up.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm import tqdm

from core.data.base import FaceDataset, decode_image, encode_image
from core.errors import ConfigError, DataError

REC_FILES = ("train.rec", "train.idx", "property")
MIN_PAIRS = 10  # the verification protocol's folds


def pack_rec(data: str | Path, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Pack ``data`` (a folder of identities, a list file, or another ``.rec``) into ``out_dir``'s train.rec,
    train.idx and property. Image files go in as they are (JPEG or PNG bytes, as insightface's readers take
    them); records of another ``.rec`` are re-encoded as JPEG."""
    from core.data.loader import open_dataset
    from core.data.recordio import write_insightface_rec
    from core.io import staging_folder

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"--out {out_dir}: exists and is not an empty directory; choose a new directory")
    dataset = open_dataset(data)
    if len(dataset) == 0:
        raise DataError(f"--data {data}: the dataset holds no images")
    height, width = dataset.load_image(0).shape[:2]
    order = np.argsort(np.asarray(dataset.labels), kind="stable")  # a .rec holds each identity's images together
    samples = _encoded_samples(dataset, order, (height, width), progress)
    with staging_folder(out_dir.parent, ".pack-") as staging:
        written = write_insightface_rec(staging, samples, int(dataset.num_classes), image_size=(height, width))
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in REC_FILES:
            os.replace(staging / name, out_dir / name)
    return {"images": written, "classes": int(dataset.num_classes), "image_size": [int(height), int(width)]}


def _encoded_samples(dataset: FaceDataset, order: np.ndarray, size: tuple[int, int],
                     progress: bool) -> Iterator[tuple[int, bytes]]:
    """Each image's bytes in ``order``, every one decoded first: an undecodable file, or one of another size than
    the ``property`` file will declare (arcface_torch's loader does not resize), fails here, naming it."""
    from core.data.folder import record_reference

    paths = getattr(dataset, "paths", None)
    for index in tqdm(order, desc="packing", unit="image", disable=not progress, mininterval=1.0):
        path = None if paths is None else paths[index]
        if path is not None and not record_reference(path):
            encoded = Path(path).read_bytes()  # read once: decoded to check it, then packed as it is
            image = decode_image(encoded, str(path))
        else:
            image = dataset.load_image(int(index))
            encoded = None
        if image.shape[:2] != size:
            where = dataset.source_of(int(index)) or {"index": int(index)}
            raise DataError(f"{next(iter(where.values()))}: {image.shape[1]}x{image.shape[0]} pixels, but the set's "
                            f"first image is {size[1]}x{size[0]}; a .rec holds aligned crops of one size")
        yield int(dataset.labels[index]), encoded if encoded is not None else encode_image(image)


def write_pairs_bin(pairs_file: str | Path, images_dir: str | Path, out: str | Path) -> dict[str, int]:
    """An insightface verification ``.bin`` from an LFW-style pairs.txt over a folder of aligned crops; every
    image is decoded first, so a set that evaluation would refuse is never written."""
    from core.data.pairs import read_pair_images
    from core.data.verification_bin import decode_pair_images, write_verification_bin

    if Path(out).suffix != ".bin":
        raise ConfigError(f"--out {out}: a verification set is a .bin file (lfw.bin); give a name ending in .bin")
    encoded, names, issame = read_pair_images(pairs_file, images_dir)
    decode_pair_images(encoded, names)
    if len(issame) < MIN_PAIRS or issame.all() or not issame.any():
        raise DataError(f"--pairs {pairs_file}: {len(issame)} pairs, {int(issame.sum())} of one person; verification "
                        f"needs at least {MIN_PAIRS} pairs (its 10 folds) and pairs of both kinds")
    write_verification_bin(out, encoded, issame)
    return {"pairs": len(issame), "positive_pairs": int(issame.sum())}
