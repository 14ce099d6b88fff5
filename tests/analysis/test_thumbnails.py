"""Contact sheets: grid geometry, which images go where, unreadable images, rows built from the CSV tables."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from analysis.thumbnails import (MARGIN, PLACEHOLDER, ROW_HEIGHT, TILE, TILE_GAP, SheetRow, TileGroup,
                                 class_examples, conflict_rows, noise_rows, render_sheet, sheet_height, sheet_width,
                                 tile_origin, write_sheet)
from core.errors import DataError

# Dataset index i is a uniform image of COLOURS[i], in shapes that are not the tile's (letterboxed).
COLOURS = np.random.default_rng(0).integers(0, 256, size=(12, 3), dtype=np.uint8)


def uniform_image(index: int) -> np.ndarray:
    height, width = (112, 112) if index % 2 else (90, 40)
    return np.broadcast_to(COLOURS[index], (height, width, 3)).copy()


def rows_of(*groups_per_row: list[list[int]]) -> list[SheetRow]:
    return [SheetRow(title=f"row {r}", groups=[TileGroup(f"g{g}", list(indices)) for g, indices in enumerate(groups)])
            for r, groups in enumerate(groups_per_row)]


def tile_centre(sheet: Image.Image, row: int, group: int, slot: int, slots: list[int]) -> tuple[int, ...]:
    left, top = tile_origin(row, group, slot, slots)
    return sheet.getpixel((left + TILE // 2, top + TILE // 2))


def test_sheet_size_follows_rows_and_tiles():
    two_rows = render_sheet(rows_of([[0], [1, 2, 3]], [[4], [5]]), uniform_image).image
    assert two_rows.size == (sheet_width([1, 3]), sheet_height(2))
    three_rows = render_sheet(rows_of([[0], [1, 2, 3]], [[4], [5]], [[6], [7, 8, 9, 10]]), uniform_image).image
    # a row adds one row height; a fourth tile in the widest group adds one tile and one gap
    assert three_rows.size == (two_rows.width + TILE + TILE_GAP, two_rows.height + ROW_HEIGHT)
    assert sheet_width([1, 3]) > 4 * TILE + 2 * MARGIN


def test_each_tile_shows_its_image_at_its_grid_place():
    rows = rows_of([[0], [1, 2, 3]], [[4], [5]], [[6, 7], [8, 9, 10, 11]])
    sheet = render_sheet(rows, uniform_image).image
    slots = [2, 4]
    for r, row in enumerate(rows):
        for g, group in enumerate(row.groups):
            for slot, index in enumerate(group.indices):
                assert np.abs(np.subtract(tile_centre(sheet, r, g, slot, slots), COLOURS[index])).max() <= 1
    # row 1 shows one image in group 1: its other places stay background
    assert tile_centre(sheet, 1, 1, 1, slots) == (255, 255, 255)


def test_an_unreadable_image_becomes_a_placeholder_and_is_reported(tmp_path):
    def load(index: int) -> np.ndarray:
        if index == 2:
            raise DataError("train.rec record 3: cannot decode image (truncated)")
        return uniform_image(index)

    sheet = render_sheet(rows_of([[0, 1], [2, 3]]), load)
    assert sheet.unreadable == ["train.rec record 3: cannot decode image (truncated)"]
    left, top = tile_origin(0, 1, 0, [2, 2])
    assert sheet.image.getpixel((left + TILE // 2, top + 4)) == PLACEHOLDER  # grey, above its label
    assert np.abs(np.subtract(tile_centre(sheet.image, 0, 1, 1, [2, 2]), COLOURS[3])).max() <= 1
    write_sheet(sheet, tmp_path / "sheet.jpg")
    with Image.open(tmp_path / "sheet.jpg") as written:
        assert written.format == "JPEG" and written.size == sheet.image.size


def test_examples_are_the_first_images_of_each_class_without_the_suspects():
    labels = np.array([0, 1, 0, 2, 0, 0, 1, 1])
    assert class_examples(labels, [0, 1, -1, 3], count=2, exclude=[2]) == {0: [0, 4], 1: [1, 6], 3: []}


def test_rows_from_the_csv_tables_carry_the_ground_truth():
    labels = np.array([0, 0, 1, 1, 2, 2, 0])
    conflict = pd.DataFrame({"label_a": [0, 1], "label_b": [1, 2], "similarity": [0.91, 0.5], "count_a": [3, 2],
                             "count_b": [2, 2], "same_person_llr": [4.0, np.nan]})
    pairs = conflict_rows(conflict, labels, truth=np.array([True, False]))
    assert [[g.indices for g in row.groups] for row in pairs] == [[[0, 1, 6], [2, 3]], [[2, 3], [4, 5]]]
    assert pairs[0].truth is True and "TRUE SPLIT" in pairs[0].truth_text and "LLR 4.00" in pairs[0].title
    assert pairs[1].truth is False and "not a split" in pairs[1].truth_text and "LLR" not in pairs[1].title
    assert conflict_rows(conflict, labels)[0].truth_text == ""  # no ground truth: no claim either way

    noise = pd.DataFrame({"index": [6, 2], "record": pd.array([7, pd.NA], dtype="Int64"), "label": [0, 1],
                          "nearest_label": [2, -1], "score": [0.8, 0.1]})
    samples = noise_rows(noise, labels, truth=np.array([True, False]))
    # the sample, its given class, the class it looks like; suspects (6 and 2) never serve as examples
    assert [[g.indices for g in row.groups] for row in samples] == [[[6], [0, 1], [4, 5]], [[2], [3], []]]
    assert "(record 7)" in samples[0].title and "record" not in samples[1].title
    assert samples[0].truth is True and samples[1].truth is False
    sheet = render_sheet(samples, uniform_image).image  # an empty group ("no other class") still renders
    assert sheet.width >= sheet_width([1, 2, 2])


def test_rows_must_share_their_groups():
    with pytest.raises(ValueError, match="different numbers of groups"):
        render_sheet(rows_of([[0], [1]], [[2]]), uniform_image)


def test_the_report_names_the_images_it_could_not_decode(tmp_path):
    from types import SimpleNamespace

    from analysis.report import Report
    from analysis.thumbnails import add_sheet

    def load(index: int) -> np.ndarray:
        if index == 1:
            raise DataError("faces/id01/003.jpg: cannot decode image")
        return uniform_image(index)

    analysis = SimpleNamespace(inputs=SimpleNamespace(dataset=SimpleNamespace(load_image=load)),
                               file=lambda name: tmp_path / name)
    report = Report(title="t")
    add_sheet(analysis, report, rows_of([[0], [1, 2]]), "sheet.jpg", "Faces.")
    add_sheet(analysis, report, [], "empty.jpg", "Nothing.")
    assert (tmp_path / "sheet.jpg").is_file() and not (tmp_path / "empty.jpg").exists()
    assert report.blocks == [("image", ("sheet.jpg", "Faces. 1 image(s) could not be decoded and are shown as grey "
                                                     "tiles marked 'unreadable' (first: faces/id01/003.jpg: cannot "
                                                     "decode image)."))]
