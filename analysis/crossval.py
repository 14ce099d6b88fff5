"""Cross-validated reference evidence: what models that never trained on an image say about its label.

A long run's final features fit its flipped labels (memorisation), and a run whose
method keeps no exact centers (DCQ) gives class means that bunch: in both cases the run
itself is a poor judge of its own labels. Cross-validation (INCV, Chen et al. 2019)
sidesteps both. Each class's images are dealt into K folds; K reference models are
trained, each on the other K-1 folds, and each image is read through the model that
never saw it. One more reference model, trained on all the images with the same recipe
(the detection benchmark's simple baseline), sees every image of both halves of a split
identity, of which each fold model sees (K-1)/K:

- ``held_out_score``: the held-out image's similarity to the nearest other class mean minus
  the mean of its similarities to the ``OWN_NEIGHBOURS`` most similar images of its own
  label, both over the images that fold model trained on. A flipped image lands near its
  true identity whatever its label says; its own label's nearest images, unlike that
  label's mean, stay far from it even when the label's person looks like its own.
- ``all_data_score``: the same under the all-data model, the image inside its own mean.
- ``noise_score``: the sum of the two robust z-scores, what noise.csv's ``crossval_score`` holds.
- ``class_vectors``: per class, the unit mean of the ``CENTER_SHARE`` of its images nearest its
  plain mean (held out or not) under each model, concatenated and scaled so that one inner
  product is the cosine of two classes' means, half from the fold models (averaged) and half
  from the all-data model. The images left out are mostly the label's intruders (flipped and
  open-set images), which pull a split person's two means apart.
- ``pair_separation``: for two labels, the median over both labels' held-out images of
  min(0, similarity to the other label's nearest trained images - to its own label's), each
  side the mean of the ``OWN_NEIGHBOURS`` most similar images its fold model trained on. A
  model that trained on part of a split person under each label cannot tell a new image of
  one label from the other (near 0), however far apart training pushed the two means; two
  look-alike people it can (negative). A flipped image prefers another label by a wide
  margin, hence the clip at 0: it would otherwise outweigh its label's correct images. The
  median rather than the mean: a few odd images of a split person (an intruder flipped in,
  an outlier view whose nearest images are its own) sit far below 0 and would drag its
  mean down to a look-alike pair's. Nearest images rather than means, as for noise: a
  look-alike's mean can sit near an image that none of its images resembles. The images whose
  noise score stands out within their own label (``pool_suspects``) are left out of the trained
  images compared with: a look-alike's image flipped into a label would otherwise be the
  nearest "image of that label" for every held-out image of its true person, and make the two
  people look like one.
- ``conflict_score``: the conflict ranking, the robust z-score of the pair cosine plus
  ``SEPARATION_WEIGHT`` times that of the separation, over the pairs ranked together, less
  ``MUTUAL_RANK_WEIGHT`` times the robust z-score of how far down each label's list of pairs
  the pair stands by that sum: a split person's two labels are each other's best match, while
  members of a family of look-alikes that the reference cannot tell apart each have several.

All of this is done ``DEFAULT_REPEATS`` times over (repeated K-fold): each repeat deals its own
folds and trains its own models, and the analyses read the repeats' average
(``RepeatedCrossValidation``). One set of models' rankings moves with its seed; their average
moves less and ranks better. A later repeat's fold models train without the first repeat's
``pool_suspects`` (INCV's second round), so fewer intruders shape the features that tell a
held-out image's two candidate labels apart; its all-data model still trains on every image,
since a suspect's score inside its own label's mean is what tells the true intruders among
the suspects from the clean images the fence also takes.

The all-data model and its equal share were chosen on the detection benchmark's development
scenarios, against the fold models alone and the all-data model alone; the separation and its
equal weight on 14 development scenarios, against the cosine alone (its weight 1.5 later on
16, against 0.5-2); the own label's nearest images on 18, against its mean; the separation's
nearest images on 22, against the two labels' fold means; the second repeat on 7 of 26,
against one; its fold models trained without the first repeat's suspects on 6, against all images and against its
all-data model trained without them as well; the separation's median on 30, against its mean; the class vectors'
``CENTER_SHARE`` on 16, against all images, 0.65 and 0.5; ``SUSPECT_FENCE`` and the mutual rank on 16 more, against
fences of 2, 4 and 5 and rank weights of 0.5, 1.5 and 2 (docs/ANALYSIS.md).

The reference models depend on the data only, not on the analysed run, so one
``analyze crossval`` serves every run trained on that data (``analyze ... --crossval DIR``).
Its cost is, per repeat, K trainings on (K-1)/K of the data and one on all of it; a cheaper
recipe (``--config``) is fine, since only the rankings are kept, and ``--repeats 1`` halves it.
The separation reads each fold model's embeddings of every image (``[repeat*/]fold*/embeddings.npy``,
memory-mapped), so they stay beside ``crossval.npz``; the trained models themselves may be deleted.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from core.errors import ConfigError, DataError
from core.io import atomic_path, atomic_write_json, claim_settings, read_json

RESULT_JSON = "crossval.json"
RESULT_ARRAYS = "crossval.npz"
SETUP_JSON = "setup.json"  # written before the first model trains: a resumed call must deal the same folds
DEFAULT_FOLDS = 4
# The reference models' recipe unless --config gives another: the issue's simple baseline (a full softmax with
# CosFace s=32, m=0.3, 128-d embeddings, 12 epochs), under train's default method and backbone. It is also the
# detection benchmark's baseline, so the cross-validated figures and the baseline column differ only by the folds.
REFERENCE_LOSS = {"margin": "cosface", "scale": 32.0, "margin_m": 0.3, "embedding_size": 128}
REFERENCE_EPOCHS = 12
# The all-data model's share of the pair cosine (the fold models share the rest equally).
ALL_DATA_SHARE = 0.5
# A held-out image is compared with this many of its own label's trained images, the most similar (fewer: all).
OWN_NEIGHBOURS = 3
# Image pairs compared at a time when finding them: memory stays near PAIR_CHUNK x (D + 3) numbers.
PAIR_CHUNK = 1 << 20
# A label with this many images or more is compared with its queries in one matrix product (speed only).
BLOCK_POOL = 16
# Independent cross-validations averaged (repeated K-fold): each deals its own folds and trains its own models.
DEFAULT_REPEATS = 2
# Repeat r deals its folds and seeds its models from --seed + REPEAT_SEED_STRIDE * r, apart from a user's next --seed.
REPEAT_SEED_STRIDE = 1000
# The separation's weight in the conflict ranking, beside the pair cosine's 1 (``conflict_score``).
SEPARATION_WEIGHT = 1.5
# An image whose noise score exceeds its label's median by more than this is left out of the trained images the
# separation compares held-out images with (``RepeatedCrossValidation.pool_suspects``).
SUSPECT_FENCE = 3.0
# The weight of a pair's standing among its two labels' candidate pairs in the conflict ranking (``conflict_score``).
MUTUAL_RANK_WEIGHT = 1.0
# A class's vector is the mean of this share of its images, those nearest its plain mean (``trimmed_class_means``).
CENTER_SHARE = 0.8
# ... but never fewer than this many (all of a smaller class).
CENTER_MIN_IMAGES = 3
SAVED_ARRAYS = ("labels", "fold", "held_out_score", "all_data_score", "class_vectors", "held_out_own", "center_share")
# Each reference model's folder and its embeddings of every image (written as the model finishes); the fold models'
# stay beside crossval.npz, since the pair separation reads them.
FOLD_DIR = "fold{fold}"
EMBEDDINGS_FILE = "embeddings.npy"
# Repeat 0 lies in the output folder itself (a one-repeat result is laid out as before repeats existed), repeat r here.
REPEAT_DIR = "repeat{repeat}"


@dataclass
class CrossValidation:
    """The reference evidence for one dataset, in dataset order."""

    labels: np.ndarray  # int64 [N]
    fold: np.ndarray  # int64 [N] the fold model that never trained on the image
    held_out_score: np.ndarray  # float32 [N] fold models: nearest other mean - own nearest images; NaN: no own
    all_data_score: np.ndarray  # float32 [N] all-data model: nearest other mean - own mean (the image inside it)
    class_vectors: np.ndarray  # float32 [C, (K+1)*D] see the module docstring; zero rows: a class with no image
    held_out_own: np.ndarray  # float32 [N] held-out image vs its own label's nearest trained images; NaN: none
    center_share: np.ndarray  # 0-d: the CENTER_SHARE the class vectors were built with (older results are refused)
    fold_embeddings: Sequence[np.ndarray]  # K x [N, D] every image under each fold model (memory maps will do)

    @property
    def folds(self) -> int:
        return len(self.fold_embeddings)

    @property
    def noise_score(self) -> np.ndarray:
        """The robust z-scores of the two scores summed (an image neither judged sits at the median)."""
        from analysis.noise import neutral_where_missing, robust_z

        return robust_z(neutral_where_missing(self.held_out_score)) + robust_z(
            neutral_where_missing(self.all_data_score))

    def pair_similarity(self, label_a: np.ndarray, label_b: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
        """Cosine of the two classes' means, half averaged over the fold models and half the all-data model's (NaN
        where a class has no image). ``chunk`` pairs at a time: a million pairs' rows would be gigabytes."""
        label_a, label_b = np.asarray(label_a, dtype=np.int64), np.asarray(label_b, dtype=np.int64)
        similarity = np.empty(len(label_a), dtype=np.float32)
        for begin in range(0, len(label_a), chunk):
            similarity[begin:begin + chunk] = np.einsum("ij,ij->i", self.class_vectors[label_a[begin:begin + chunk]],
                                                        self.class_vectors[label_b[begin:begin + chunk]])
        present = nonzero_rows(self.class_vectors)
        return np.where(present[label_a] & present[label_b], similarity, np.nan).astype(np.float32)

    def pair_separation(self, label_a: np.ndarray, label_b: np.ndarray, chunk: int = PAIR_CHUNK,
                        left_out: Optional[np.ndarray] = None) -> np.ndarray:
        """Per pair, the median over both labels' held-out images of min(0, similarity to the other label's nearest
        trained images minus to its own label's), see the module docstring (NaN: no image of either has trained
        images of both labels in its fold). ``left_out`` (bool [N]): images no held-out image is compared with, on
        either side (``RepeatedCrossValidation.pool_suspects``). Work grows with the pairs' image pairs, ``chunk`` of
        them at a time, never with C x C; one fold model's unit embeddings are held at a time."""
        from analysis.index import normalize_rows

        label_a, label_b = np.asarray(label_a, dtype=np.int64), np.asarray(label_b, dtype=np.int64)
        num_classes = len(self.class_vectors)
        order = np.argsort(self.labels, kind="stable")
        counts = np.bincount(self.labels, minlength=num_classes)
        # every (pair, image of one of its labels, the pair's other label), both sides at once
        (pair_a, image_a, _), (pair_b, image_b, _) = (_label_members(given, order, counts)
                                                      for given in (label_a, label_b))
        pair, image = np.concatenate([pair_a, pair_b]), np.concatenate([image_a, image_b])
        other = np.concatenate([label_b[pair_a], label_a[pair_b]])
        has_own = np.isfinite(self.held_out_own[image])
        pair, image, other = pair[has_own], image[has_own], other[has_own]
        margin = np.full(len(pair), np.nan, dtype=np.float32)
        for f, embeddings in enumerate(self.fold_embeddings):
            held = self.fold[image] == f
            pooled = self.fold != f if left_out is None else (self.fold != f) & ~left_out
            pool_labels = np.where(pooled, self.labels, num_classes)  # held-out and left-out images: a spare class
            unit = normalize_rows(embeddings)
            to_other = label_nearest_similarity(unit, image[held], other[held], pool_labels, num_classes, chunk=chunk)
            if left_out is None:
                to_own = self.held_out_own[image[held]]
            else:  # each held-out image once against its own label's smaller pool
                queries = np.unique(image[held])
                to_own = label_nearest_similarity(unit, queries, self.labels[queries], pool_labels, num_classes,
                                                  chunk=chunk)[np.searchsorted(queries, image[held])]
            margin[held] = np.minimum(to_other - to_own, 0.0)
        judged = np.isfinite(margin)
        return grouped_median(pair[judged], margin[judged], len(label_a))


