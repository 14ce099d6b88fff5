"""The analyses end to end: compute, write CSV and PNG files, and fill the report.

``Analysis`` holds one validated ``AnalysisInput`` and computes the expensive shared
pieces (each sample against the centers, each center's nearest neighbours) once, so
``analyze report`` costs what the slowest single analysis costs, not three times it.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from analysis import plots
from analysis.centers import Centers, choose_centers, class_sums
from analysis.conflict import (DEFAULT_K, CenterNeighbours, center_neighbours, conflict_table,
                               conflict_threshold_rationale, conflict_warning, default_conflict_threshold)
from analysis.groundtruth import DetectionScore, conflict_positives, noise_positives, score_detection
from analysis.index import IndexBuilder, build_index
from analysis.inputs import AnalysisInput
from analysis.longtail import (compactness, head_tail, head_tail_summary, longtail_table,
                               sampled_pair_similarities)
from analysis.noise import (SampleNeighbours, clean_plan, noise_table, noise_warning,
                            sample_neighbours, write_clean_list)
from analysis.plda import TwoCovarianceModel, fit_two_covariance
from analysis.report import Report
from core.errors import ConfigError, DataError
from core.io import atomic_path, atomic_write_json, staging_folder

SUMMARY_JSON = "summary.json"
# Every file an analyze command may write in --out; a new command replaces all of them (and nothing else).
OUTPUT_FILES = frozenset({
    "conflict.csv", "conflict_similarity.png", "conflict_llr.png", "conflict_pr.png",
    "noise.csv", "noise_score.png", "noise_pr.png",
    "longtail.csv", "longtail_norm.png", "longtail_compactness.png", "longtail_nearest.png", "longtail_updates.png",
    "longtail_head_tail.png", "report.html", "report.md", SUMMARY_JSON})
STAGED_CLEAN_LIST = ".clean-list"


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


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """CSV through a temporary name, so a reader (or --write-clean's user) never sees half a table."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path


@dataclass
class Analysis:
    """One run + data under analysis; each section method writes its files and report blocks."""

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
        return choose_centers(self.options.centers, "detection", inputs.run.statistics, inputs.embeddings,
                              inputs.labels, sums)

    @functools.cached_property
    def longtail_centers(self) -> Centers:
        """Centers whose behaviour the long-tail view describes (PFC: the center store)."""
        inputs = self.inputs
        if self.options.centers != "auto" or inputs.run.statistics.centers is None:
            return self.detection_centers
        return choose_centers("auto", "longtail", inputs.run.statistics, inputs.embeddings, inputs.labels)

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

    def _file(self, name: str) -> Path:
        path = self.out_dir / name
        self.written.append(path)
        return path

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
            "ground truth": "yes (ground_truth.json beside the data)" if inputs.ground_truth else "none",
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

    # -- conflict ----------------------------------------------------------------------
    def conflict(self, report: Report) -> dict[str, Any]:
        """conflict.csv, its histogram and, with ground truth, its PR curve; returns the key figures."""
        inputs, options = self.inputs, self.options
        centers = self.detection_centers
        _, nearest = self.neighbours.nearest_other(inputs.num_classes)
        threshold = options.conflict_threshold
        chosen_by_default = threshold is None
        if threshold is None:
            threshold = default_conflict_threshold(nearest)
        model = self.same_person
        table = conflict_table(centers, self.neighbours, threshold, inputs.labels, self.samples.top_label,
                               pair_llr=None if model is None else model.pair_llr)
        write_csv(table, self._file("conflict.csv"))
        llr_positive_pairs = int((table["same_person_llr"] > 0).sum())
        scores: list[DetectionScore] = []
        truth = None
        if inputs.ground_truth is not None and inputs.ground_truth.get("split_pairs") is not None:
            truth, total = conflict_positives(inputs.ground_truth, table["label_a"].to_numpy(),
                                              table["label_b"].to_numpy(), inputs.num_classes)
            flagged = table["flagged"].to_numpy()
            scores.append(score_detection("conflict", table["similarity"].to_numpy(), truth, flagged, total))
            if model is not None:
                llr = table["same_person_llr"].to_numpy()
                llr = np.where(np.isnan(llr), -np.finfo(np.float64).max, llr)  # classes without images: last
                scores.append(score_detection("conflict by same-person LLR", llr, truth, llr > 0, total))
        score = scores[0] if scores else None
        nearest = nearest[np.isfinite(nearest)]
        figures: dict[str, Any] = {
            "candidate pairs (k nearest, deduplicated)": len(table),
            "flagged pairs": int(table["flagged"].sum()),
            "flagged pairs found beyond the k nearest (range search)": table.attrs["pairs_beyond_k"],
            "threshold (cosine)": threshold,
            "pairs with same-person LLR > 0 (the data favour one person)": llr_positive_pairs,
            "median nearest-other-center cosine": float(np.median(nearest)),
            "99th percentile nearest-other-center cosine": float(np.percentile(nearest, 99)),
        }
        if self.neighbours.info is not None:
            figures["index"] = self.neighbours.info.describe()
        report.heading("Inter-class conflict")
        report.paragraph(
            f"Every pair among each class's {table.attrs['k']} nearest other centers, deduplicated, sorted by "
            "cosine similarity. `a_samples_nearest_b` is the fraction of a's samples whose nearest center is "
            "b's (and the reverse): near zero for two different people, sizeable when one person carries both "
            "labels. `same_person_llr` is the log-likelihood ratio (nats) of one person against two under the "
            "two-covariance (PLDA) model fitted to these embeddings: unlike the cosine it knows that a label "
            "with two images has a far noisier mean than one with forty, so sorting by it puts small split "
            "identities ahead of big look-alike pairs."
            + ("" if model is not None else " It is empty here: no class has two images to estimate the "
               "within-class spread from."))
        report.figures(figures)
        warning = conflict_warning(threshold)
        if warning:
            report.paragraph(f"**Warning:** {warning}.")
        report.heading("Why this threshold", level=3)
        report.paragraph(conflict_threshold_rationale(threshold, chosen_by_default, nearest, table, score, truth))
        report.table(table, "Most similar class pairs (conflict.csv)")
        if model is not None:
            report.table(table.sort_values("same_person_llr", ascending=False, kind="stable", na_position="last"),
                         "Pairs most likely to be one person (conflict.csv sorted by same_person_llr): the order "
                         "in which to review them")
        sims = table["similarity"].to_numpy()
        plots.histogram(sims, "cosine similarity of the pair's centers", "candidate class pairs",
                        self._file("conflict_similarity.png"), threshold=threshold,
                        highlight=sims[truth] if truth is not None else None,
                        highlight_label="split identities (ground truth)")
        report.image("conflict_similarity.png", "Similarity of candidate pairs; red: pairs that are one person "
                     "under two labels (ground truth), when known.")
        if model is not None:
            plots.pair_scatter(sims, table["same_person_llr"].to_numpy(),
                               np.minimum(table["count_a"], table["count_b"]).to_numpy(), "cosine",
                               "same-person LLR", "candidate pairs: cosine vs same-person LLR",
                               self._file("conflict_llr.png"), x_line=threshold, y_line=0.0, highlight=truth,
                               highlight_label="split identities (ground truth)")
            report.image("conflict_llr.png", "Each candidate pair by cosine and by same-person LLR; bigger dots: "
                         "more images on the pair's smaller label. Small pairs need a higher cosine for the same "
                         "evidence, which is what the LLR accounts for.")
        summary = {"pairs": len(table), "flagged": int(table["flagged"].sum()),
                   "threshold": threshold, "threshold_rule": "default" if chosen_by_default else "--threshold",
                   "centers": centers.source, "pairs_beyond_k": table.attrs["pairs_beyond_k"],
                   "llr_positive_pairs": llr_positive_pairs}
        if warning:
            summary["warning"] = warning
        if scores:
            self._score_block(report, scores, "conflict_pr.png", "split label pairs")
            summary["ground_truth"] = scores[0].figures()
            if len(scores) > 1:
                llr_score = scores[1]
                summary["ground_truth"].update({
                    "same_person_llr_average_precision": round(llr_score.average_precision, 4),
                    "llr_positive_precision": round(llr_score.precision, 4),
                    "llr_positive_recall": round(llr_score.recall, 4)})
        if self.neighbours.info is not None:
            summary["index"] = self.neighbours.info.to_dict()
        self.summary["conflict"] = summary
        return summary

    # -- noise -------------------------------------------------------------------------
    def noise(self, report: Report) -> dict[str, Any]:
        """noise.csv, the optional cleaned list, plots and ground-truth scores; returns the key figures."""
        inputs, options = self.inputs, self.options
        sources = inputs.sources
        table = noise_table(self.samples, inputs.labels, sources.records, sources.paths, options.noise_threshold,
                            options.outlier_similarity)
        write_csv(table, self._file("noise.csv"))
        flagged = table["flagged"].to_numpy()
        threshold = float(table.attrs["threshold"])
        rule = "default" if options.noise_threshold is None else "--threshold"
        figures: dict[str, Any] = {
            "samples": len(table),
            "flagged samples": int(flagged.sum()),
            "flagged share": float(flagged.mean()),
            "score threshold (nearest other - own similarity)": f"{threshold:.4f} ({rule})",
            "outlier cutoff (own similarity)": round(float(table.attrs["outlier_similarity"]), 4),
            "nearer another class's center than their own": int((table["score"] > 0).sum()),
            "own center": "leave-one-out class mean" if self.samples.leave_one_out else "Partial FC center",
        }
        summary: dict[str, Any] = {"samples": len(table), "flagged": int(flagged.sum()),
                                   "threshold": round(threshold, 6), "threshold_rule": rule,
                                   "outlier_similarity": float(table.attrs["outlier_similarity"])}
        warning = noise_warning(float(flagged.mean()))
        if warning:
            summary["warning"] = warning
        if options.write_clean is not None and warning:
            figures["clean list"] = f"not written ({options.write_clean}): the flags are not credible"
            summary["clean"] = {"path": str(options.write_clean), "written": False}
        elif options.write_clean is not None:
            plan = clean_plan(table, inputs.num_classes, relabel=options.relabel)
            # staged with the other outputs, moved to its place only when the whole command succeeds
            lines = write_clean_list(self.out_dir / STAGED_CLEAN_LIST, plan, inputs.dataset, sources.records,
                                     sources.paths)
            self.written.append(Path(options.write_clean))
            figures.update({"clean list": str(options.write_clean), "clean list samples": lines,
                            "dropped": plan.dropped, "relabelled": plan.relabelled,
                            "flagged but kept (last sample of their class)": plan.kept_last})
            summary["clean"] = {"path": str(options.write_clean), "written": True, "samples": lines,
                                "dropped": plan.dropped, "relabelled": plan.relabelled, "kept_last": plan.kept_last}
        score = None
        truth_by_row = None
        if inputs.ground_truth is not None:
            truth = noise_positives(inputs.ground_truth, len(inputs.labels), sources.records)
            if truth is not None:
                truth_by_row = truth[table["index"].to_numpy()]
                score = score_detection("noise", table["score"].to_numpy(), truth_by_row, flagged)
        report.heading("Label noise")
        report.paragraph(
            "Each sample's cosine to the center of its own label (`own_similarity`) and to the nearest other "
            "center (`nearest_similarity`, `nearest_label`); `score` = nearest - own, so samples that sit nearer "
            "another class (probable flipped labels) and samples far from their own center (outliers) rank "
            "first. Flagged: score above the threshold, or own similarity below the outlier cutoff. By default "
            "both are fences 4 robust standard deviations (1.4826 x MAD) from the median of all samples, the "
            "score's above it and at least 0 (a flagged sample sits nearer another class than its own), the own "
            "similarity's below it. A fixed margin of 0 flags many clean images of tail classes, whose "
            "leave-one-out mean is a couple of images; the fence scales with how tightly this backbone "
            "clusters its classes.")
        if warning:
            report.paragraph(f"**Warning:** {warning}.")
        report.figures(figures)
        report.table(table.drop(columns=[c for c in ("record", "path") if table[c].isna().all()
                                         or (table[c] == "").all()]),
                     "Most suspect samples (noise.csv)")
        scores = table["score"].to_numpy()
        plots.histogram(scores, "score (nearest other - own similarity)", "samples",
                        self._file("noise_score.png"), threshold=threshold,
                        highlight=scores[truth_by_row] if truth_by_row is not None else None,
                        highlight_label="flipped labels (ground truth)")
        report.image("noise_score.png", "Noise score of every sample; red: samples whose label was flipped "
                     "(ground truth), when known.")
        if score is not None:
            self._score_block(report, [score], "noise_pr.png", "flipped images")
            summary["ground_truth"] = score.figures()
        self.summary["noise"] = summary
        return summary

    # -- long tail ---------------------------------------------------------------------
    def longtail(self, report: Report) -> dict[str, Any]:
        """longtail.csv and the per-frequency plots; returns head vs tail medians."""
        inputs = self.inputs
        stats = inputs.run.statistics
        centers = self.longtail_centers
        class_compactness = compactness(inputs.embeddings, inputs.labels, centers)
        table = longtail_table(centers, stats, self.longtail_neighbours, class_compactness)
        write_csv(table, self._file("longtail.csv"))
        by_label = table.sort_values("label")
        counts = by_label["count"].to_numpy()
        split = head_tail(counts, centers.present & (counts > 0))
        report.heading("Long tail")
        report.paragraph(
            f"Per-class figures against class frequency. Head: the {int(round(100 * 0.2))} % most frequent classes "
            f"(>= {split.head_min_count} images); tail: the 50 % least frequent (<= {split.tail_max_count} "
            "images). Passive updates are the steps in which a class's center was pushed as a sampled negative.")
        for note in stats.notes:
            report.paragraph(note)
        figures = head_tail_summary(table, split, stats.method)
        report.figures(figures)
        has = counts > 0
        if stats.method == "pfc":
            plots.frequency_scatter(counts[has], {"raw center norm": by_label["center_norm"].to_numpy()[has]},
                                    "raw center norm", "Partial FC center norm vs frequency",
                                    self._file("longtail_norm.png"))
            report.image("longtail_norm.png", "Raw norm of each class's stored center against its frequency.")
        plots.frequency_scatter(counts[has], {"compactness": by_label["compactness"].to_numpy()[has]},
                                "mean cosine of samples to their center", "Compactness vs frequency",
                                self._file("longtail_compactness.png"))
        report.image("longtail_compactness.png", "Compactness: mean cosine of a class's samples to its center.")
        plots.frequency_scatter(counts[has], {"nearest other center": by_label["nearest_other_similarity"]
                                              .to_numpy()[has]},
                                "cosine to the nearest other center", "Nearest other center vs frequency",
                                self._file("longtail_nearest.png"))
        report.image("longtail_nearest.png", "Cosine of each class's center to its nearest other center.")
        if stats.method == "pfc":
            series = {"positive updates": by_label["positive_updates"].to_numpy()[has],
                      "passive (negative) updates": by_label["negative_updates"].to_numpy()[has]}
            caption = "Steps in which a class was a positive vs a sampled negative (passive update)."
        else:
            series = {"positive updates": by_label["positive_updates"].to_numpy()[has],
                      "passive updates (none in DCQ)": by_label["negative_updates"].to_numpy()[has],
                      "queue entries": by_label["queue_entries"].astype(float).to_numpy()[has]}
            caption = "Steps in which a class was a positive; DCQ has no passive updates, queue entries shown."
        plots.frequency_scatter(counts[has], series, "updates (symlog)", "Positive vs passive updates",
                                self._file("longtail_updates.png"), log_y=True)
        report.image("longtail_updates.png", caption)
        present = np.flatnonzero(centers.present)
        position = np.full(len(centers.vectors), -1)
        position[self.longtail_neighbours.present] = np.arange(len(self.longtail_neighbours.present))
        unit = self.longtail_neighbours.unit
        candidates = position[present]
        head_pairs = sampled_pair_similarities(unit, position[split.head], candidates, seed=0)
        tail_pairs = sampled_pair_similarities(unit, position[split.tail], candidates, seed=1)
        nearest = by_label["nearest_other_similarity"].to_numpy()
        plots.head_tail_histograms(head_pairs, tail_pairs, nearest[split.head], nearest[split.tail],
                                   f"head ({len(split.head)} classes)", f"tail ({len(split.tail)} classes)",
                                   self._file("longtail_head_tail.png"))
        report.image("longtail_head_tail.png", "Inter-center similarity of head vs tail classes.")
        report.table(table, "Most frequent classes (longtail.csv)", max_rows=10)
        report.table(table.iloc[::-1].reset_index(drop=True), "Least frequent classes", max_rows=10)
        summary = {"classes": len(table), "head_classes": len(split.head), "tail_classes": len(split.tail),
                   "centers": centers.source,
                   **{key: (None if not np.isfinite(value) else round(value, 6)) for key, value in figures.items()}}
        self.summary["longtail"] = summary
        return summary

    # -- shared pieces -----------------------------------------------------------------
    def _score_block(self, report: Report, scores: list[DetectionScore], png: str, what: str) -> None:
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
                         for s in scores], self._file(png), title=f"precision-recall against {what}")
        report.image(png, f"Precision-recall curves of the {first.task} rankings against the ground truth "
                          f"({what}); dotted: chance.")

    def write_summary(self) -> Path:
        """summary.json: the key figures in machine-readable form, for benchmarks and CI checks."""
        path = self._file(SUMMARY_JSON)
        atomic_write_json(path, json.loads(json.dumps(self.summary, default=_json_default)))
        return path


def _describe_centers(centers: Centers) -> str:
    if centers.source == "store":
        return "Partial FC center store (raw, as trained)"
    return "class means of the data's embeddings under the run's backbone"


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


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
        for name in which:
            getattr(analysis, name)(body)
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
    llr = g.get("same_person_llr_average_precision")
    return (f"; against {truth} AP {g['average_precision']:.3f}"
            + ("" if llr is None else f" (ranked by same-person LLR: {llr:.3f})")
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
