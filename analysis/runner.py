"""The analyses end to end: compute the shared pieces once, run each section, publish the outputs.

``Analysis`` holds one validated ``AnalysisInput`` and computes the expensive shared
pieces (each sample against the centers, each center's nearest neighbours) once, so
``analyze report`` costs what the slowest single analysis costs, not three times it.
Each section (conflict, noise, long tail) is written by a function beside its analysis.
"""

from __future__ import annotations

import functools
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from tqdm import tqdm

from analysis import plots
from analysis.centers import Centers, choose_centers, class_sums
from analysis.choices import DEFAULT_K
from analysis.crossval import RepeatedCrossValidation, crossval_for, load_crossval
from analysis.conflict import CenterNeighbours, center_neighbours, conflict_section
from analysis.dynamics import TrainingMargins, training_margins
from analysis.groundtruth import DetectionScore
from analysis.index import IndexBuilder, build_index
from analysis.inputs import AnalysisInput
from analysis.longtail import longtail_section
from analysis.noise import STAGED_CLEAN_LIST, NoiseSignal, SampleNeighbours, noise_section, sample_neighbours
from analysis.plda import TwoCovarianceModel, fit_two_covariance
from analysis.report import Report
from core.errors import ConfigError, DataError
from core.figures import figure_file, figure_files
from core.io import atomic_write_json, plain, staging_folder
from core.method_spec import load_reference

SUMMARY_JSON = "summary.json"
# Every file an analyze command may write in --out; a new command replaces all of them (and nothing else).
FIGURES = ("conflict_similarity", "conflict_llr", "conflict_pr", "noise_score", "noise_pr", "longtail_norm",
           "longtail_compactness", "longtail_nearest", "longtail_updates", "longtail_head_tail")
OUTPUT_FILES = frozenset({"conflict.csv", "noise.csv", "longtail.csv", "report.html", "report.md", SUMMARY_JSON,
                          "conflict_pairs.jpg", "noise_samples.jpg"}
                         | figure_files(FIGURES))
SECTIONS = {"conflict": conflict_section, "noise": noise_section, "longtail": longtail_section}
SECTION_WORK = {"conflict": "conflict: class pairs, same-person model, plots",
                "noise": "noise: per-sample scores, plots", "longtail": "long tail: per-class figures, plots"}


@dataclass
class AnalysisOptions:
    """The command-line knobs, in one object so the combined report runs every analysis alike."""

    k: int = DEFAULT_K
    conflict_threshold: Optional[float] = None  # None: default_conflict_threshold of the run
    noise_threshold: Optional[float] = None
    outlier_similarity: Optional[float] = None
    write_clean: Optional[Path] = None
    relabel: bool = False
    index_method: str = "auto"
    centers: str = "auto"
    progress: bool = True
    figure_format: str = "png"
    crossval: Optional[Path] = None  # analyze crossval's output folder (analysis/crossval.py)


