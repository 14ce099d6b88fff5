"""facequeue command line: train | eval | export | analyze | experiment | data | bench.

Entry points stay thin: each command parses options, calls into its package (the
analyze, experiment, data and bench groups live beside their packages), and ends by
saying what it produced and what to run next. Errors
that are the user's to fix (bad files, bad options) print as one line, not a traceback.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

import click

from core.config import CHOICES
from core.errors import FaceQueueError
from core.figures import figure_format_option
from core.method_options import method_choice, method_option_flags
from core.model_options import model_argument


class _Group(click.Group):
    """Turns FaceQueueError and OSError (a path that cannot be read or written) into one line and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (FaceQueueError, OSError) as exc:
            click.echo(f"error: {_one_line(exc)}", err=True)
            sys.exit(2)


def _one_line(exc: BaseException) -> str:
    """The error's own message; a DataLoader worker's re-raised error carries the worker's traceback."""
    message = str(exc)
    if "Original Traceback" in message:  # the last line is "module.ErrorType: the original message"
        last = message.strip().splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return message


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Train face-recognition embeddings with Partial FC or Dynamic Class Queue, and analyse them."""


# -- train ------------------------------------------------------------------------------------
@main.command()
@method_choice()
@click.option("--data", help="'synthetic' (default), a .rec directory, a folder of identities or a list file.")
@click.option("--val", multiple=True, help="Verification .bin file, or a name (lfw, cfp_fp, agedb_30) for NAME.bin "
                                          "beside the training data (repeatable); synthetic data ships val.bin.")
@click.option("--backbone", help="tiny (CPU default), iresnet18/34/50/100, mobilefacenet.")
@click.option("--embedding-size", type=int, help="Dimension of the embedding (insightface: 512).")
@click.option("--input-size", type=int, help="Model input side; defaults to the backbone's.")
@click.option("--init", type=click.Path(exists=True),
              help="Start the backbone from a run's model or bare weights of this --backbone (a state_dict, e.g. "
                   "insightface's backbone.pth); the head starts fresh.")
@click.option("--margin", type=click.Choice(CHOICES["margin"]),
              help="Margin of the softmax (default: the method's recipe, e.g. arcface for pfc, cosface for dcq).")
@click.option("--margin-m", type=float, help="The margin of arcface (0.5) or cosface (0.4).")
@click.option("--margin-combined", nargs=3, type=float, help="m1 m2 m3 of the combined margin.")
@click.option("--scale", type=float, help="Logit scale s.")
@click.option("--straight-through/--exact-gradient", default=None,
              help="ArcFace gradient as insightface computes it (straight through) or exact (default).")
@click.option("--interclass-threshold", type=float, help="Zero non-target cosines above this (duplicates).")
@click.option("--epochs", type=int, help="Epochs the schedule spans.")
@click.option("--max-steps", type=int, help="Stop after this many steps (the schedule still spans --epochs; 0: no "
                                           "cap).")
@click.option("--batch-size", type=int, help="Per-process batch size.")
@click.option("--accumulate", type=int, help="Micro-batches per optimizer step.")
@click.option("--lr", type=float, help="Base learning rate (for the global batch; warm-up then polynomial decay).")
@click.option("--optimizer", type=click.Choice(CHOICES["optimizer"]),
              help="Optimizer of the backbone and center store.")
@click.option("--momentum", type=float, help="SGD momentum (backbone and center store).")
@click.option("--weight-decay", type=float, help="Weight decay (coupled for SGD, decoupled for AdamW).")
@click.option("--warmup-epochs", type=float, help="Epochs of linear lr warm-up.")
@click.option("--lr-power", type=float, help="Power of the polynomial lr decay after the warm-up.")
@click.option("--grad-clip", type=float, help="Max backbone gradient norm (0 disables).")
@click.option("--amp", type=click.Choice(CHOICES["amp"]),
              help="Mixed precision: auto is bf16 autocast on CUDA and off on CPU; fp16 is float16 autocast with "
                   "dynamic loss scaling, for GPUs without bf16 (V100, T4).")
@click.option("--channels-last/--no-channels-last", default=None, help="NHWC convolutions (CUDA + bf16).")
@click.option("--compile/--no-compile", "compile_backbone", default=None, help="torch.compile the backbone.")
@click.option("--record-dynamics/--no-record-dynamics", default=None,
              help="Keep each training image's margin over the run (default on), from which analyze ranks label "
                   "noise even when the final features have fitted it.")
@click.option("--out", type=click.Path(file_okay=False), help="Run directory (default runs/METHOD-TIME).")
@click.option("--resume", type=click.Path(), help="Continue the run in this directory from its checkpoint.")
@click.option("--config", "config_file", type=click.Path(),
              help="YAML config (keys are the option names), or an insightface arcface_torch config .py, read "
                   "without running it; flags override it.")
@click.option("--device", help="auto, cpu or cuda.")
@click.option("--seed", type=int, help="Seed of the initialisation, data order and augmentation.")
@click.option("--workers", type=int, help="DataLoader workers.")
@click.option("--cache-images", type=click.Choice(CHOICES["cache_images"]),
              help="Keep decoded, resized images in memory (auto: when they fit in 2 GB).")
@click.option("--checkpoint-every", type=int, help="Steps between checkpoints.")
@click.option("--val-every", type=int, help="Steps between validations (0: every epoch).")
@click.option("--log-every", type=int, help="Steps between log.csv rows.")
@figure_format_option(default=None)
@click.option("--identities", "--synthetic-identities", "synthetic_identities", type=int,
              help="Synthetic data: training identities.")
@click.option("--flip-noise", type=float, help="Synthetic data: fraction of flipped labels.")
@click.option("--split", type=float, help="Synthetic data: fraction of identities split in two labels.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@method_option_flags
def train(config_file: Optional[str], quiet: bool, **options: Any) -> None:
    """Train with any registered --method (its own options below); with no --data, on synthetic identities."""
    from core.config import load_config, resume_config
    from core.evaluation import metrics_summary
    from core.trainer import Trainer

    options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()}
    options = {k: v for k, v in options.items() if v is not None and v != []}
    if "compile_backbone" in options:  # `compile` would shadow the builtin as a parameter name
        options["compile"] = options.pop("compile_backbone")
    if "resume" in options:
        if config_file is not None:
            raise FaceQueueError("--config cannot be combined with --resume: a resumed run keeps the config it was "
                                 "trained with; give flags for what may change (--epochs, --max-steps, --val, ...)")
        run_dir, config = resume_config(options)
    else:
        config = load_config(config_file, options)
        run_dir = Path(config.out or f"runs/{config.method}-{time.strftime('%Y%m%d-%H%M%S')}")
        if (run_dir / "checkpoint.pt").exists():
            raise FaceQueueError(f"--out {run_dir} already holds a run; use --resume {run_dir} or another --out")
        existing = next(path for path in (run_dir.absolute(), *run_dir.absolute().parents) if path.exists())
        if not existing.is_dir():  # said before any image is decoded or rendered
            raise FaceQueueError(f"--out {run_dir}: {existing} is a file, so the run directory cannot be made there")
    started = time.perf_counter()
    trainer = Trainer(config, run_dir, progress=not quiet)
    if config.resume:
        trainer.resume(config.resume)
        if trainer.step >= trainer.last_step:
            capped = trainer.last_step < trainer.total_steps
            more = ("--max-steps beyond them (0: no cap)" if capped else
                    f"--epochs beyond its {config.epochs} (the schedule is stretched to the new end)")
            raise FaceQueueError(f"--resume {run_dir}: the run already finished its {trainer.step} steps; give "
                                 f"{more} to train on")
    metrics = trainer.fit()
    if trainer.context.is_main:
        minutes = (time.perf_counter() - started) / 60
        click.echo(f"\nTrained {config.method} for {trainer.step} steps in {minutes:.1f} min "
                   f"({trainer.num_classes} classes, {len(trainer.dataset)} images).")
        click.echo("Held-out verification:\n  " + (metrics_summary(metrics).replace("\n", "\n  ") or "(no --val)"))
        click.echo(f"Run directory: {run_dir} (checkpoint.pt, config.yaml, log.csv, training.{config.figure_format}, "
                   "metrics.json)")
        val = trainer.val_files[0] if trainer.val_files else "F.bin"
        click.echo(f"Next: python cli.py eval {run_dir} --val {val}")


def _show_config_defaults(command: click.Command) -> None:
    """Flags stay unset (None) so a --config file can supply them; their help still shows the default."""
    from core.config import TrainConfig

    defaults = TrainConfig()
    for param in command.params:
        default = getattr(defaults, param.name, None)
        if isinstance(param, click.Option) and not param.is_flag and default not in (None, []):
            param.help = f"{param.help or ''} (default {default})".strip()


_show_config_defaults(train)


# -- eval -------------------------------------------------------------------------------------
@main.command(name="eval")
@model_argument(several=True)
@click.option("--val", multiple=True, help="Verification .bin file (repeatable).")
@click.option("--pairs", type=click.Path(dir_okay=False),
              help="An LFW-style pairs.txt ('name n1 n2' / 'name1 n1 name2 n2' lines) over --images.")
@click.option("--images", type=click.Path(file_okay=False),
              help="With --pairs: the folder of aligned crops, DIR/name/name_0001.jpg.")
@click.option("--ijb", multiple=True, type=click.Path(file_okay=False),
              help="IJB-B or IJB-C folder as published (loose_crop/, meta/): 1:1 verification, TAR@FAR (repeatable).")
@click.option("--no-detector-score", is_flag=True, help="IJB: leave faces unweighted by their detector score.")
@click.option("--table", type=click.Path(dir_okay=False),
              help="Write the results as the papers print them: one Markdown row per MODEL (and a .csv beside).")
@click.option("--roc", type=click.Path(dir_okay=False), help="Draw the IJB ROC curves here (.png, .pdf or .svg).")
@click.option("--online", is_flag=True, help="Evaluate the online backbone instead of the network the method is "
                                            "evaluated with (DCQ: its momentum encoder).")
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", default=256, show_default=True)
@click.option("--workers", default=2, show_default=True, help="IJB: image decoding workers.")
@click.option("--json", "as_json", is_flag=True, help="One JSON line shaped like metrics.json (several MODELs: "
                                                  "{\"model\": ..., \"metrics\": ...} per MODEL).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def eval_command(models: tuple[str, ...], backbone: Optional[str], embedding_size: Optional[int],
                 input_size: Optional[int], val: tuple[str, ...], pairs: Optional[str], images: Optional[str],
                 ijb: tuple[str, ...], no_detector_score: bool, table: Optional[str], roc: Optional[str],
                 online: bool, device: str, batch_size: int, workers: int, as_json: bool, quiet: bool) -> None:
    """Verification of one or several MODELs (run directories, checkpoints or bare weights): accuracy on .bin sets
    or a pairs folder, TAR@FAR on IJB-B/C."""
    from core.distributed import resolve_device
    from core.evaluation import EvaluationSets, evaluate_model, metrics_json, metrics_summary
    from core.models import load_model
    from core.results_table import check_outputs

    sets = EvaluationSets(val, pairs, images, ijb, detector_score=not no_detector_score)
    check_outputs(table, roc, bool(ijb))
    torch_device = resolve_device(device)
    rows = []
    for model in models:
        loaded = load_model(model, torch_device, backbone, embedding_size, input_size, online)
        metrics = evaluate_model(loaded.network, loaded.input_size, sets, torch_device, batch_size, workers,
                                 progress=not quiet)
        rows.append((model, metrics))
        if as_json:  # with several models, each line names its model
            click.echo(metrics_json(metrics) if len(models) == 1 else
                       f'{{"model": {json.dumps(model)}, "metrics": {metrics_json(metrics)}}}')
        else:
            click.echo((f"{model}:\n  " if len(models) > 1 else "") + metrics_summary(metrics).replace(
                "\n", "\n  " if len(models) > 1 else "\n"))
    if table:
        from core.results_table import write_table
        written = write_table(rows, table)
        click.echo(f"Wrote {written[0]} and {written[1]} ({len(rows)} model(s)).")
    if roc:
        from core.results_table import roc_figure
        click.echo(f"Wrote {roc_figure(rows, roc)}.")


# -- export -----------------------------------------------------------------------------------
@main.command()
@model_argument
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="File to write: model.pt (a state_dict) or model.onnx.")
@click.option("--format", "export_format", type=click.Choice(["state_dict", "onnx"]),
              help="state_dict: insightface-style weights; onnx: a dynamic-batch graph checked against onnxruntime "
                   "(default: onnx for an .onnx --out, else state_dict).")
@click.option("--online", is_flag=True, help="Export the online backbone instead of the network the method is "
                                            "evaluated with (DCQ: its momentum encoder).")
def export(model: str, backbone: Optional[str], embedding_size: Optional[int], input_size: Optional[int], out: str,
           export_format: Optional[str], online: bool) -> None:
    """Write a MODEL's network (a run's: the one it is evaluated with, DCQ's momentum encoder) for deployment."""
    from core.export import export_backbone, loading_hint

    result = export_backbone(model, out, export_format, online, backbone, embedding_size, input_size)
    size = result.input_size
    click.echo(f"Wrote {out} ({result.export_format}, {result.backbone}, input Nx3x{size}x{size} RGB in [-1, 1], "
               f"output Nx{result.embedding_size})."
               + ("" if result.onnx_max_difference is None else
                  f" onnxruntime matches PyTorch to {result.onnx_max_difference:.1e} (max |difference|)."))
    click.echo(f"Load it with: {loading_hint(result)}")


