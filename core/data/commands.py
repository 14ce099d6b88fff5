"""``python cli.py data ...``: make the synthetic default set, and inspect any dataset or .bin."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import click

from core.data.synthetic_choices import FLIP_TARGETS, RENDERERS
from core.errors import FaceQueueError
from core.figures import figure_format_of


@click.group()
def data() -> None:
    """Make and inspect datasets (.rec directories, folders, lists, .bin pair sets)."""


@data.command(name="make-synthetic")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory to create.")
@click.option("--identities", default=600, show_default=True, help="Training identities.")
@click.option("--heldout", default=100, show_default=True, help="Held-out identities for val.bin.")
@click.option("--flip-noise", default=0.0, show_default=True, help="Fraction of images given a wrong label.")
@click.option("--split", default=0.0, show_default=True, help="Fraction of identities split under two labels.")
@click.option("--flip-target", type=click.Choice(FLIP_TARGETS), default="uniform", show_default=True,
              help="Where a flipped label points: any other identity, or one of the 3 that look most alike.")
@click.option("--open-set", default=0.0, show_default=True,
              help="Add this share of images of people outside the set, each under a random training label.")
@click.option("--renderer", type=click.Choice(RENDERERS), default="faces", show_default=True,
              help="faces, or abstract badges in families of look-alikes (shapes).")
@click.option("--min-images", default=2, show_default=True)
@click.option("--max-images", default=80, show_default=True)
@click.option("--zipf-exponent", default=1.25, show_default=True, help="Tail of the images-per-identity law.")
@click.option("--seed", default=0, show_default=True)
def make_synthetic(out: str, identities: int, heldout: int, flip_noise: float, split: float, flip_target: str,
                   open_set: float, renderer: str, min_images: int, max_images: int, zipf_exponent: float,
                   seed: int) -> None:
    """Render long-tailed synthetic identities with known noise as train.rec + val.bin + ground_truth.json."""
    from core.data.synthetic import SyntheticConfig, make_synthetic_dataset

    summary = make_synthetic_dataset(out, SyntheticConfig(
        identities=identities, heldout_identities=heldout, flip_noise=flip_noise, split=split,
        flip_target=flip_target, open_set=open_set, renderer=renderer, min_images=min_images,
        max_images=max_images, zipf_exponent=zipf_exponent, seed=seed))
    click.echo(f"Wrote {summary['num_images']} images of {summary['num_classes']} classes to {out} "
               f"({summary.get('num_flipped', 0)} flipped labels, {summary.get('num_open_set', 0)} open-set images, "
               f"{summary.get('num_split_pairs', 0)} split pairs).")
    plot = Path(out).with_name(Path(out).name + "-counts.png")  # beside the dataset: regenerating replaces it whole
    click.echo(f"Next: python cli.py data inspect {out} --plot {plot}  |  "
               f"python cli.py train --method pfc --data {out}"
               + (" --val val   (val.bin beside the data)" if (Path(out) / "val.bin").exists() else ""))


@data.command(name="make-ijb")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="New directory (loose_crop/, meta/).")
@click.option("--identities", default=20, show_default=True, help="Rendered identities, 3 templates each.")
@click.option("--frames-per-media", default=2, show_default=True, help="Faces in each of an identity's 4 media.")
@click.option("--seed", default=0, show_default=True)
def make_ijb(out: str, identities: int, frames_per_media: int, seed: int) -> None:
    """Render a small set in IJB-C's layout, every answer known (loose crops with their true landmarks)."""
    from core.data.synthetic.ijb import IJBConfig, make_ijb_set

    summary = make_ijb_set(out, IJBConfig(identities=identities, frames_per_media=frames_per_media, seed=seed))
    click.echo(f"Wrote {summary['faces']:,} face lines ({summary['images']:,} crops) in {summary['templates']:,} "
               f"templates and {summary['pairs']:,} template pairs ({summary['positive_pairs']:,} of one person) to "
               f"{out}.")
    click.echo(f"Next: python cli.py eval RUN --ijb {out}")


@data.command(name="make-rec")
@click.option("--data", "source", required=True, type=click.Path(exists=True),
              help="A folder of identities, a 'path label' list, or another .rec directory.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="New directory for train.rec/.idx/property.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def make_rec(source: str, out: str, quiet: bool) -> None:
    """Pack a dataset into insightface's train.rec / train.idx / property (read by mxnet and arcface_torch)."""
    from core.data.packing import pack_rec

    summary = pack_rec(source, out, progress=not quiet)
    height, width = summary["image_size"]
    click.echo(f"Wrote {summary['images']:,} images of {summary['classes']:,} classes ({height}x{width}) to {out}.")
    click.echo(f"Next: python cli.py data inspect {out}  |  python cli.py train --method pfc --data {out}")


@data.command(name="make-bin")
@click.option("--pairs", required=True, type=click.Path(dir_okay=False),
              help="LFW-style pairs.txt: 'name n1 n2' (same person) and 'name1 n1 name2 n2' lines.")
@click.option("--images", required=True, type=click.Path(file_okay=False),
              help="Folder of aligned crops, DIR/name/name_0001.jpg.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The .bin to write (e.g. mine.bin).")
def make_bin(pairs: str, images: str, out: str) -> None:
    """Write an insightface verification .bin from pairs.txt and its images (usable as --val)."""
    from core.data.packing import write_pairs_bin

    summary = write_pairs_bin(pairs, images, out)
    click.echo(f"Wrote {out}: {summary['pairs']:,} pairs, {summary['positive_pairs']:,} of one person.")
    click.echo(f"Next: python cli.py eval RUN --val {out}")


@data.command()
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="One JSON line.")
@click.option("--plot", type=click.Path(dir_okay=False),
              help="Write the images-per-class histogram here; its suffix picks the format (.png, .pdf, .svg).")
def inspect(path: str, as_json: bool, plot: Optional[str]) -> None:
    """Counts of a dataset (images, classes, images per class) or of a .bin (pairs, positives)."""
    from core.data.inspect import inspect_path, plot_class_histogram

    if plot is not None:
        figure_format_of(plot, "--plot")
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