@dataclass
class Analysis:
    """One run + data under analysis, with the computations the sections share; a section writes its files
    through ``file`` and its figures into ``summary``."""

    inputs: AnalysisInput
    out_dir: Path
    options: AnalysisOptions = field(default_factory=AnalysisOptions)
    index_builder: Optional[IndexBuilder] = None
    written: list[Path] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        if self.options.k < 1:
            raise ConfigError(f"--k must be >= 1, got {self.options.k}")
        if self.index_builder is None:
            self.index_builder = functools.partial(build_index, method=self.options.index_method)

    # -- shared computations -----------------------------------------------------------
    @functools.cached_property
    def class_sums(self) -> np.ndarray:
        """Per-class sums of the (unit-row) embeddings: one pass shared by the class means, the
        leave-one-out own centers and the same-person fit."""
        return class_sums(self.inputs.embeddings, self.inputs.labels, self.inputs.num_classes)

    @functools.cached_property
    def detection_centers(self) -> Centers:
        """Centers that conflict and noise detection compare against."""
        inputs = self.inputs
        sums = self.class_sums if self.options.centers != "store" else None
        return choose_centers(self.options.centers, "detection", inputs.run, inputs.embeddings, inputs.labels, sums)

    @functools.cached_property
    def longtail_centers(self) -> Centers:
        """Centers whose behaviour the long-tail view describes (the method's stored centers, if it has them)."""
        inputs = self.inputs
        if self.options.centers != "auto" or not inputs.run.has_stored_centers:
            return self.detection_centers
        return choose_centers("auto", "longtail", inputs.run, inputs.embeddings, inputs.labels)

    @functools.cached_property
    def samples(self) -> SampleNeighbours:
        centers = self.detection_centers
        return sample_neighbours(self.inputs.embeddings, self.inputs.labels, centers, self.index_builder,
                                 progress=self.options.progress,
                                 unit_sums=self.class_sums if centers.source == "means" else None)

    @functools.cached_property
    def neighbours(self) -> CenterNeighbours:
        return center_neighbours(self.detection_centers, self.options.k, self.index_builder,
                                 progress=self.options.progress)

    @functools.cached_property
    def same_person(self) -> Optional[TwoCovarianceModel]:
        """The model behind conflict.csv's ``same_person_llr``; None when no class has two images to fit it."""
        try:
            return fit_two_covariance(self.inputs.embeddings, self.inputs.labels, self.inputs.num_classes,
                                      sums=self.class_sums)
        except DataError:
            return None

    @functools.cached_property
    def longtail_neighbours(self) -> CenterNeighbours:
        if self.longtail_centers is self.detection_centers:
            return self.neighbours
        return center_neighbours(self.longtail_centers, 1, self.index_builder, progress=self.options.progress)

    @functools.cached_property
    def training_margins(self) -> tuple[Optional[TrainingMargins], str]:
        """The run's per-sample margins over training when the analysed data is its training data, and a note."""
        inputs = self.inputs
        return training_margins(inputs.run, inputs.data_path, len(inputs.labels))

    @functools.cached_property
    def crossval_dir(self) -> Optional[Path]:
        """--crossval, else the run's own ``crossval`` folder when it was computed on this data (``analyze crossval
        RUN`` without --out)."""
        if self.options.crossval is not None:
            return self.options.crossval
        return crossval_for(self.inputs.run.checkpoint, self.inputs.data_path)

    @functools.cached_property
    def crossval(self) -> Optional[RepeatedCrossValidation]:
        """The cross-validated reference evidence for the analysed data (from ``crossval_dir``), if any."""
        if self.crossval_dir is None:
            return None
        return load_crossval(self.crossval_dir, len(self.inputs.labels), self.inputs.num_classes)

    @functools.cached_property
    def noise_signals(self) -> list[NoiseSignal]:
        """The run's method's own per-sample noise evidence (its spec's ``noise_signals`` hook), if any."""
        spec = self.inputs.run.spec
        if spec is None or spec.noise_signals is None:
            return []
        return list(load_reference(spec.noise_signals)(self.inputs.run.tables, self.inputs.embeddings,
                                                       self.inputs.labels))

    def file(self, name: str) -> Path:
        """The path of an output file in this command's (staging) folder, recorded as written."""
        path = self.out_dir / name
        self.written.append(path)
        return path

    def figure(self, stem: str) -> Path:
        """The path of figure ``stem`` in the --figure-format asked for, recorded as written."""
        return self.file(self.figure_name(stem))

    def figure_name(self, stem: str) -> str:
        return figure_file(stem, self.options.figure_format)

    def parameters(self, report: Report, commands: str) -> None:
        """Everything needed to reproduce (or distrust) the numbers below it."""
        inputs = self.inputs
        computed = self.__dict__
        info = (computed.get("neighbours") or computed.get("longtail_neighbours"))
        info = info.info if info is not None else None
        values: dict[str, Any] = {
            "analysis": commands,
            "run": str(inputs.run.path),
            "checkpoint": str(inputs.run.checkpoint),
            "method": inputs.run.method,
            "data": str(inputs.data_path),
            "classes": inputs.num_classes,
            "samples": len(inputs.labels),
            "embedding size": int(inputs.embeddings.shape[1]),
            "centers (--centers)": self.options.centers,
            "embeddings": f"{inputs.cache_file} ({'cache hit' if inputs.cache_hit else 'computed'})",
            "k": self._k_used(computed),
            "conflict threshold": self.summary.get("conflict", {}).get("threshold"),
            "noise threshold": self.summary.get("noise", {}).get("threshold"),
            "ground truth": ("yes (ground_truth.json beside the data)" if inputs.ground_truth else
                             f"not used: {inputs.ground_truth_note}" if inputs.ground_truth_note else "none"),
        }
        for purpose, key in (("conflict / noise centers", "detection_centers"),
                             ("long-tail centers", "longtail_centers")):
            if key in computed:
                values[purpose] = _describe_centers(computed[key])
        if info is not None:
            values["nearest-neighbour index"] = info.describe()
        report.figures({k: v for k, v in values.items() if v is not None}, caption="")

    def _k_used(self, computed: dict[str, Any]) -> Any:
        """--k, or what it was cut to when fewer other classes exist."""
        neighbours = computed.get("neighbours")
        used = neighbours.labels.shape[1] if neighbours is not None else self.options.k
        return self.options.k if used == self.options.k else f"{used} (--k {self.options.k}: only {used} other classes)"

    # -- shared pieces -----------------------------------------------------------------
    def score_block(self, report: Report, scores: list[DetectionScore], figure: str, what: str) -> None:
        """Figures of the first ranking, the APs of the others, and every PR curve in one plot."""
        first = scores[0]
        report.heading(f"Against ground truth ({what})", level=3)
        report.figures(first.figures(), caption=f"{first.task}: precision / recall of the flagged set, "
                                                "average precision of the ranking")
        for other in scores[1:]:
            report.figures({"average precision": round(other.average_precision, 4),
                            "flagged": other.flagged, "precision": round(other.precision, 4),
                            "recall": round(other.recall, 4)},
                           caption=f"{other.task}: the same candidates ranked by it, and flagged where it is > 0")
        plots.pr_curves([(s.task, s.curve_precision, s.curve_recall, s.average_precision, s.chance_average_precision)
                         for s in scores], self.figure(figure), title=f"precision-recall against {what}")
        report.image(self.figure_name(figure),
                     f"Precision-recall curves of the {first.task} rankings against the ground truth "
                          f"({what}); dotted: chance.")

    def write_summary(self) -> Path:
        """summary.json: the key figures in machine-readable form, for benchmarks and CI checks."""
        path = self.file(SUMMARY_JSON)
        atomic_write_json(path, plain(self.summary))
        return path


