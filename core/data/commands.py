"""``python cli.py data ...``: make the synthetic default set, and inspect any dataset or .bin."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import click

from core.errors import FaceQueueError
from core.figures import FIGURE_FORMATS


@click.group()
def data() -> None:
    """Make and inspect datasets (.rec directories, folders, lists, .bin pair sets)."""


@data.command(name="make-synthetic")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory to create.")
@click.option("--identities", default=600, show_default=True, help="Training identities.")
@click.option("--heldout", default=100, show_default=True, help="Held-out identities for val.bin.")
@click.option("--flip-noise", default=0.0, show_default=True, help="Fraction of images given a wrong label.")
@click.option("--split", default=0.0, show_default=True, help="Fraction of identities split under two labels.")
@click.option("--min-images", default=2, show_default=True)
@click.option("--max-images", default=80, show_default=True)
@click.option("--seed", default=0, show_default=True)
def make_synthetic(out: str, identities: int, heldout: int, flip_noise: float, split: float, min_images: int,
                   max_images: int, seed: int) -> None:
    """Render long-tailed synthetic identities with known noise as train.rec + val.bin + ground_truth.json."""
    from core.data.synthetic import SyntheticConfig, make_synthetic_dataset

    summary = make_synthetic_dataset(out, SyntheticConfig(
        identities=identities, heldout_identities=heldout, flip_noise=flip_noise, split=split,
        min_images=min_images, max_images=max_images, seed=seed))
    click.echo(f"Wrote {summary['num_images']} images of {summary['num_classes']} classes to {out} "
               f"({summary.get('num_flipped', 0)} flipped labels, {summary.get('num_split_pairs', 0)} split pairs).")
    plot = Path(out).with_name(Path(out).name + "-counts.png")  # beside the dataset: regenerating replaces it whole
    click.echo(f"Next: python cli.py data inspect {out} --plot {plot}  |  "
               f"python cli.py train --method pfc --data {out}"
               + (" --val val   (val.bin beside the data)" if (Path(out) / "val.bin").exists() else ""))


@data.command()
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="One JSON line.")
@click.option("--plot", type=click.Path(dir_okay=False),
              help="Write the images-per-class histogram here; its suffix picks the format (.png, .pdf, .svg).")
def inspect(path: str, as_json: bool, plot: Optional[str]) -> None:
    """Counts of a dataset (images, classes, images per class) or of a .bin (pairs, positives)."""
    from core.data.inspect import inspect_path, plot_class_histogram

    if plot is not None and Path(plot).suffix.lower()[1:] not in FIGURE_FORMATS:
        raise FaceQueueError(f"--plot {plot!r}: the suffix names the figure's format; give a file name ending in "
                             f".{', .'.join(FIGURE_FORMATS)}")
    summary = inspect_path(path)
    if plot and "counts" not in summary:
        raise FaceQueueError(f"--plot {plot}: {path} holds verification pairs, not classes; the histogram of "
                             "images per class needs a dataset")
    if plot:
        plot_class_histogram(summary["counts"], plot, name=Path(path).resolve().name)
    public = {k: v for k, v in summary.items() if k != "counts"}
    if as_json:  # every field the text lists
        click.echo(json.dumps(public | ({"histogram": str(plot)} if plot else {})))
        return
    for key, value in public.items():
        click.echo(f"{key}: {value}")
    if plot:
        click.echo(f"histogram: {plot}")
