"""Contact sheets: the faces behind the report's most suspect rows, so a reviewer can judge them by eye.

A cosine says two labels *may* be one person and a score says an image *may* carry the
wrong label; only the faces settle it. Each sheet row shows a few images per group (a
suspect pair's two classes; a flagged sample, its given class and the class it looks
like), labelled with the ids and the number behind the suspicion, and, when the data
came with ground truth, whether the row is a true hit. Rows and groups sit on a fixed
grid, so the eye can run down a column.

Example images of a class are its first few dataset indices (the sheet's suspect samples
left out): the same sheet on every run of the same data, and no more than a few dozen
decodes whatever the dataset size. An image that cannot be decoded becomes a grey
placeholder marked "unreadable" and is listed, so one bad record never costs the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont, ImageOps

from analysis.report import Report
from core.errors import DataError
from core.io import atomic_path

if TYPE_CHECKING:
    from analysis.runner import Analysis

TILE = 64  # thumbnail side, pixels
SHEET_ROWS = 8  # suspect rows per sheet
EXAMPLES_PER_CLASS = 4
TILE_GAP = 4
GROUP_GAP = 18
MARGIN = 10
TITLE_HEIGHT = 18  # the row's title line
CAPTION_HEIGHT = 16  # a group's caption line, above its tiles
ROW_GAP = 10
ROW_HEIGHT = TITLE_HEIGHT + CAPTION_HEIGHT + TILE + ROW_GAP
FONT_SIZE = 12
PLACEHOLDER_FONT_SIZE = 10
JPEG_QUALITY = 90

BACKGROUND = (255, 255, 255)
TEXT = (34, 34, 34)
MUTED = (110, 110, 110)
HIT_BAND = (222, 242, 222)  # behind rows the ground truth confirms
HIT_TEXT = (20, 110, 20)
PLACEHOLDER = (150, 150, 150)
PLACEHOLDER_CROSS = (185, 185, 185)


@dataclass
class TileGroup:
    """Images shown side by side under one caption (a class's examples, or the flagged sample)."""

    caption: str
    indices: list[int]  # dataset indices, left to right


@dataclass
class SheetRow:
    """One suspect: a title, its groups of images, and what the ground truth says of it (None: unknown)."""

    title: str
    groups: list[TileGroup]
    truth: Optional[bool] = None
    truth_text: str = ""  # e.g. "TRUE SPLIT" / "not a split (ground truth)"


@dataclass
class ContactSheet:
    """The rendered sheet and the images that could not be decoded (their error messages)."""

    image: Image.Image
    unreadable: list[str] = field(default_factory=list)


def class_examples(labels: np.ndarray, classes: Sequence[int], count: int = EXAMPLES_PER_CLASS,
                   exclude: Sequence[int] = ()) -> dict[int, list[int]]:
    """The first ``count`` dataset indices of each class in ``classes`` (``exclude`` left out).

    First, not random: the same data gives the same sheet, and one pass over the labels
    finds every class's examples.
    """
    labels = np.asarray(labels)
    wanted = np.unique(np.asarray([c for c in classes if c >= 0], dtype=np.int64))
    members = np.flatnonzero(np.isin(labels, wanted))
    members = members[~np.isin(members, np.asarray(exclude, dtype=np.int64))]
    member_labels = labels[members]
    return {int(c): members[member_labels == c][:count].tolist() for c in wanted}


def group_width(tiles: int) -> int:
    return tiles * (TILE + TILE_GAP) - TILE_GAP


def sheet_width(slots: Sequence[int]) -> int:
    """Width of the tile grid for groups of ``slots`` tiles each (long titles may widen the sheet)."""
    return 2 * MARGIN + sum(group_width(s) for s in slots) + (len(slots) - 1) * GROUP_GAP


def sheet_height(rows: int) -> int:
    return 2 * MARGIN + rows * ROW_HEIGHT - ROW_GAP


def tile_origin(row: int, group: int, slot: int, slots: Sequence[int]) -> tuple[int, int]:
    """Top-left pixel of tile ``slot`` of group ``group`` in sheet row ``row``."""
    left = MARGIN + sum(group_width(s) + GROUP_GAP for s in slots[:group])
    top = MARGIN + row * ROW_HEIGHT + TITLE_HEIGHT + CAPTION_HEIGHT
    return left + slot * (TILE + TILE_GAP), top


@lru_cache(maxsize=2)
def _font(size: int = FONT_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int, size: int = FONT_SIZE) -> str:
    """``text``, cut with an ellipsis to fit ``width`` pixels."""
    if draw.textlength(text, font=_font(size)) <= width:
        return text
    while text and draw.textlength(text + "...", font=_font(size)) > width:
        text = text[:-1]
    return text + "..."


def thumbnail(image: np.ndarray) -> Image.Image:
    """An image scaled to fit a TILE square, letterboxed (never cropped: a face's chin or hair is evidence)."""
    picture = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    return ImageOps.pad(picture, (TILE, TILE), method=Image.Resampling.LANCZOS, color=BACKGROUND)


def placeholder() -> Image.Image:
    """A grey tile, crossed and labelled, standing in for an image that could not be decoded."""
    tile = Image.new("RGB", (TILE, TILE), PLACEHOLDER)
    draw = ImageDraw.Draw(tile)
    draw.line((0, 0, TILE - 1, TILE - 1), fill=PLACEHOLDER_CROSS, width=2)
    draw.line((0, TILE - 1, TILE - 1, 0), fill=PLACEHOLDER_CROSS, width=2)
    label = _fit(draw, "unreadable", TILE - 4, PLACEHOLDER_FONT_SIZE)
    width = draw.textlength(label, font=_font(PLACEHOLDER_FONT_SIZE))
    draw.rectangle((0, TILE // 2 - 7, TILE - 1, TILE // 2 + 6), fill=PLACEHOLDER)
    draw.text(((TILE - width) / 2, TILE // 2 - 6), label, fill=(255, 255, 255), font=_font(PLACEHOLDER_FONT_SIZE))
    return tile


def grid_slots(rows: Sequence[SheetRow]) -> list[int]:
    """Tile places per group column: the most images any row shows in that group (at least one)."""
    columns = {len(row.groups) for row in rows}
    if len(columns) > 1:
        raise ValueError(f"sheet rows have different numbers of groups: {sorted(columns)}")
    return [max(1, *(len(row.groups[g].indices) for row in rows)) for g in range(columns.pop() if columns else 0)]


def render_sheet(rows: Sequence[SheetRow], load_image: Callable[[int], np.ndarray]) -> ContactSheet:
    """Draw ``rows`` on one grid (``grid_slots``), so group g of every row starts at the same column.

    ``load_image(index)`` decodes a dataset image (``FaceDataset.load_image``); a
    DataError or OSError from it gives a placeholder tile and an entry in ``unreadable``.
    """
    slots = grid_slots(rows)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    title_width = max((probe.textlength(f"{r.title}   {r.truth_text}", font=_font()) for r in rows), default=0)
    width = max(sheet_width(slots), int(title_width) + 2 * MARGIN)
    sheet = Image.new("RGB", (width, sheet_height(len(rows))), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    unreadable: list[str] = []
    for r, row in enumerate(rows):
        top = MARGIN + r * ROW_HEIGHT
        if row.truth:
            draw.rectangle((MARGIN // 2, top - ROW_GAP // 2 + 1, width - MARGIN // 2,
                            top + ROW_HEIGHT - ROW_GAP // 2 - 2), fill=HIT_BAND)
        draw.text((MARGIN, top + 2), row.title, fill=TEXT, font=_font())
        if row.truth_text:
            after = MARGIN + draw.textlength(row.title + "   ", font=_font())
            draw.text((after, top + 2), row.truth_text, fill=HIT_TEXT if row.truth else MUTED, font=_font())
        for g, group in enumerate(row.groups):
            left, tiles_top = tile_origin(r, g, 0, slots)
            draw.text((left, tiles_top - CAPTION_HEIGHT + 1), _fit(draw, group.caption, group_width(slots[g])),
                      fill=MUTED, font=_font())
            for slot, index in enumerate(group.indices):  # a class with fewer images leaves places blank
                try:
                    tile = thumbnail(load_image(index))
                except (DataError, OSError) as exc:
                    unreadable.append(str(exc))
                    tile = placeholder()
                sheet.paste(tile, tile_origin(r, g, slot, slots))
    return ContactSheet(image=sheet, unreadable=unreadable)


def write_sheet(sheet: ContactSheet, path: Path) -> None:
    """The sheet as a JPEG (faces compress well; no chroma subsampling keeps the captions sharp), atomically."""
    with atomic_path(path) as tmp:
        sheet.image.save(tmp, format="JPEG", quality=JPEG_QUALITY, subsampling=0)


def truth_text(truth: Optional[bool], hit: str, miss: str) -> str:
    """The ground truth's word on a row: ``hit`` / ``miss``, or nothing when there is no ground truth."""
    if truth is None:
        return ""
    return hit if truth else miss


def _truth_at(truth: Optional[np.ndarray], row: int) -> Optional[bool]:
    return None if truth is None else bool(truth[row])


def conflict_rows(table: pd.DataFrame, labels: np.ndarray, truth: Optional[np.ndarray] = None,
                  rows: int = SHEET_ROWS) -> list[SheetRow]:
    """Sheet rows for the first ``rows`` pairs of conflict.csv: examples of label a beside label b.

    ``truth``: per table row, is the pair a split identity (``conflict_positives``)?
    """
    top = table.head(rows)
    examples = class_examples(labels, [*top["label_a"], *top["label_b"]])
    out = []
    for i, pair in enumerate(top.to_dict("records")):
        a, b = int(pair["label_a"]), int(pair["label_b"])
        llr = "" if pd.isna(pair["same_person_llr"]) else f"   LLR {pair['same_person_llr']:.2f}"
        hit = _truth_at(truth, i)
        out.append(SheetRow(
            title=f"{i + 1}. labels {a} + {b}   cosine {pair['similarity']:.4f}{llr}",
            groups=[TileGroup(f"label {a} ({int(pair['count_a']):,} images)", examples[a]),
                    TileGroup(f"label {b} ({int(pair['count_b']):,} images)", examples[b])],
            truth=hit, truth_text=truth_text(hit, "TRUE SPLIT: one person", "not a split (ground truth)")))
    return out


def noise_rows(table: pd.DataFrame, labels: np.ndarray, truth: Optional[np.ndarray] = None,
               rows: int = SHEET_ROWS) -> list[SheetRow]:
    """Sheet rows for the first ``rows`` samples of noise.csv: the sample, examples of its given class and of
    its nearest other class. The sheet's own suspects are left out of the examples: a class's examples
    should show what the class looks like, not another suspect.

    ``truth``: per table row, was the sample's label flipped (``noise_positives``)?
    """
    top = table.head(rows)
    suspects = top["index"].astype(np.int64).tolist()
    examples = class_examples(labels, [*top["label"], *top["nearest_label"]], exclude=suspects)
    out = []
    for i, sample in enumerate(top.to_dict("records")):
        index, own, nearest = int(sample["index"]), int(sample["label"]), int(sample["nearest_label"])
        record = "" if pd.isna(sample["record"]) else f" (record {int(sample['record'])})"
        hit = _truth_at(truth, i)
        looks_like = (TileGroup(f"nearest: label {nearest}", examples[nearest]) if nearest >= 0
                      else TileGroup("no other class", []))
        out.append(SheetRow(
            title=f"{i + 1}. sample {index}{record}   label {own}, {looks_like.caption}   score {sample['score']:.4f}",
            groups=[TileGroup("sample", [index]), TileGroup(f"given: label {own}", examples[own]), looks_like],
            truth=hit, truth_text=truth_text(hit, "TRUE FLIP: label was changed", "not flipped (ground truth)")))
    return out


def add_sheet(analysis: "Analysis", report: Report, rows: Sequence[SheetRow], name: str, caption: str) -> None:
    """Render ``rows`` from the analysed dataset's images into ``name`` and put it in the report.

    Nothing is written for no rows. Undecodable images are named in the caption, so a
    grey tile is never mistaken for a grey face.
    """
    if not rows:
        return
    sheet = render_sheet(rows, analysis.inputs.dataset.load_image)
    write_sheet(sheet, analysis.file(name))
    if sheet.unreadable:
        caption += (f" {len(sheet.unreadable)} image(s) could not be decoded and are shown as grey tiles marked "
                    f"'unreadable' (first: {sheet.unreadable[0]}).")
    report.image(name, caption)
