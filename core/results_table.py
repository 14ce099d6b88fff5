"""The table the papers print: one row per model, verification accuracy per set and IJB TAR at each FAR.

``eval MODEL... --table results.md`` writes it as Markdown (percentages, accuracy ± its
std over the 10 folds) and, beside it, as CSV with the raw numbers for a spreadsheet or
a plot; ``--roc roc.png`` draws the IJB ROC curves of every model in one figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import pandas as pd

from core.io import atomic_path, atomic_write_text


def check_outputs(table: Optional[str | Path], roc: Optional[str | Path], has_ijb: bool) -> None:
    """Refuse ``--table`` / ``--roc`` names that would fail, before hours of evaluation rather than after."""
    from core.errors import ConfigError
    from core.figures import figure_format_of

    if table is not None and Path(table).suffix.lower() != ".md":
        raise ConfigError(f"--table {table}: the table is Markdown with a .csv beside it; give a name ending in .md")
    if roc is not None:
        figure_format_of(roc, "--roc")
        if not has_ijb:
            raise ConfigError(f"--roc {roc}: the ROC curves are IJB's; give --ijb DIR")


def is_ijb(result: dict[str, Any]) -> bool:
    """An IJB result (TAR at FARs over templates) rather than a pairs set's (accuracy over folds)."""
    return "accuracy" not in result and "tar_at_far" in result


def table_frames(rows: Sequence[tuple[str, dict[str, Any]]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(shown, raw)``: the Markdown table's cells and the CSV's numbers, one row per ``(model, metrics)``."""
    shown, raw = [], []
    for model, metrics in rows:
        cells: dict[str, str] = {"model": model}
        numbers: dict[str, Any] = {"model": model}
        for name, result in metrics.items():
            if name.startswith("_"):
                continue
            if is_ijb(result):
                for far, tar in result["tar_at_far"].items():
                    cells[f"{name} TAR@FAR={far}"] = f"{100 * tar:.2f}"
                    numbers[f"{name}_tar_at_far_{far}"] = tar
                found = result.get("identification")
                if found is not None:
                    cells[f"{name} rank-1"] = f"{100 * found['rank1']:.2f}"
                    numbers[f"{name}_rank1"] = found["rank1"]
                    for fpir, tpir in found["tpir_at_fpir"].items():
                        cells[f"{name} TPIR@FPIR={fpir}"] = f"{100 * tpir:.2f}"
                        numbers[f"{name}_tpir_at_fpir_{fpir}"] = tpir
            else:
                cells[f"{name} acc. %"] = f"{100 * result['accuracy']:.2f} ± {100 * result['accuracy_std']:.2f}"
                numbers[f"{name}_accuracy"] = result["accuracy"]
                numbers[f"{name}_accuracy_std"] = result["accuracy_std"]
        shown.append(cells)
        raw.append(numbers)
    return pd.DataFrame(shown).fillna("–"), pd.DataFrame(raw)


def write_table(rows: Sequence[tuple[str, dict[str, Any]]], path: str | Path) -> tuple[Path, Path]:
    """``path`` (Markdown) and ``path`` with ``.csv``, written through temporary names."""
    path = Path(path)
    shown, raw = table_frames(rows)
    header = "| " + " | ".join(shown.columns) + " |"
    rule = "|" + "|".join("---" for _ in shown.columns) + "|"
    lines = [header, rule] + ["| " + " | ".join(str(value) for value in row) + " |"
                              for row in shown.itertuples(index=False)]
    atomic_write_text(path, "\n".join(lines) + "\n")
    csv_path = path.with_suffix(".csv")
    with atomic_path(csv_path) as tmp:
        raw.to_csv(tmp, index=False)
    return path, csv_path


def roc_figure(rows: Sequence[tuple[str, dict[str, Any]]], path: str | Path) -> Path:
    """Every model's ROC on every IJB set it was evaluated on, TAR against FAR on a log axis."""
    from matplotlib.figure import Figure

    from core.figures import save_figure

    figure = Figure(figsize=(6.4, 4.6))
    axes = figure.add_subplot()
    for model, metrics in rows:
        for name, result in metrics.items():
            if not name.startswith("_") and is_ijb(result):
                label = f"{model}: {name} (TAR@1e-4 {100 * result['tar_at_far']['1e-04']:.2f})"
                axes.plot(result["roc"]["far"], [100 * tar for tar in result["roc"]["tar"]], label=label)
    axes.set_xscale("log")
    axes.set_xlim(1e-6, 1)
    axes.set_xlabel("false accept rate (log)")
    axes.set_ylabel("true accept rate %")
    axes.set_title("IJB 1:1 verification: ROC")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=8, loc="lower right")
    return save_figure(figure, path)