def _describe_centers(centers: Centers) -> str:
    if centers.source == "store":
        return "the method's stored centers (raw, as trained)"
    return "class means of the data's embeddings under the run's backbone"


def run_analyses(inputs: AnalysisInput, out_dir: Path, which: tuple[str, ...], options: AnalysisOptions,
                 index_builder: Optional[IndexBuilder] = None) -> Analysis:
    """Run the named analyses (conflict, noise, longtail) into one report in ``out_dir``.

    Files are written into a staging folder inside ``out_dir`` and moved in only when
    every analysis has finished, replacing all outputs of an earlier analyze command: the
    folder never holds one command's CSV beside another's report, nor half of a failed one.
    """
    out_dir = Path(out_dir)
    check_write_clean(options.write_clean, inputs.data_path, out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise ConfigError(f"--out {out_dir}: cannot be a directory ({exc.strerror}: {exc.filename})") from exc
    with staging_folder(out_dir, ".analysis-") as staging:
        analysis = Analysis(inputs, staging, options, index_builder)
        body = Report(title="")
        # Between the index searches' own bars the sections fit models and draw plots (seconds each on a large
        # set): a bar of sections says which one is running.
        sections = tqdm(which, desc="analyse", unit="section", disable=not options.progress, dynamic_ncols=True)
        for name in sections:
            sections.set_description(SECTION_WORK[name])
            SECTIONS[name](analysis, body)
        sections.close()
        titles = {"conflict": "Conflict", "noise": "Noise", "longtail": "Long-tail"}
        title = " + ".join(titles[name] for name in which) + f" analysis of {inputs.run.path}"
        report = Report(title=title)
        if len(which) > 1:
            report.heading("Figures that matter")
            report.bullets(headline(analysis.summary))
        report.heading("Parameters")
        analysis.parameters(report, ", ".join(which))
        report.blocks.extend(body.blocks)
        analysis.written.extend(report.write(staging))
        analysis.write_summary()
        _publish(staging, out_dir, options.write_clean)
    analysis.out_dir = out_dir
    analysis.written = [out_dir / path.name if path.parent == staging else path for path in analysis.written]
    return analysis


def _publish(staging: Path, out_dir: Path, write_clean: Optional[Path]) -> None:
    """Replace the previous analyze outputs in ``out_dir`` by the staged ones (other files stay).

    A --write-clean list that was withheld removes an older list at its path: one left
    there would read as this command's answer.
    """
    for name in OUTPUT_FILES:
        (out_dir / name).unlink(missing_ok=True)
    staged_list = staging / STAGED_CLEAN_LIST
    if write_clean is not None:
        if staged_list.exists():
            Path(write_clean).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(staged_list), str(write_clean))
        else:
            Path(write_clean).unlink(missing_ok=True)
    for path in staging.iterdir():
        os.replace(path, out_dir / path.name)


