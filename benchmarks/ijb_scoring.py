"""IJB's scoring step at IJB-C's size, without images: template pooling, 15.6M pair scores, TAR@FAR.

The faces' features are random (drawn into a memory map first, not timed); the meta has
IJB-C's shape: 469,375 face lines in 23,124 templates of several media, 15,658,489
template pairs with 19,557 of one person. Ours (core/ijb.py) is timed whole; the
baseline is insightface's eval_ijbc.py: a template loop that scans every face line per
template (timed on the first ``baseline_templates`` templates and scaled to all of them,
since each iteration costs the same scan) and pair scores gathered in batches of 100,000.
Each run is a fresh process, so its peak resident memory (memory-mapped pages read
included) is its own.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

IJBC_FACES = 469_375
IJBC_TEMPLATES = 23_124
IJBC_PAIRS = 15_658_489
IJBC_POSITIVE_PAIRS = 19_557


def synthetic_meta(faces: int, templates: int, pairs: int, positives: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Template and media ids of every face line, template pairs and their labels, of IJB-C's shape."""
    rng = np.random.default_rng(seed)
    template_of = np.sort(rng.integers(0, templates, faces))
    template_of[:templates] = np.arange(templates)  # every template holds a face
    template_of.sort()
    media_of = template_of * 8 + rng.integers(0, 8, faces)  # up to 8 media per template
    pair_rows = rng.integers(0, templates, size=(pairs, 2))
    labels = np.zeros(pairs, dtype=np.int8)
    labels[rng.choice(pairs, positives, replace=False)] = 1
    return {"templates": template_of, "medias": media_of, "pairs": pair_rows, "labels": labels,
            "scores": rng.uniform(0.6, 1.0, faces).astype(np.float32)}


def insightface_template_pooling(features: np.ndarray, templates: np.ndarray, medias: np.ndarray,
                                 count: int) -> float:
    """Seconds for the first ``count`` templates of eval_ijbc.py's ``image2template_feature`` loop."""
    start = time.perf_counter()
    for template in np.unique(templates)[:count]:
        in_template = np.where(templates == template)
        face_features, face_medias = features[in_template], medias[in_template]
        unique_medias, counts = np.unique(face_medias, return_counts=True)
        pooled = [face_features[face_medias == media] if size == 1 else
                  np.mean(face_features[face_medias == media], axis=0, keepdims=True)
                  for media, size in zip(unique_medias, counts)]
        np.sum(np.array(pooled), axis=0)
    return time.perf_counter() - start


def insightface_pair_scores(unit: np.ndarray, pairs: np.ndarray, batch: int = 100_000) -> float:
    """Seconds for eval_ijbc.py's ``verification``: gathered features multiplied in batches of 100,000."""
    start = time.perf_counter()
    scores = np.zeros(len(pairs), dtype=np.float32)
    for begin in range(0, len(pairs), batch):
        block = pairs[begin:begin + batch]
        scores[begin:begin + len(block)] = np.sum(unit[block[:, 0]] * unit[block[:, 1]], -1)
    return time.perf_counter() - start


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    from benchmarks.common import peak_bytes
    import torch

    from core.ijb import feature_rows, score_pairs, tar_at_far, template_features

    meta = synthetic_meta(job["faces"], job["templates"], job["pairs"], job["positives"])
    with tempfile.TemporaryDirectory(prefix="facequeue-bench-ijb-") as scratch:
        path = Path(scratch) / "features.f32"
        rng = np.random.default_rng(1)
        with open(path, "wb") as out:
            for begin in range(0, job["faces"], 65_536):
                rng.standard_normal((min(65_536, job["faces"] - begin), job["dim"]), dtype=np.float32).tofile(out)
        if job["side"] == "ours":
            timings = {}
            start = time.perf_counter()
            ids, unit = template_features(feature_rows(path, job["dim"]), meta["templates"], meta["medias"],
                                          meta["scores"])
            timings["pooling_s"] = time.perf_counter() - start
            start = time.perf_counter()
            scores = score_pairs(ids, unit, meta["pairs"])
            timings["scoring_s"] = time.perf_counter() - start
            start = time.perf_counter()
            tar_at_far(meta["labels"], scores)
            timings["tar_s"] = time.perf_counter() - start
        else:
            features = np.fromfile(path, dtype=np.float32).reshape(job["faces"], job["dim"])  # it holds them all
            seconds = insightface_template_pooling(features, meta["templates"], meta["medias"],
                                                   job["baseline_templates"])
            timings = {"pooling_s": seconds * job["templates"] / job["baseline_templates"]}
            unit = np.random.default_rng(2).standard_normal((job["templates"], job["dim"]), dtype=np.float32)
            timings["scoring_s"] = insightface_pair_scores(unit, meta["pairs"])
            start = time.perf_counter()
            from sklearn.metrics import roc_curve
            roc_curve(meta["labels"], np.random.default_rng(3).random(len(meta["pairs"]), dtype=np.float32))
            timings["tar_s"] = time.perf_counter() - start
    timings["total_s"] = timings["pooling_s"] + timings["scoring_s"] + timings["tar_s"]
    return {**timings, "peak_gib": peak_bytes(torch.device("cpu")) / 2 ** 30}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--job", required=True)
    print(json.dumps(run_job(json.loads(parser.parse_args().job))))
