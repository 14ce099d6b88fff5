"""LFW-style ``pairs.txt`` with a folder of images: the custom verification sets researchers bring.

The format is LFW's: an optional header of numbers (folds, pairs per fold), then one
pair per line, ``name n1 n2`` for two images of one person or ``name1 n1 name2 n2`` for
two people, image ``n`` of ``name`` being ``DIR/name/name_000n.jpg`` (``.png`` and
``.jpeg`` are looked for too). Fields are separated by tabs or spaces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg")


def read_pairs(pairs_file: str | Path, images_dir: str | Path) -> tuple[list[Path], np.ndarray]:
    """The ``2N`` image files of the pairs, in order, and the ``N`` same-person flags."""
    pairs_file, images_dir = Path(pairs_file), Path(images_dir)
    if not pairs_file.is_file():
        raise DataError(f"--pairs {pairs_file}: file not found")
    if not images_dir.is_dir():
        raise DataError(f"--images {images_dir}: not a directory")
    paths: list[Path] = []
    flags: list[bool] = []
    for number, line in enumerate(pairs_file.read_text(errors="replace").splitlines(), 1):
        fields = line.split()
        if not fields or (number == 1 and all(field.isdigit() for field in fields)):
            continue  # a blank line, or the header of folds and pairs per fold
        where = f"{pairs_file} line {number}"
        if len(fields) == 3:
            name, first, second = fields
            people = [(name, first), (name, second)]
        elif len(fields) == 4:
            people = [(fields[0], fields[1]), (fields[2], fields[3])]
        else:
            raise DataError(f"{where}: expected 'name n1 n2' (same person) or 'name1 n1 name2 n2', got "
                            f"{line.strip()!r}")
        for name, image in people:
            if not image.isdigit():
                raise DataError(f"{where}: image number {image!r} of {name} is not a whole number")
            paths.append(_image_file(images_dir, name, int(image), where))
        flags.append(len(fields) == 3)
    if not flags:
        raise DataError(f"{pairs_file}: holds no pairs")
    return paths, np.asarray(flags, dtype=bool)


def _image_file(images_dir: Path, name: str, number: int, where: str) -> Path:
    stem = images_dir / name / f"{name}_{number:04d}"
    for suffix in IMAGE_SUFFIXES:
        if stem.with_suffix(suffix).is_file():
            return stem.with_suffix(suffix)
    raise DataError(f"{where}: image {number} of {name} not found (looked for {stem}.jpg, .png, .jpeg)")


def read_pair_images(pairs_file: str | Path, images_dir: str | Path) -> tuple[list[bytes], list[str], np.ndarray]:
    """The pairs' encoded image files as they are on disk, their names (for errors) and the flags."""
    paths, flags = read_pairs(pairs_file, images_dir)
    return [path.read_bytes() for path in paths], [str(path) for path in paths], flags