def check_write_clean(target: Optional[Path], data_path: Path, out_dir: Path) -> None:
    """Refuse a --write-clean path that would overwrite the analysed data or this command's own outputs."""
    if target is None:
        return
    target = Path(target).resolve()
    data_path = Path(data_path).resolve()
    root = data_path.parent if data_path.suffix == ".rec" else data_path  # a .rec's folder holds its .idx too
    if target == data_path or (root.is_dir() and root in target.parents and target.exists()):
        raise ConfigError(f"--write-clean {target}: would overwrite the analysed data ({data_path}); "
                          "write the cleaned list to a new file")
    if target.parent == Path(out_dir).resolve() and (target.name in OUTPUT_FILES or target.name.startswith(".")):
        raise ConfigError(f"--write-clean {target}: is one of the files this command writes in --out; "
                          "choose another name (for example clean.txt)")


def _ground_truth_clause(section: dict[str, Any], truth: str) -> str:
    """``; against TRUTH AP …, precision …, recall …`` when the data came with ground truth."""
    if "ground_truth" not in section:
        return ""
    g = section["ground_truth"]
    others = [f"{name}: {g[key]:.3f}" for name, key in (("same-person LLR", "same_person_llr_average_precision"),
                                                          ("cross-validated reference",
                                                           "crossval_score_average_precision"))
              if g.get(key) is not None]
    return (f"; against {truth} AP {g['average_precision']:.3f}"
            + (f" (ranked by {', '.join(others)})" if others else "")
            + f", precision {g['precision']:.3f}, recall {g['recall']:.3f}")


def headline(summary: dict[str, Any], with_warnings: bool = True) -> list[str]:
    """One line per analysis with the figures that matter (console and report top), then any warnings."""
    lines = []
    if "conflict" in summary:
        c = summary["conflict"]
        lines.append(f"Conflict: {c['flagged']:,} of {c['pairs']:,} candidate pairs flagged (cosine > {c['threshold']})"
                     + _ground_truth_clause(c, "split identities"))
    if "noise" in summary:
        n = summary["noise"]
        lines.append(f"Noise: {n['flagged']:,} of {n['samples']:,} samples flagged"
                     + _ground_truth_clause(n, "flipped labels"))
        for signal in n.get("signals", {}).values():
            lines.append(f"Noise by {signal['title']}: {signal['flagged']:,} samples flagged"
                         + _ground_truth_clause(signal, "flipped labels"))
    if "longtail" in summary:
        lt = summary["longtail"]
        head = lt.get("head median passive / positive updates")
        tail = lt.get("tail median passive / positive updates")
        if head is not None and tail is not None:
            lines.append(f"Long tail: median passive/positive update ratio {head:.2f} for head classes vs "
                         f"{tail:.2f} for tail classes")
        else:
            lines.append(f"Long tail: {lt['classes']:,} classes, {lt['head_classes']:,} head / "
                         f"{lt['tail_classes']:,} tail")
    return lines + (warnings(summary) if with_warnings else [])


def warnings(summary: dict[str, Any]) -> list[str]:
    """``Warning (task): …`` lines for the analyses whose flags cannot mean what they say."""
    lines = [f"Warning ({task}): {summary[task]['warning']}" for task in ("conflict", "noise")
             if "warning" in summary.get(task, {})]
    clean = summary.get("noise", {}).get("clean")
    if clean is not None and not clean["written"]:
        lines.append(f"--write-clean {clean['path']} was not written: these flags would drop good data")
    return lines
