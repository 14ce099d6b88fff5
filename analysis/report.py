"""One report, two renderings: ``report.md`` for terminals and diffs, ``report.html`` for browsers.

Analyses append blocks (headings, paragraphs, key figures, tables, images) to a
``Report``; both files are rendered from the same blocks, so they can never disagree.
Images are referenced by file name, relative to the report, so an output directory can
be moved or archived whole. Both files are written atomically.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from core.io import atomic_write_text

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
DEFAULT_TOP_ROWS = 15

_CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.88em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; }
td.text { text-align: left; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.4em 0; }
figure { margin: 1em 0; }
figcaption { color: #555; font-size: 0.9em; }
code { background: #f5f5f5; padding: 1px 4px; }
"""


def format_value(value: Any, group: bool = True) -> str:
    """Numbers as people read them: 4 decimals; counts with thousands separators (``group``),
    identifiers (labels, record keys, row numbers in data tables) without."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}" if group else str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.4g}"
        return f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


@dataclass
class Report:
    """Blocks in order; ``write`` renders them to Markdown and HTML."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (level, text)))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("paragraph", text))

    def bullets(self, items: Sequence[str]) -> None:
        self.blocks.append(("bullets", list(items)))

    def figures(self, values: dict[str, Any], caption: str = "Key figures") -> None:
        """Name / value pairs: the numbers a reader came for."""
        self.table(pd.DataFrame({"figure": list(values), "value": [format_value(v) for v in values.values()]}),
                   caption, max_rows=len(values))

    def table(self, frame: pd.DataFrame, caption: str, max_rows: int = DEFAULT_TOP_ROWS) -> None:
        """The first ``max_rows`` rows, without the columns that are empty in all of them.

        A CSV keeps one schema for every method and every kind of data, so some of its
        columns are empty in a given run (``center_norm`` of class means, ``record`` of
        folder data); in the report they would only push the numbers off the screen.
        The caption names what was left out, so the report and the CSV still agree.
        """
        shown = frame.head(max_rows)
        empty = [] if shown.empty else [column for column in shown.columns
                                        if all(format_value(value) == "" for value in shown[column])]
        self.blocks.append(("table", (shown.drop(columns=empty), _caption(caption, len(shown), len(frame), empty))))

    def image(self, path: str | Path, caption: str) -> None:
        self.blocks.append(("image", (Path(path).name, caption)))

    # -- rendering ---------------------------------------------------------------------
    def to_markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        for kind, payload in self.blocks:
            if kind == "heading":
                level, text = payload
                lines += ["#" * level + " " + text, ""]
            elif kind == "paragraph":
                lines += [payload, ""]
            elif kind == "bullets":
                lines += [f"- {item}" for item in payload] + [""]
            elif kind == "table":
                frame, title = payload
                lines += ([title, ""] if title else []) + _markdown_table(frame) + [""]
            elif kind == "image":
                name, caption = payload
                # Markdown viewers show no PDF inline: a link to it instead
                shown = f"[{name}]({name})" if name.endswith(".pdf") else f"![{caption}]({name})"
                lines += [shown, "", f"*{caption}*", ""]
        return "\n".join(lines).rstrip() + "\n"

    def to_html(self) -> str:
        esc = html.escape
        parts = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\">", f"<title>{esc(self.title)}</title>",
                 f"<style>{_CSS}</style></head><body>", f"<h1>{esc(self.title)}</h1>"]
        for kind, payload in self.blocks:
            if kind == "heading":
                level, text = payload
                parts.append(f"<h{level}>{esc(text)}</h{level}>")
            elif kind == "paragraph":
                parts.append(f"<p>{inline_html(payload)}</p>")
            elif kind == "bullets":
                parts.append("<ul>" + "".join(f"<li>{inline_html(item)}</li>" for item in payload) + "</ul>")
            elif kind == "table":
                frame, title = payload
                if title:
                    parts.append(f"<p><b>{esc(title)}</b></p>")
                parts.append(_html_table(frame))
            elif kind == "image":
                name, caption = payload
                if name.endswith(".pdf"):  # browsers show a PDF in an <object>; the link is for those that do not
                    shown = (f"<object data=\"{esc(name)}\" type=\"application/pdf\" width=\"100%\" height=\"520\">"
                             f"<a href=\"{esc(name)}\">{esc(name)}</a></object>")
                else:
                    shown = f"<img src=\"{esc(name)}\" alt=\"{esc(caption)}\">"
                parts.append(f"<figure>{shown}<figcaption>{esc(caption)}</figcaption></figure>")
        parts.append("</body></html>")
        return "\n".join(parts) + "\n"

    def write(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Both renderings, atomically; returns ``(report.html, report.md)``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / REPORT_MD, self.to_markdown())
        atomic_write_text(out / REPORT_HTML, self.to_html())
        return out / REPORT_HTML, out / REPORT_MD


def _caption(caption: str, shown: int, total: int, left_out: Sequence[str] = ()) -> str:
    notes = ([f"top {shown} of {total:,} rows"] if total > shown else []) + (
        [f"empty here, not shown: {', '.join(map(str, left_out))}"] if left_out else [])
    if not notes:
        return caption
    return f"{caption} ({'; '.join(notes)})".strip()


def _cell(value: Any) -> str:
    return format_value(value, group=False).replace("|", "\\|")


def _markdown_table(frame: pd.DataFrame) -> list[str]:
    if frame.empty:
        return ["(no rows)"]
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    rows = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return [header, rule, *rows]


def _html_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "<p>(no rows)</p>"
    esc = html.escape
    head = "".join(f"<th>{esc(str(c))}</th>" for c in frame.columns)
    body = []
    for row in frame.itertuples(index=False):
        cells = []
        for value in row:
            text = format_value(value, group=False)
            css = " class=\"text\"" if isinstance(value, str) else ""
            cells.append(f"<td{css}>{esc(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


_BOLD = re.compile(r"\*\*(.+?)\*\*")


def inline_html(text: str) -> str:
    """Report text (Markdown's inline `code` and **bold**) as HTML, everything else escaped.

    Escaping comes first, so text that looks like a tag stays text; bold is not looked
    for inside code spans, where Markdown shows asterisks as they are.
    """
    pieces = html.escape(text).split("`")
    return "".join(f"<code>{piece}</code>" if i % 2 else _BOLD.sub(r"<b>\1</b>", piece)
                   for i, piece in enumerate(pieces))


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """CSV through a temporary name, so a reader (or --write-clean's user) never sees half a table."""
    from core.io import atomic_path

    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path