# -- embed ------------------------------------------------------------------------------------
@main.command()
@model_argument
@click.option("--data", required=True,
              help="A .rec directory, a folder of identities, a list file, or 'synthetic' (train's default set).")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="feats.npy: float32 [N, D] unit rows in dataset order; feats.csv beside it names each row.")
@click.option("--online", is_flag=True, help="Embed with a run's online backbone (DCQ) instead of its evaluation "
                                            "network.")
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", default=256, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int, help="Image decoding workers.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def embed(model: str, backbone: Optional[str], embedding_size: Optional[int], input_size: Optional[int], data: str,
          out: str, online: bool, device: str, batch_size: int, workers: int, quiet: bool) -> None:
    """Embed every image of a dataset with a MODEL (flip-summed, L2-normalised, as evaluation does)."""
    from core.config import TrainConfig
    from core.data.loader import synthetic_dataset_root
    from core.distributed import resolve_device
    from core.embedding import write_embeddings
    from core.models import load_model

    torch_device = resolve_device(device)
    loaded = load_model(model, torch_device, backbone, embedding_size, input_size, online)
    default = TrainConfig()  # 'synthetic': the default set train renders
    source = (synthetic_dataset_root(default.synthetic_identities, default.flip_noise, default.split,
                                     progress=not quiet) if data == "synthetic" else data)
    npy, table, count = write_embeddings(loaded.network, loaded.input_size, loaded.embedding_size, source, out,
                                         torch_device, batch_size, workers, progress=not quiet)
    click.echo(f"Wrote {npy} ({count:,} x {loaded.embedding_size} float32, unit rows) and {table} (index, label, "
               "source of each row).")
    click.echo(f"Next: python -c \"import numpy as np; f = np.load('{npy}'); print(f @ f[:5].T)\"   (cosines)")


# -- analyze ----------------------------------------------------------------------------------
from analysis.commands import analyze  # noqa: E402  (click only; faiss is imported when a command runs)
from experiments.commands import experiment  # noqa: E402

main.add_command(analyze)
main.add_command(experiment)


# -- data and bench ---------------------------------------------------------------------------
from core.data.commands import data  # noqa: E402
from benchmarks.commands import bench  # noqa: E402

main.add_command(data)
main.add_command(bench)


if __name__ == "__main__":
    main()
