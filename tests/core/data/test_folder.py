"""Folder-per-identity and list-file datasets: labels, round trips and every bad input."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data.folder import FolderDataset, ListDataset, write_list
from core.errors import DataError


def write_png(path: Path, seed: int, size: tuple[int, int] = (5, 4)) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[0], size[1], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG")
    return pixels


@pytest.fixture
def face_folder(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path / "faces"
    pixels = {
        "zoe/b.png": write_png(root / "zoe" / "b.png", 0),
        "zoe/a.PNG": write_png(root / "zoe" / "a.PNG", 1),
        "adam/01.png": write_png(root / "adam" / "01.png", 2),
        "mia/x.png": write_png(root / "mia" / "x.png", 3),
        "mia/y.png": write_png(root / "mia" / "y.png", 4),
    }
    (root / "zoe" / "notes.txt").write_text("not an image")
    (root / "mia" / ".hidden.png").write_bytes(b"")
    (root / ".ipynb_checkpoints").mkdir()
    (root / "README.txt").write_text("top-level files are not identities")
    return root, pixels


def test_folder_dataset_labels_paths_and_pixels(face_folder) -> None:
    root, pixels = face_folder
    dataset = FolderDataset(root)
    assert dataset.class_names == ["adam", "mia", "zoe"]
    assert dataset.num_classes == 3
    assert dataset.labels.dtype == np.int64
    assert dataset.labels.tolist() == [0, 1, 1, 2, 2]
    relative = [str(Path(p).relative_to(root)).replace("\\", "/") for p in dataset.paths]
    assert relative == ["adam/01.png", "mia/x.png", "mia/y.png", "zoe/a.PNG", "zoe/b.png"]
    assert len(dataset) == 5
    assert dataset.class_counts().tolist() == [1, 2, 2]
    for index, name in enumerate(relative):
        np.testing.assert_array_equal(dataset.load_image(index), pixels[name])
        assert dataset.source_of(index) == {"path": dataset.paths[index]}
    image, label = dataset[3]
    np.testing.assert_array_equal(image, pixels["zoe/a.PNG"])
    assert label == 2


def test_folder_dataset_applies_transform(face_folder) -> None:
    root, pixels = face_folder
    dataset = FolderDataset(root, transform=lambda image: image.shape)
    assert dataset[0] == ((5, 4, 3), 0)


def test_folder_dataset_accepts_every_extension_case_insensitively(tmp_path: Path) -> None:
    root = tmp_path / "faces"
    pixels = np.full((3, 3, 3), 200, dtype=np.uint8)
    for name, fmt in [("a.jpg", "JPEG"), ("b.JPEG", "JPEG"), ("c.Png", "PNG"), ("d.bmp", "BMP")]:
        (root / "id").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / "id" / name, format=fmt)
    dataset = FolderDataset(root)
    assert [Path(p).name for p in dataset.paths] == ["a.jpg", "b.JPEG", "c.Png", "d.bmp"]
    np.testing.assert_array_equal(dataset.load_image(3), pixels)  # BMP is lossless too


def test_folder_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        FolderDataset(tmp_path / "missing")
    a_file = tmp_path / "file.png"
    a_file.write_bytes(b"")
    with pytest.raises(DataError, match="expected a folder"):
        FolderDataset(a_file)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=re.escape(f"{empty}: no identity sub-folders")):
        FolderDataset(empty)
    root = tmp_path / "faces"
    write_png(root / "alice" / "1.png", 0)
    (root / "bob").mkdir()
    (root / "bob" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=re.escape(f"{root / 'bob'}: identity folder has no images")):
        FolderDataset(root)


def test_folder_dataset_missing_and_corrupt_files_name_the_path(face_folder) -> None:
    root, _ = face_folder
    dataset = FolderDataset(root)
    Path(dataset.paths[0]).unlink()
    with pytest.raises(DataError, match=re.escape(f"{dataset.paths[0]}: image file not found")):
        dataset.load_image(0)
    Path(dataset.paths[1]).write_bytes(b"not a png")
    with pytest.raises(DataError, match=re.escape(f"{dataset.paths[1]}: cannot decode")):
        dataset.load_image(1)


def test_list_dataset_relative_paths_comments_and_numeric_labels(tmp_path: Path) -> None:
    pixels_a = write_png(tmp_path / "imgs" / "with space.png", 0)
    pixels_b = write_png(tmp_path / "imgs" / "b.png", 1)
    pixels_c = write_png(tmp_path / "elsewhere" / "c.png", 2)
    list_file = tmp_path / "lists" / "train.txt"
    list_file.parent.mkdir()
    list_file.write_text(
        "# cleaned list\n"
        "\n"
        "../imgs/with space.png 10\n"
        "   # indented comment\n"
        "../imgs/b.png\t2\n"
        f"{tmp_path / 'elsewhere' / 'c.png'}   10\n"
        "../imgs/b.png 7\n"
    )
    dataset = ListDataset(list_file)
    # numeric order 2 < 7 < 10, not string order "10" < "2" < "7"
    assert dataset.class_names == ["2", "7", "10"]
    assert dataset.num_classes == 3
    assert dataset.labels.dtype == np.int64
    assert dataset.labels.tolist() == [2, 0, 2, 1]
    assert dataset.paths[0] == str(tmp_path / "lists" / ".." / "imgs" / "with space.png")
    assert dataset.paths[2] == str(tmp_path / "elsewhere" / "c.png")
    np.testing.assert_array_equal(dataset.load_image(0), pixels_a)
    np.testing.assert_array_equal(dataset.load_image(1), pixels_b)
    np.testing.assert_array_equal(dataset.load_image(2), pixels_c)
    assert dataset.source_of(1) == {"path": dataset.paths[1]}


def test_list_dataset_string_labels_sort_lexicographically(tmp_path: Path) -> None:
    list_file = tmp_path / "list.txt"
    list_file.write_text("a.png bob\nb.png 10\nc.png alice\nd.png bob\n")
    dataset = ListDataset(list_file)
    assert dataset.class_names == ["10", "alice", "bob"]
    assert dataset.labels.tolist() == [2, 0, 1, 2]


def test_list_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="list file does not exist"):
        ListDataset(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="expected a text file"):
        ListDataset(tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(DataError, match=re.escape(f"{empty}: list file has no")):
        ListDataset(empty)
    no_label = tmp_path / "no_label.txt"
    no_label.write_text("# header\na.png 0\nb.png\n")
    with pytest.raises(DataError, match=re.escape(f"{no_label}:3: expected 'path label'")):
        ListDataset(no_label)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00a.png 0\n")
    with pytest.raises(DataError, match="cannot read list file"):
        ListDataset(binary)
    dangling = tmp_path / "dangling.txt"
    dangling.write_text("gone.png 0\n")
    dataset = ListDataset(dangling)
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'gone.png'}: image file not found")):
        dataset.load_image(0)


def test_write_list_round_trip(face_folder, tmp_path: Path) -> None:
    root, pixels = face_folder
    folder = FolderDataset(root)
    keep = [0, 2, 4]
    out = tmp_path / "runs" / "clean" / "kept.txt"
    write_list(out, [folder.paths[i] for i in keep], folder.labels[keep])
    assert not [p for p in out.parent.iterdir() if p.name != "kept.txt"]  # no temp file left
    reread = ListDataset(out)
    assert reread.paths == [folder.paths[i] for i in keep]
    assert reread.class_names == ["0", "1", "2"]
    assert reread.labels.tolist() == folder.labels[keep].tolist()
    for position, index in enumerate(keep):
        np.testing.assert_array_equal(reread.load_image(position), folder.load_image(index))


def test_write_list_relative_paths_and_overwrite(tmp_path: Path) -> None:
    pixels = write_png(tmp_path / "data" / "my face.png", 5)
    out = tmp_path / "data" / "list.txt"
    out.write_text("stale contents without a label\n")
    write_list(out, ["my face.png", "my face.png"], [3, np.int64(1)])
    assert out.read_text() == "my face.png 3\nmy face.png 1\n"
    reread = ListDataset(out)
    assert reread.labels.tolist() == [1, 0]
    np.testing.assert_array_equal(reread.load_image(0), pixels)


@pytest.mark.parametrize(
    "paths, labels, message",
    [
        (["a.png"], [0, 1], "1 paths but 2 labels"),
        (["a\nb.png"], [0], "entry 0 has a path"),
        ([" a.png"], [0], "entry 0 has a path"),
        (["#a.png"], [0], "entry 0 has a path"),
        (["a.png", ""], [0, 1], "entry 1 has a path"),
        (["a.png"], [1.5], "entry 0 has a non-integer label"),
    ],
)
def test_write_list_rejects_what_cannot_be_read_back(tmp_path: Path, paths, labels, message: str) -> None:
    out = tmp_path / "list.txt"
    with pytest.raises(DataError, match=message):
        write_list(out, paths, labels)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_list_of_record_references_reads_the_records(tiny_rec, tmp_path):
    from core.data.loader import open_dataset
    from core.data.recordio import RecordDataset

    records = RecordDataset(tiny_rec)
    keep = [0, 5, 17, 40]
    write_list(tmp_path / "clean.txt", [f"{tiny_rec / 'train.rec'}#{records.image_keys[i]}" for i in keep],
               [int(records.labels[i]) for i in keep])
    cleaned = open_dataset(tmp_path / "clean.txt")
    for position, index in enumerate(keep):
        assert np.array_equal(cleaned.load_image(position), records.load_image(index))
        assert cleaned.source_of(position)["record"] == records.image_keys[index]
