"""Every figure the project draws, saved one way: PNG to look at, PDF or SVG for a paper.

Each plotting command takes ``--figure-format png|pdf|svg`` (``figure_format_option``)
and names its files ``STEM.FORMAT``. Figures are built on ``matplotlib.figure.Figure``
(the Agg canvas), not pyplot, so no global state or display backend is touched, and
each file is written through a temporary name: a report never links to half an image.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import click

from core.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIGURE_FORMATS = ("png", "pdf", "svg")
# Sharp on a laptop screen and in a slide; vector formats ignore it.
PNG_DPI = 150


def figure_format_of(path: str | Path, option: Optional[str] = None) -> str:
    """The format ``path``'s suffix names; an error naming ``option`` (or the path) when it names none, so that a
    command can check a figure's name before the work that draws it."""
    figure_format = Path(path).suffix[1:].lower()
    if figure_format not in FIGURE_FORMATS:
        where = f"{option} {path}" if option else str(path)
        raise ConfigError(f"{where}: the suffix names the figure's format; give a file name ending in "
                          f".{', .'.join(FIGURE_FORMATS)}")
    return figure_format


def save_figure(figure: "Figure", path: str | Path) -> Path:
    """Write ``figure`` in the format its suffix names (one of FIGURE_FORMATS), atomically."""
    path = Path(path)
    figure_format = figure_format_of(path)
    from core.io import atomic_path  # torch comes with it: not for commands that only parse their options

    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=figure_format, dpi=PNG_DPI)
    return path


def figure_file(stem: str, figure_format: str) -> str:
    """The file name of figure ``stem`` in ``figure_format``."""
    if figure_format not in FIGURE_FORMATS:
        raise ConfigError(f"--figure-format must be one of {', '.join(FIGURE_FORMATS)}, got {figure_format!r}")
    return f"{stem}.{figure_format}"


def figure_files(stems: tuple[str, ...] | list[str]) -> set[str]:
    """Every name figure ``stems`` may have on disk: what a command that replaces its figures removes."""
    return {figure_file(stem, figure_format) for stem in stems for figure_format in FIGURE_FORMATS}


def figure_format_option(default: str | None = "png") -> Callable[[Callable], Callable]:
    """The ``--figure-format`` flag, alike on every plotting command (``train`` leaves it unset, None, so that
    a --config file can give it)."""
    return click.option("--figure-format", type=click.Choice(FIGURE_FORMATS), default=default,
                        show_default=default is not None,
                        help="Format of the figures: png to look at, pdf or svg (vector) for a paper.")