@dataclass
class RepeatedCrossValidation:
    """``DEFAULT_REPEATS`` cross-validations of one dataset, each with its own folds and models (repeated K-fold),
    their evidence averaged: every image is read by one model per repeat that never trained on it. One set of models'
    rankings moves with its seed (split-pair AP by 0.01 to 0.12 between two repeats on the development scenarios);
    the average moves less and ranks better (docs/ANALYSIS.md). The analyses read it as they would one repeat."""

    repeats: Sequence[CrossValidation]

    @property
    def folds(self) -> int:
        return self.repeats[0].folds

    @property
    def judged(self) -> np.ndarray:
        """Per image, whether some model that never trained on it judged it."""
        return np.logical_or.reduce([np.isfinite(repeat.held_out_score) for repeat in self.repeats])

    @property
    def noise_score(self) -> np.ndarray:
        return np.mean([repeat.noise_score for repeat in self.repeats], axis=0)

    @property
    def class_vectors(self) -> np.ndarray:
        """The repeats' class vectors side by side, scaled so that one inner product is their mean cosine. Built on
        each access and not kept: at a million classes it is gigabytes, needed once (the candidates' search)."""
        vectors = np.concatenate([repeat.class_vectors for repeat in self.repeats], axis=1, dtype=np.float32)
        vectors *= np.float32(1.0 / math.sqrt(len(self.repeats)))
        return vectors

    def pair_similarity(self, label_a: np.ndarray, label_b: np.ndarray) -> np.ndarray:
        return np.mean([repeat.pair_similarity(label_a, label_b) for repeat in self.repeats], axis=0,
                       dtype=np.float32)

    @property
    def pool_suspects(self) -> np.ndarray:
        """Per image, whether its noise score exceeds its label's median by more than ``SUSPECT_FENCE``: an intruder
        among its label's images, not a label whose images all look like another's (a split person's do)."""
        score, labels = self.noise_score, self.repeats[0].labels
        return score - grouped_median(labels, score, len(self.repeats[0].class_vectors))[labels] > SUSPECT_FENCE

    def pair_separation(self, label_a: np.ndarray, label_b: np.ndarray, chunk: int = PAIR_CHUNK) -> np.ndarray:
        """The mean of the repeats' separations that are defined (NaN: none is), each comparing the held-out images
        with trained images other than the ``pool_suspects``."""
        left_out = self.pool_suspects
        separations = np.stack([repeat.pair_separation(label_a, label_b, chunk, left_out) for repeat in self.repeats])
        defined = np.isfinite(separations)
        totals = np.where(defined, separations, 0.0).sum(axis=0)
        return np.where(defined.any(axis=0), totals / np.maximum(defined.sum(axis=0), 1), np.nan).astype(np.float32)


