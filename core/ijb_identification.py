"""IJB-B / IJB-C 1:N identification, when the set's gallery and probe lists are given.

The lists are CSV files beside the 1:1 meta (``meta/ijbc_1N_gallery_G1.csv``,
``..._G2.csv`` and ``..._probe_mixed.csv``; IJB-B's galleries are ``S1`` and ``S2``),
each line naming a template and its subject (``TEMPLATE_ID,SUBJECT_ID,...`` under a
header); their templates are pooled from the face list like the 1:1 templates.

The figures are the open-set ones of the IJB-C protocol (Maze et al. 2018), each
gallery searched on its own and the two averaged: a probe whose subject is in the
gallery is a mated search, any other a non-mated one. Rank-1 is the share of mated
searches whose most similar gallery template is their subject's. TPIR at an FPIR is the
share of mated searches whose subject ranks first with a score above the threshold at
which that FPIR of the non-mated searches' best scores lies above it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from core.errors import DataError

FPIRS = (0.01, 0.1)
GALLERY_NAMES = {"ijbb": ("S1", "S2"), "ijbc": ("G1", "G2")}
PROBE_BLOCK = 4096  # probes searched at once: [4096, gallery] float32 scores


def identification_lists(meta_dir: Path, name: str) -> Optional[dict[str, Path]]:
    """The gallery and probe CSVs of set ``name`` when all three are there, else None (1:N is then skipped, with
    a note when only some of them are)."""
    import sys

    galleries = GALLERY_NAMES.get(name, ("G1", "G2"))
    files = {gallery: meta_dir / f"{name}_1N_gallery_{gallery}.csv" for gallery in galleries}
    files["probe"] = meta_dir / f"{name}_1N_probe_mixed.csv"
    present = [path.name for path in files.values() if path.is_file()]
    if present and len(present) < len(files):
        missing = ", ".join(path.name for path in files.values() if not path.is_file())
        print(f"note: {meta_dir}: 1:N skipped, {missing} not there (found {', '.join(present)})", file=sys.stderr)
    return files if len(present) == len(files) else None


def read_identification_lists(lists: dict[str, Path], known_templates: np.ndarray
                              ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every list's ``(templates, subjects)``, checked against the face list's templates: read before any face is
    embedded, so a bad list costs no embedding."""
    return {key: read_template_subjects(path, known_templates) for key, path in lists.items()}


def read_template_subjects(path: Path, known_templates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(template ids, subject ids)`` of a 1:N list, one per template, every template checked to be pooled."""
    import pandas as pd

    try:
        table = pd.read_csv(path, usecols=[0, 1], dtype=np.int64, engine="c")
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: expected a header, then TEMPLATE_ID,SUBJECT_ID,... lines of whole numbers "
                        f"({' '.join(str(exc).split())[:160]})") from exc
    templates, subjects = table.iloc[:, 0].to_numpy(), table.iloc[:, 1].to_numpy()
    unknown = np.flatnonzero(~np.isin(templates, known_templates))
    if unknown.size:
        raise DataError(f"{path} line {unknown[0] + 2}: template {templates[unknown[0]]} has no faces in the face "
                        "list (a template with no media cannot be searched)")
    unique, first = np.unique(templates, return_index=True)
    listed = np.unique(np.stack([templates, subjects], axis=1), axis=0)  # one row per (template, subject)
    if len(listed) > len(unique):  # a template under two subjects: rows sorted by template, so neighbours
        clash = listed[:-1, 0][listed[1:, 0] == listed[:-1, 0]][0]
        raise DataError(f"{path}: template {clash} is listed under several subjects")
    return unique, subjects[first]


def search(probe_features: np.ndarray, probe_subjects: np.ndarray, gallery_features: np.ndarray,
           gallery_subjects: np.ndarray, fpirs: Sequence[float] = FPIRS) -> dict[str, Any]:
    """Open-set identification of unit-row probes against a unit-row gallery: rank-1 and TPIR at each FPIR."""
    mated = np.isin(probe_subjects, gallery_subjects)
    if not mated.any() or mated.all():
        raise DataError("1:N needs probes whose subject is in the gallery and probes whose subject is not; "
                        f"this gallery leaves {int((~mated).sum())} non-mated and {int(mated.sum())} mated")
    best_score = np.empty(len(probe_features), dtype=np.float32)
    best_subject = np.empty(len(probe_features), dtype=gallery_subjects.dtype)
    gallery = torch.from_numpy(np.ascontiguousarray(gallery_features))
    for start in range(0, len(probe_features), PROBE_BLOCK):
        scores = torch.from_numpy(np.ascontiguousarray(probe_features[start:start + PROBE_BLOCK])) @ gallery.T
        values, rows = scores.max(dim=1)
        best_score[start:start + len(values)] = values.numpy()
        best_subject[start:start + len(values)] = gallery_subjects[rows.numpy()]
    hit = mated & (best_subject == probe_subjects)
    impostor = np.sort(best_score[~mated])[::-1]
    tpir = {}
    for fpir in fpirs:
        allowed = int(np.floor(fpir * len(impostor)))  # non-mated searches that may score above the threshold
        threshold = impostor[allowed] if allowed < len(impostor) else -np.inf
        tpir[f"{fpir:g}"] = float((hit & (best_score > threshold)).sum() / mated.sum())
    return {"rank1": float(hit.sum() / mated.sum()), "tpir_at_fpir": tpir, "mated": int(mated.sum()),
            "non_mated": int((~mated).sum())}


def identification(lists: dict[str, tuple[np.ndarray, np.ndarray]], template_ids: np.ndarray,
                   unit: np.ndarray) -> dict[str, Any]:
    """1:N on each gallery of ``lists`` (``read_identification_lists``) and their average, from the pooled
    templates ``template_ids`` / ``unit``."""
    probe_templates, probe_subjects = lists["probe"]
    probes = unit[np.searchsorted(template_ids, probe_templates)]
    per_gallery = {}
    for gallery, (gallery_templates, gallery_subjects) in lists.items():
        if gallery == "probe":
            continue
        per_gallery[gallery] = search(probes, probe_subjects, unit[np.searchsorted(template_ids, gallery_templates)],
                                      gallery_subjects)
    results = list(per_gallery.values())
    return {"rank1": float(np.mean([r["rank1"] for r in results])),
            "tpir_at_fpir": {key: float(np.mean([r["tpir_at_fpir"][key] for r in results]))
                             for key in results[0]["tpir_at_fpir"]},
            "galleries": per_gallery}