def _label_members(wanted: np.ndarray, order: np.ndarray, counts: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every image of each wanted label, without a loop: per (row of ``wanted``, image of its label) the row's
    position, the image (``order``: images sorted by label, ``counts``: images per label) and its place among the
    row's images. Rows come out grouped, in order."""
    per_row = counts[wanted]
    row = np.repeat(np.arange(len(wanted)), per_row)
    place = np.arange(len(row)) - np.repeat(np.cumsum(per_row) - per_row, per_row)
    starts = np.cumsum(counts) - counts
    return row, order[np.repeat(starts[wanted], per_row) + place], place


def grouped_median(groups: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    """Per group ``0 .. size - 1``, the median of its values (the mean of the middle two for an even count; NaN: no
    value), by one sort instead of a loop over millions of groups."""
    groups = np.asarray(groups, dtype=np.int64)
    values = np.asarray(values, dtype=np.float32)[np.lexsort((values, groups))]
    counts = np.bincount(groups, minlength=size)
    starts = np.cumsum(counts) - counts
    has = counts > 0
    median = np.full(size, np.nan, dtype=np.float32)
    median[has] = (values[starts[has] + (counts[has] - 1) // 2] + values[starts[has] + counts[has] // 2]) / 2
    return median


def nonzero_rows(vectors: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """Per vector (the last axis), whether any entry is nonzero: a class with no image has zero means. In chunks, so
    no temporary as large as ``vectors`` is made."""
    flat = vectors.reshape(-1, vectors.shape[-1])
    found = np.empty(len(flat), dtype=bool)
    for begin in range(0, len(flat), chunk):
        found[begin:begin + chunk] = (flat[begin:begin + chunk] != 0).any(axis=1)
    return found.reshape(vectors.shape[:-1])


def conflict_score(similarity: np.ndarray, separation: np.ndarray, label_a: np.ndarray, label_b: np.ndarray
                   ) -> np.ndarray:
    """The conflict ranking of the pairs ``(label_a, label_b)`` from their ``pair_similarity`` and ``pair_separation``:
    the evidence, robust z of the one plus ``SEPARATION_WEIGHT`` times robust z of the other (a pair the separation
    cannot judge sits at its median), minus ``MUTUAL_RANK_WEIGHT`` times robust z of log(the pair's rank by that
    evidence among the pairs holding label_a) + log(its rank among those holding label_b). A split person's two labels
    are each other's best match; a look-alike family's members each have several near-equal ones. All over these
    pairs; NaN: a class with no image."""
    from analysis.noise import neutral_where_missing, robust_z

    present = np.isfinite(similarity)
    score = np.full(len(similarity), np.nan, dtype=np.float32)
    if present.any():
        evidence = robust_z(similarity[present]) + SEPARATION_WEIGHT * robust_z(
            neutral_where_missing(separation[present]))
        rank_a, rank_b = label_ranks(np.asarray(label_a)[present], np.asarray(label_b)[present], evidence)
        score[present] = evidence - MUTUAL_RANK_WEIGHT * robust_z(np.log(rank_a) + np.log(rank_b))
    return score


def label_ranks(label_a: np.ndarray, label_b: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pair, its rank by ``score`` (1: the highest; ties in the pairs' order) among the pairs holding its label_a,
    and among those holding its label_b: one sort of both ends."""
    ends = np.concatenate([label_a, label_b]).astype(np.int64)
    rank = rank_within_groups(ends, np.concatenate([score, score])) + 1
    return rank[:len(label_a)], rank[len(label_a):]


def rank_within_groups(groups: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per entry, its place (0: the highest value; ties in the entries' order) among the entries of its group."""
    order = np.lexsort((-values, groups))
    counts = np.bincount(groups)
    rank = np.empty(len(groups), dtype=np.int64)
    rank[order] = np.arange(len(groups)) - np.repeat(np.cumsum(counts) - counts, counts)
    return rank


def assign_folds(labels: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """Each class's images dealt round-robin into ``folds`` from a random start, in a random order: every fold
    holds ``n // folds`` or one more of each class, so every class with ``folds`` images or more trains in each
    reference model."""
    if folds < 2:
        raise ConfigError(f"--folds must be >= 2 (one fold held out, the rest trained on), got {folds}")
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    for members in np.split(order, bounds):
        members = rng.permutation(members)
        fold[members] = (np.arange(len(members)) + rng.integers(folds)) % folds
    return fold


def _nearest_other_minus_own(rows: np.ndarray, labels: np.ndarray, sums: np.ndarray, counts: np.ndarray,
                             own: Optional[np.ndarray] = None) -> np.ndarray:
    """Per row: its similarity to the nearest other class mean minus ``own`` (default: its similarity to its own
    class mean; NaN: its class has no mean, or there is no other class). One kNN search (analysis/noise.py's
    ``sample_neighbours``), so no ``[N, C]`` block is ever formed."""
    from analysis.centers import Centers
    from analysis.noise import sample_neighbours

    found = sample_neighbours(rows, labels, Centers(vectors=sums, source="means", counts=counts), leave_one_out=False)
    judged = (counts[labels] > 0) & (found.nearest_label >= 0)
    own = found.own_similarity if own is None else own
    return np.where(judged, found.nearest_similarity - own, np.nan).astype(np.float32)


def label_nearest_similarity(unit: np.ndarray, queries: np.ndarray, targets: np.ndarray, pool_labels: np.ndarray,
                             num_classes: int, nearest: int = OWN_NEIGHBOURS, chunk: int = PAIR_CHUNK) -> np.ndarray:
    """Per query (a row of the unit rows ``unit``), the mean of its ``nearest`` largest similarities to the rows whose
    ``pool_labels`` entry is its target label (all of them when fewer; NaN: none; a pool label of ``num_classes``
    leaves a row out). Only query-target pairs are formed: the work is the sum over queries of their target's images,
    small beside an all-pairs search. Targets with ``BLOCK_POOL`` images or more are done one matrix product per
    target; the rest, ``chunk`` pairs at a time, as gathered rows (a per-target loop over millions of small classes
    would cost more than their pairs)."""
    targets = np.asarray(targets, dtype=np.int64)
    order = np.argsort(pool_labels, kind="stable")
    counts = np.bincount(pool_labels, minlength=num_classes + 1)[:num_classes]
    result = np.full(len(queries), np.nan, dtype=np.float32)
    large = counts[targets] >= max(BLOCK_POOL, nearest)
    result[~large] = _nearest_by_pairs(unit, queries[~large], targets[~large], order, counts, nearest, chunk)
    result[large] = _nearest_by_blocks(unit, queries[large], targets[large], order, counts, nearest)
    return result


def _nearest_by_pairs(unit: np.ndarray, queries: np.ndarray, targets: np.ndarray, order: np.ndarray,
                      counts: np.ndarray, nearest: int, chunk: int) -> np.ndarray:
    ends = np.cumsum(counts[targets])
    result = np.full(len(queries), np.nan, dtype=np.float32)
    first = 0
    while first < len(queries):
        # the queries whose pairs fit in one chunk (at least one query, however many partners it has)
        last = max(first + 1, int(np.searchsorted(ends, (ends[first - 1] if first else 0) + chunk, side="right")))
        row, partner, rank = _label_members(targets[first:last], order, counts)
        similarity = np.einsum("ij,ij->i", unit[queries[first + row]], unit[partner])
        # each query's own group, most similar first (rows are whole numbers, similarities within [-1, 1])
        similarity = similarity[np.argsort(row * 4.0 - similarity)]
        keep = rank < nearest
        taken = np.bincount(row[keep], minlength=last - first)
        sums = np.bincount(row[keep], similarity[keep], minlength=last - first)
        result[first:last] = np.where(taken > 0, sums / np.maximum(taken, 1), np.nan)
        first = last
    return result


def _nearest_by_blocks(unit: np.ndarray, queries: np.ndarray, targets: np.ndarray, order: np.ndarray,
                       counts: np.ndarray, nearest: int) -> np.ndarray:
    """Every target here has at least ``nearest`` images: its queries against them in one product."""
    result = np.empty(len(queries), dtype=np.float32)
    starts = np.cumsum(counts) - counts
    by_target = np.argsort(targets, kind="stable")
    for group in np.split(by_target, np.flatnonzero(np.diff(targets[by_target])) + 1):
        if not len(group):
            continue
        target = targets[group[0]]
        similarity = unit[queries[group]] @ unit[order[starts[target]:starts[target] + counts[target]]].T
        result[group] = -np.partition(-similarity, nearest - 1, axis=1)[:, :nearest].mean(axis=1)
    return result


def held_out_evidence(fold_embeddings: list[np.ndarray], all_data_embeddings: np.ndarray, labels: np.ndarray,
                      fold: np.ndarray, num_classes: int) -> CrossValidation:
    """The evidence from each fold model's embeddings of every image and the all-data model's (``[N, D]``, a memory
    map will do), see the module docstring."""
    from analysis.centers import class_sums
    from analysis.index import normalize_rows

    labels = np.asarray(labels, dtype=np.int64)
    fold = np.asarray(fold, dtype=np.int64)
    folds = len(fold_embeddings)
    held_out_score = np.full(len(labels), np.nan, dtype=np.float32)
    held_out_own = np.full(len(labels), np.nan, dtype=np.float32)
    vectors = []
    for f, embeddings in enumerate(fold_embeddings):
        is_held = fold == f
        held = np.flatnonzero(is_held)
        # one pass: the held-out images are summed into a spare class C, the rest into their own
        pool_labels = np.where(is_held, num_classes, labels)
        unit = normalize_rows(embeddings)
        sums = class_sums(unit, pool_labels, num_classes + 1)
        held_out_own[held] = label_nearest_similarity(unit, held, labels[held], pool_labels, num_classes)
        held_out_score[held] = _nearest_other_minus_own(unit[held], labels[held], sums[:num_classes],
                                                        np.bincount(labels[~is_held], minlength=num_classes),
                                                        held_out_own[held])
        vectors.append(trimmed_class_means(unit, labels, num_classes) * math.sqrt((1 - ALL_DATA_SHARE) / folds))
    all_unit = normalize_rows(all_data_embeddings)
    all_data_score = _nearest_other_minus_own(all_unit, labels, class_sums(all_unit, labels, num_classes),
                                              np.bincount(labels, minlength=num_classes))
    vectors.append(trimmed_class_means(all_unit, labels, num_classes) * math.sqrt(ALL_DATA_SHARE))
    return CrossValidation(labels=labels, fold=fold, held_out_score=held_out_score, all_data_score=all_data_score,
                           class_vectors=np.concatenate(vectors, axis=1).astype(np.float32),
                           held_out_own=held_out_own, center_share=np.array(CENTER_SHARE),
                           fold_embeddings=fold_embeddings)


def trimmed_class_means(unit: np.ndarray, labels: np.ndarray, num_classes: int, share: float = CENTER_SHARE,
                        min_images: int = CENTER_MIN_IMAGES) -> np.ndarray:
    """Unit class means ``[C, D]`` of each class's ``share`` of images nearest its plain mean (rounded up; at least
    ``min_images``, or all; zero rows: no image). A class's flipped and open-set images pull its plain mean off its
    person, so a split person's two labels, each with its own intruders, look less alike than they are; the
    images farthest from the mean are mostly those intruders."""
    from analysis.centers import class_sums
    from analysis.index import normalize_rows

    labels = np.asarray(labels, dtype=np.int64)
    to_mean = np.einsum("ij,ij->i", unit, normalize_rows(class_sums(unit, labels, num_classes))[labels])
    counts = np.bincount(labels, minlength=num_classes)
    rank = rank_within_groups(labels, to_mean)  # within its class, nearest its mean first
    kept = rank < np.maximum(np.ceil(share * counts), np.minimum(counts, min_images))[labels]
    # the images left out are summed into a spare class C: no copy of the kept rows is made
    return normalize_rows(class_sums(unit, np.where(kept, labels, num_classes), num_classes + 1)[:num_classes])


# -- training the reference models ---------------------------------------------------------
def reference_values(method: Optional[str] = None) -> dict[str, Any]:
    """The default reference recipe as config keys: ``REFERENCE_LOSS`` and the method's full-softmax options."""
    from core.config import TrainConfig
    from core.methods import get_method

    method = method or TrainConfig.method
    spec = get_method(method)
    if spec.full_softmax_options is None:
        raise ConfigError(f"--method {method} has no full-softmax setting for the reference models; give a --config "
                          "whose method has one")
    return {"method": method, **REFERENCE_LOSS, **spec.full_softmax_options, "epochs": REFERENCE_EPOCHS}


def reference_recipe(config: Optional[str | Path] = None, epochs: Optional[int] = None):
    """The reference models' TrainConfig: ``config`` (a train config file) if given, else ``reference_values``;
    ``epochs`` overrides either."""
    from core.config import load_config

    values = {} if config is not None else reference_values()
    return load_config(config, {**values, "epochs": epochs})


def _list_entries(dataset, data_path: Path) -> list[str]:
    """One ``--data`` list entry per image: its file, or ``train.rec#KEY`` for RecordIO data."""
    from analysis.noise import record_reference
    from core.data.base import sample_sources

    sources = sample_sources(dataset)
    if sources.records is not None:
        rec_path = getattr(dataset, "rec_path", None)
        if rec_path is None:
            raise DataError(f"--data {data_path}: has record keys but no .rec file to reference")
        return [record_reference(rec_path, key) for key in sources.records]
    if sources.paths is None:
        raise DataError(f"--data {data_path}: its images have neither files nor record keys, so the reference "
                        "models cannot be given a subset of them")
    return [str(Path(path).absolute()) for path in sources.paths]


def _reference_embeddings(model_dir: Path, training_data: str, recipe, seed: int, device: str, progress: bool,
                          data_path: Path, announce: Callable[[int], None]) -> np.ndarray:
    """One reference model trained on ``training_data`` (a --data value) and every image of ``data_path`` embedded by
    it, as ``model_dir/embeddings.npy`` (a memory map). Resumable: stored embeddings are reused, a checkpoint
    resumes. ``announce(epochs)`` is called before training."""
    from analysis.centers import cached_embeddings, load_run
    from core.data.loader import open_dataset
    from core.data.transforms import ModelInputTransform
    from core.distributed import resolve_device
    from core.trainer import Trainer

    stored = model_dir / EMBEDDINGS_FILE
    if not stored.is_file():
        run_dir = model_dir / "run"
        config = recipe.replace(data=training_data, out=str(run_dir), seed=seed, device=device,
                                record_dynamics=False).validate()
        announce(config.epochs)
        trainer = Trainer(config, run_dir, progress=progress)
        if (run_dir / "checkpoint.pt").exists():
            trainer.resume(run_dir)
        trainer.fit()
        run = load_run(run_dir)
        embedded = open_dataset(data_path, transform=ModelInputTransform(run.input_size))
        _, cache_file, _ = cached_embeddings(run, data_path, embedded, resolve_device(device), progress=progress)
        cache_file.replace(stored)  # the model is done once its embeddings are in place
    return np.load(stored, mmap_mode="r")


def run_crossval(data: str | Path, out: Path, recipe, folds: int = DEFAULT_FOLDS, repeats: int = DEFAULT_REPEATS,
                 seed: int = 0, device: str = "auto", progress: bool = True, echo: Callable[[str], None] = print
                 ) -> RepeatedCrossValidation:
    """Per repeat, train the K fold models and the all-data model on ``data`` with ``recipe`` (a TrainConfig), embed
    every image under each, and write the repeat's ``crossval.npz``; then ``out/crossval.json`` (last). Resumable
    model by model; a call with more repeats than a finished one reuses its repeats."""
    from core.data.folder import write_list
    from core.data.loader import open_dataset

    if repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {repeats}")
    out = Path(out)
    data_path = Path(data).expanduser().absolute()
    dataset = open_dataset(data_path)
    labels = np.asarray(dataset.labels, dtype=np.int64)
    num_classes = int(dataset.num_classes)
    recipe_values = {k: v for k, v in asdict(recipe).items() if k != "out"}
    _claim_setup(out, {"num_samples": len(labels), "labels_sha256": hashlib.sha256(labels.tobytes()).hexdigest(),
                       "folds": folds, "seed": seed, "recipe": recipe_values,
                       "later_repeats_fold_training": f"without repeat 0's suspects (fence {SUSPECT_FENCE})"})
    entries: list[str] = []  # listed on first need: a finished or stale result lists nothing
    models = repeats * (folds + 1)

    def announcer(number: int, images: int, model_dir: Path) -> Callable[[int], None]:
        return lambda epochs: echo(f"cross-validation: reference model {number} of {models} on {images:,} of "
                                   f"{len(labels):,} images ({epochs} epochs) -> {model_dir / 'run'}")

    evidence = []
    for repeat in range(repeats):
        folder, repeat_seed = repeat_dir(out, repeat), seed + REPEAT_SEED_STRIDE * repeat
        finished = _finished_repeat(folder, folds, len(labels), num_classes)
        if finished is not None:  # written after its models, under the setup claimed above: not computed again
            evidence.append(finished)
            continue
        fold = assign_folds(labels, folds, repeat_seed)
        # INCV's second round: a later repeat's fold models train without the first repeat's suspects (module docstring)
        left_out = RepeatedCrossValidation(evidence[:1]).pool_suspects if repeat else np.zeros(len(labels), bool)
        fold_embeddings = []
        for f in range(folds):
            fold_dir = folder / FOLD_DIR.format(fold=f)
            trained = np.flatnonzero((fold != f) & ~left_out)
            if not (fold_dir / EMBEDDINGS_FILE).is_file():  # a finished fold needs no list (a million lines at scale)
                fold_dir.mkdir(parents=True, exist_ok=True)
                entries = entries or _list_entries(dataset, data_path)
                write_list(fold_dir / "train.txt", [entries[i] for i in trained], labels[trained].tolist())
            fold_embeddings.append(_reference_embeddings(
                fold_dir, str(fold_dir / "train.txt"), recipe, repeat_seed + f, device, progress, data_path,
                announcer(repeat * (folds + 1) + f + 1, len(trained), fold_dir)))
        all_dir = folder / "all"
        all_data = _reference_embeddings(all_dir, str(data_path), recipe, repeat_seed + folds, device, progress,
                                         data_path, announcer((repeat + 1) * (folds + 1), len(labels), all_dir))
        evidence.append(held_out_evidence(fold_embeddings, all_data, labels, fold, num_classes))
        with atomic_path(folder / RESULT_ARRAYS) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, **{name: getattr(evidence[-1], name) for name in SAVED_ARRAYS})
    atomic_write_json(out / RESULT_JSON, {"data": str(data_path), "num_samples": len(labels),
                                          "num_classes": num_classes, "folds": folds, "repeats": repeats,
                                          "seed": seed, "recipe": recipe_values})
    return RepeatedCrossValidation(evidence)


def _finished_repeat(folder: Path, folds: int, num_samples: int, num_classes: int) -> Optional[CrossValidation]:
    """A repeat's stored evidence when it reads back whole, else None (not yet written, or an older layout that its
    models' embeddings will write again)."""
    if not (folder / RESULT_ARRAYS).is_file():
        return None
    try:
        return _load_repeat(folder, str(folder), folds, num_samples, num_classes)
    except (ConfigError, DataError):
        return None


def repeat_dir(out: Path, repeat: int) -> Path:
    """Where repeat ``repeat`` of a cross-validation in ``out`` lies (``REPEAT_DIR``)."""
    return Path(out) if repeat == 0 else Path(out) / REPEAT_DIR.format(repeat=repeat)


def _claim_setup(out: Path, setup: dict[str, Any]) -> None:
    """Record what the reference models in ``out`` are trained with, or refuse to resume them with anything else:
    a stored fold model trained under other folds (another --seed or --folds, or data labelled otherwise) would read
    images it trained on as held out, and every score would look clean. The data's labels are compared, not its
    path, so a moved dataset resumes."""
    path = out / SETUP_JSON
    differing = claim_settings(path, setup)
    if differing:
        raise ConfigError(f"{out}: holds reference models begun with other settings ({', '.join(differing)} "
                          f"differ, see {path}); resume with the same data (its labels, wherever it lies), "
                          "--folds, --seed, --config and --epochs, or give another --out")


def _fold_embeddings(folder: Path, where: str, fold: int, num_samples: int) -> np.ndarray:
    """One fold model's embeddings of every image, memory-mapped (a plain array file: nothing in it runs code)."""
    path = folder / FOLD_DIR.format(fold=fold) / EMBEDDINGS_FILE
    if not path.is_file():
        raise ConfigError(f"{where}: {path} is missing; the pair separation reads every fold model's "
                          "embeddings, so keep them beside crossval.npz, or write them again with python cli.py "
                          "analyze crossval")
    try:
        embeddings = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: not a readable embedding array ({exc}); write it again with python cli.py "
                        "analyze crossval") from exc
    if embeddings.ndim != 2 or len(embeddings) != num_samples or not np.issubdtype(embeddings.dtype, np.floating):
        raise DataError(f"{path}: holds a {embeddings.dtype} array of shape {list(embeddings.shape)}, expected "
                        f"[{num_samples}, D] floats, one row per image")
    return embeddings


def default_crossval_dir(checkpoint: Path) -> Path:
    """Where ``analyze crossval`` writes without --out, and where every analyze command looks without --crossval:
    beside the run's checkpoint."""
    return Path(checkpoint).parent / "crossval"


def crossval_for(checkpoint: Path, data_path: Path) -> Optional[Path]:
    """The run's default cross-validation folder when it holds a result computed on ``data_path``, else None."""
    folder = default_crossval_dir(checkpoint)
    if not (folder / RESULT_JSON).is_file():
        return None
    computed_on = read_json(folder / RESULT_JSON).get("data")
    return folder if computed_on and Path(computed_on).resolve() == Path(data_path).resolve() else None


def load_crossval(path: str | Path, num_samples: int, num_classes: int) -> RepeatedCrossValidation:
    """``analyze crossval``'s output, checked to describe data of this size (arrays only: nothing here runs code)."""
    folder = Path(path)
    where = f"--crossval {folder}"
    if not (folder / RESULT_JSON).is_file() or not (folder / RESULT_ARRAYS).is_file():
        raise ConfigError(f"{where}: holds no {RESULT_JSON} and {RESULT_ARRAYS}; write them with "
                          f"python cli.py analyze crossval RUN --out {folder}")
    meta = read_json(folder / RESULT_JSON)
    if meta.get("num_samples") != num_samples or meta.get("num_classes") != num_classes:
        raise DataError(f"{where}: was computed on {meta.get('num_samples')} images of {meta.get('num_classes')} "
                        f"classes ({meta.get('data')}), but the analysed data has {num_samples} images of "
                        f"{num_classes}; run analyze crossval on this data")
    repeats = meta.get("repeats", 1)  # written before repeats existed: one
    if not isinstance(repeats, int) or repeats < 1:
        raise DataError(f"{where}/{RESULT_JSON}: repeats is {repeats!r}, expected a whole number >= 1")
    return RepeatedCrossValidation([_load_repeat(repeat_dir(folder, repeat), where, int(meta.get("folds", 0)),
                                                 num_samples, num_classes) for repeat in range(repeats)])


def _load_repeat(folder: Path, where: str, folds: int, num_samples: int, num_classes: int) -> CrossValidation:
    arrays_file = folder / RESULT_ARRAYS
    try:
        with np.load(arrays_file, allow_pickle=False) as arrays:
            saved = {name: arrays[name] for name in SAVED_ARRAYS}
    except (KeyError, ValueError, OSError) as exc:
        raise DataError(f"{where}: {arrays_file} is not a readable cross-validation result ({exc}); write it again "
                        "with python cli.py analyze crossval") from exc
    if saved["center_share"].shape != () or float(saved["center_share"]) != CENTER_SHARE:
        raise DataError(f"{where}: {arrays_file} holds class vectors built from {saved['center_share']} of each "
                        f"class's images, this version builds them from {CENTER_SHARE}; write it again with python "
                        "cli.py analyze crossval (it reuses the stored models' embeddings)")
    evidence = CrossValidation(**saved, fold_embeddings=[_fold_embeddings(folder, where, f, num_samples)
                                                         for f in range(folds)])
    sizes = {len(getattr(evidence, name)) for name in ("labels", "fold", "held_out_score", "all_data_score",
                                                        "held_out_own")}
    dimensions = {embeddings.shape[1] for embeddings in evidence.fold_embeddings}
    if (folds < 2 or sizes != {num_samples} or len(evidence.class_vectors) != num_classes or len(dimensions) > 1
            or evidence.labels.min(initial=0) < 0 or evidence.labels.max(initial=0) >= num_classes
            or evidence.fold.min(initial=0) < 0 or evidence.fold.max(initial=0) >= max(folds, 1)):
        raise DataError(f"{where}: {arrays_file}: its arrays do not match {RESULT_JSON} "
                        f"({sorted(sizes)} images, {len(evidence.class_vectors)} classes, {folds} folds of "
                        f"{sorted(dimensions)}-d embeddings)")
    return evidence
