"""Cross-validated reference evidence: stratified folds, held-out and all-data scores and the pair cosine as known
answers, the file round trip and its refusals, and how noise.csv and conflict.csv use it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from analysis.conflict import center_neighbours, conflict_table
from analysis.centers import Centers
from analysis.crossval import (BLOCK_POOL, MUTUAL_RANK_WEIGHT, REPEAT_SEED_STRIDE, RESULT_ARRAYS, RESULT_JSON,
                               SAVED_ARRAYS, SEPARATION_WEIGHT, SETUP_JSON, CrossValidation, RepeatedCrossValidation,
                               assign_folds, conflict_score, grouped_median, held_out_evidence,
                               label_nearest_similarity, label_ranks, load_crossval, nonzero_rows, reference_recipe,
                               repeat_dir, run_crossval, trimmed_class_means)
from analysis.noise import (RANK_COMBINED, RANK_CROSSVAL, RANK_CROSSVAL_AND_RUN, RANK_FEATURES, SampleNeighbours,
                            noise_table, rank_correlation, robust_z)
from core.errors import ConfigError, DataError
from core.io import atomic_write_json, read_json
from tests.analysis.conftest import write_rec


def test_folds_deal_each_class_evenly_and_repeat_with_the_seed():
    labels = np.repeat(np.arange(5), [1, 2, 4, 7, 9])
    fold = assign_folds(labels, 4, seed=3)
    for c in range(5):
        counts = np.bincount(fold[labels == c], minlength=4)
        assert counts.max() - counts.min() <= 1 and counts.sum() == (labels == c).sum()
    assert np.array_equal(fold, assign_folds(labels, 4, seed=3))
    assert not np.array_equal(fold, assign_folds(labels, 4, seed=4))
    with pytest.raises(ConfigError, match="--folds must be >= 2"):
        assign_folds(labels, 1)


def _two_fold_world():
    """Classes 0 and 1 at directions e0 and e1 under both fold models; image 5 (class 1's label) looks like class 0."""
    e0, e1 = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    labels = np.array([0, 0, 0, 1, 1, 1])
    fold = np.array([0, 1, 0, 1, 0, 1])
    rows = np.stack([e0, e0, e0, e1, e1, e0])
    return rows, labels, fold


def test_held_out_scores_compare_each_image_with_means_of_images_its_model_trained_on():
    rows, labels, fold = _two_fold_world()
    evidence = held_out_evidence([rows, rows], rows, labels, fold, 2)
    # image 5 (held out in fold 1) against the means of fold 0's images: class 0 = e0, class 1 = e1 (image 4)
    assert evidence.held_out_score[5] == pytest.approx(1.0 - 0.0)
    # a clean image of class 1 held out in fold 1 (image 3): its own mean (image 4) is e1
    assert evidence.held_out_score[3] == pytest.approx(0.0 - 1.0)
    # image 4 (fold 0) against fold 1's class-1 images 3 (e1) and 5 (e0), both among its 3 nearest: (1 + 0) / 2
    assert evidence.held_out_score[4] == pytest.approx(0.0 - 0.5)
    assert evidence.held_out_score.argmax() == 5


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _reference_nearest(rows, targets, pool, pool_labels, nearest):
    """The definition, one row at a time."""
    out = []
    for row, target in zip(_unit(rows), targets):
        similarities = np.sort(_unit(pool[pool_labels == target]) @ row)[::-1][:nearest]
        out.append(similarities.mean() if len(similarities) else np.nan)
    return np.array(out)


@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])  # a row's pairs may be larger than a chunk
def test_label_nearest_similarity_is_the_mean_of_the_closest_pool_images_of_the_target_label(chunk):
    rng = np.random.default_rng(7)
    # class 7 has BLOCK_POOL images or more (one matrix product), classes 0-4 fewer, class 5 none, class 6 one
    pool_labels = np.concatenate([rng.integers(0, 5, 40), [6], np.full(BLOCK_POOL + 3, 7)])
    targets = np.array([0, 1, 2, 3, 4, 5, 6, 0, 6, 7, 7, 3])
    pool = len(pool_labels)
    embeddings = _unit(rng.normal(size=(pool + len(targets), 4)))
    queries = np.arange(pool, pool + len(targets))
    left_out = np.concatenate([pool_labels, np.full(len(targets), 8)])  # the query rows: not in the pool
    found = label_nearest_similarity(embeddings, queries, targets, left_out, 8, nearest=3, chunk=chunk)
    expected = _reference_nearest(embeddings[queries], targets, embeddings[:pool], pool_labels, 3)
    assert np.allclose(found, expected, atol=1e-6, equal_nan=True)
    assert np.isnan(found[5])  # no pool image of the target
    assert found[6] == pytest.approx(embeddings[queries[6]] @ embeddings[40])  # one image: itself


def test_the_all_data_score_keeps_each_image_inside_its_own_mean():
    rows, labels, fold = _two_fold_world()
    evidence = held_out_evidence([rows, rows], rows, labels, fold, 2)
    # class 1's mean over images 3-5 is (2 e1 + e0) / sqrt(5); class 0's is e0
    own_mean_1 = np.array([1.0, 2.0, 0.0]) / np.sqrt(5)
    assert evidence.all_data_score[5] == pytest.approx(1.0 - own_mean_1[0])
    assert evidence.all_data_score[3] == pytest.approx(0.0 - own_mean_1[1])
    assert evidence.all_data_score[0] == pytest.approx(own_mean_1[0] - 1.0)


def test_the_noise_score_sums_the_two_robust_z_scores_and_judges_the_unjudged_at_the_median():
    rng = np.random.default_rng(1)
    held, whole = rng.normal(0, 1, 50).astype(np.float32), rng.normal(0, 3, 50).astype(np.float32)
    held[:4] = np.nan
    evidence = held_out_evidence([np.eye(50, 2)] * 2, np.eye(50, 2), np.zeros(50, np.int64), np.arange(50) % 2, 1)
    evidence.held_out_score, evidence.all_data_score = held, whole
    filled = np.where(np.isnan(held), np.nanmedian(held), held)
    assert np.allclose(evidence.noise_score, robust_z(filled) + robust_z(whole))
    assert np.allclose(evidence.noise_score[:4], robust_z(whole)[:4], atol=1e-6)


def test_an_image_whose_class_has_no_other_fold_gets_no_held_out_score():
    rows = np.eye(3)
    evidence = held_out_evidence([rows, rows], rows, np.array([0, 1, 2]), np.array([0, 1, 0]), 3)
    assert np.isnan(evidence.held_out_score).all()
    assert np.allclose(evidence.all_data_score, -1.0)  # the all-data model has every class's mean


def test_pair_similarity_is_half_the_fold_models_average_and_half_the_all_data_model():
    labels = np.array([0, 1])
    fold = np.array([0, 1])
    merged = np.array([[1.0, 0.0], [1.0, 0.0]])  # sees the two classes as one
    apart = np.array([[1.0, 0.0], [0.0, 1.0]])  # sees them as orthogonal
    evidence = held_out_evidence([merged, apart], apart, labels, fold, 3)  # class 2 has no image
    assert evidence.pair_similarity(np.array([0]), np.array([1]))[0] == pytest.approx(0.5 * 0.5 + 0.5 * 0.0)
    evidence = held_out_evidence([merged, apart], merged, labels, fold, 3)
    assert evidence.pair_similarity(np.array([0]), np.array([1]))[0] == pytest.approx(0.5 * 0.5 + 0.5 * 1.0)
    assert evidence.pair_similarity(np.array([1]), np.array([1]))[0] == pytest.approx(1.0)
    assert np.isnan(evidence.pair_similarity(np.array([0]), np.array([2]))[0])


def _split_world():
    """Classes 0 and 1: one person (every image at e0); class 2 another at v = (0.6, 0.8); two folds, both models
    alike. Class 3 has a single image, so no fold model trained on it."""
    e0, v = np.array([1.0, 0.0]), np.array([0.6, 0.8])
    labels = np.array([0, 0, 1, 1, 2, 2, 3])
    fold = np.array([0, 1, 0, 1, 0, 1, 0])
    rows = np.stack([e0, e0, e0, e0, v, v, v])
    return held_out_evidence([rows, rows], rows, labels, fold, 4)


def test_the_separation_is_zero_for_one_person_and_negative_for_two():
    evidence = _split_world()
    separation = evidence.pair_separation(np.array([0, 0, 1, 0]), np.array([1, 2, 2, 3]))
    assert separation[0] == pytest.approx(0.0)  # no held-out image prefers its own label over the other
    assert separation[1] == pytest.approx(0.6 - 1.0) and separation[2] == pytest.approx(0.6 - 1.0)
    # class 3's image has no trained image of its own label, and class 0's images meet a trained class-3 image only in
    # fold model 1 (image 1: 0.6 - 1)
    assert separation[3] == pytest.approx(0.6 - 1.0)
    assert np.isnan(evidence.pair_separation(np.array([3]), np.array([3]))[0])


def _reference_separation(evidence: CrossValidation, a: int, b: int) -> float:
    """The definition, one image at a time: its fold model's 3 most similar trained images of each label."""
    margins = []
    for given, other in ((a, b), (b, a)):
        for i in np.flatnonzero(evidence.labels == given):
            embeddings, trained = evidence.fold_embeddings[evidence.fold[i]], evidence.fold != evidence.fold[i]
            nearest = [_reference_nearest(embeddings[[i]], [label], embeddings[trained], evidence.labels[trained],
                                          3)[0] for label in (given, other)]
            if np.isfinite(nearest).all():
                margins.append(min(0.0, nearest[1] - nearest[0]))
    return float(np.median(margins)) if margins else float("nan")


def test_grouped_median_known_answers():
    groups = np.array([2, 0, 0, 0, 0, 2, 0])
    values = np.array([-0.5, 0.0, -0.9, 0.0, 0.0, -0.1, 0.0])
    # group 0: a split pair's images at 0 and one odd image far below (its mean would be -0.18); group 2: an even count
    assert np.allclose(grouped_median(groups, values, 4), [0.0, np.nan, -0.3, np.nan], equal_nan=True)
    assert np.isnan(grouped_median(np.zeros(0, dtype=np.int64), np.zeros(0), 2)).all()


def test_odd_images_do_not_make_a_split_pair_look_separated():
    """Classes 0 and 1 are one person at e0 (six images each, three per fold), but class 0 also holds two images at
    an odd direction o, one per fold. Each odd image's own label is nearer than the other (margin (0.2 + 1 + 0.2) / 3
    - 0.2 = -0.27) while the twelve others' margins are 0: the median separation stays 0, where a mean would be
    pulled below it."""
    e0, o = np.array([1.0, 0.0]), np.array([0.2, np.sqrt(0.96)])
    labels = np.array([0] * 8 + [1] * 6)
    fold = np.array([0, 1] * 7)
    rows = np.stack([e0] * 6 + [o, o] + [e0] * 6)
    evidence = held_out_evidence([rows, rows], rows, labels, fold, 2)
    assert evidence.pair_separation(np.array([0]), np.array([1]))[0] == pytest.approx(0.0, abs=1e-6)
    margins = [-0.8 / 3] * 2 + [0.0] * 12  # the definition, image by image
    assert _reference_separation(evidence, 0, 1) == pytest.approx(float(np.median(margins)), abs=1e-6)
    assert float(np.mean(margins)) < -0.03


def test_the_separation_matches_its_definition_and_ignores_the_chunk_size():
    rng = np.random.default_rng(4)
    labels = np.concatenate([np.arange(12), rng.integers(0, 12, 60)])
    fold = assign_folds(labels, 3, seed=1)
    evidence = held_out_evidence([rng.normal(size=(72, 5)) for _ in range(3)], rng.normal(size=(72, 5)), labels,
                                 fold, 13)  # class 12 has no image
    a, b = np.triu_indices(13, k=1)
    expected = [_reference_separation(evidence, x, y) for x, y in zip(a, b)]
    assert np.allclose(evidence.pair_separation(a, b), expected, atol=1e-5, equal_nan=True)
    assert np.allclose(evidence.pair_separation(a, b, chunk=7), expected, atol=1e-5, equal_nan=True)
    # a flipped image prefers the other label: its margin counts as 0, never as a positive that outweighs the rest
    assert (evidence.pair_separation(a, b)[b < 12] <= 0).all()


def test_the_conflict_score_adds_robust_z_of_cosine_and_weighted_separation_and_skips_absent_classes():
    rng = np.random.default_rng(5)
    labels = np.concatenate([np.arange(20), rng.integers(0, 20, 100)])
    evidence = held_out_evidence([rng.normal(size=(120, 4)) for _ in range(2)], rng.normal(size=(120, 4)), labels,
                                 assign_folds(labels, 2), 21)
    a, b = np.triu_indices(21, k=1)
    score = conflict_score(evidence.pair_similarity(a, b), evidence.pair_separation(a, b), a, b)
    present = b < 20
    separation = evidence.pair_separation(a[present], b[present])
    filled = np.where(np.isnan(separation), np.nanmedian(separation), separation)
    pair_evidence = robust_z(evidence.pair_similarity(a, b)[present]) + SEPARATION_WEIGHT * robust_z(filled)
    # each pair's rank by that evidence among the pairs holding each of its labels, counted directly
    ranks = [[1 + np.sum((np.isin(a[present], [x]) | np.isin(b[present], [x])) & (pair_evidence > own))
              for x in (x_a, x_b)] for x_a, x_b, own in zip(a[present], b[present], pair_evidence)]
    expected = pair_evidence - MUTUAL_RANK_WEIGHT * robust_z(np.log(ranks).sum(axis=1))
    assert np.allclose(score[present], expected, atol=1e-5) and np.isnan(score[~present]).all()


def test_label_ranks_count_the_better_pairs_holding_each_label():
    a, b = np.array([0, 0, 1, 2, 0]), np.array([1, 2, 2, 3, 3])
    rank_a, rank_b = label_ranks(a, b, np.array([0.9, 0.5, 0.7, 0.1, 0.3]))
    # label 0 holds pairs 0, 1, 4 (0.9, 0.5, 0.3); label 1: 0, 2; label 2: 1, 2, 3; label 3: 3, 4
    assert rank_a.tolist() == [1, 2, 2, 3, 3] and rank_b.tolist() == [1, 2, 1, 2, 1]


def test_a_pair_that_is_each_label_s_best_match_outranks_one_with_equal_evidence_among_better_partners():
    """Pairs (0, 1) and (2, 3) have the same cosine and separation; labels 2 and 3 each have a closer partner (a
    look-alike family), labels 0 and 1 none (a split person's two labels are each other's best match)."""
    a, b = np.array([0, 2, 2, 3, 0]), np.array([1, 3, 4, 5, 6])
    similarity = np.array([0.8, 0.8, 0.9, 0.9, 0.2], np.float32)
    separation = np.array([-0.1, -0.1, -0.05, -0.05, -0.5], np.float32)
    assert conflict_score(similarity, separation, a, b)[0] > conflict_score(similarity, separation, a, b)[1]
    unrelated = conflict_score(similarity, separation, np.arange(5), np.arange(5, 10))  # every pair its labels' best
    assert unrelated[0] == pytest.approx(unrelated[1])


def test_a_one_person_pair_outranks_a_look_alike_pair_with_the_same_cosine():
    # fold models that trained on part of each label: the split person's held-out images fall between its two
    # labels, the look-alikes' stay with their own
    e = np.eye(3)
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    fold = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    rows = np.stack([e[0], e[0], e[0], e[0], e[1], e[1], 0.8 * e[1] + 0.6 * e[2], 0.8 * e[1] + 0.6 * e[2]])
    evidence = held_out_evidence([rows, rows], rows, labels, fold, 4)
    evidence.class_vectors = np.array([[1.0, 0.0], [0.8, 0.6], [1.0, 0.0], [0.8, 0.6]], np.float32)  # cosine 0.8
    a, b = np.array([0, 2, 0]), np.array([1, 3, 2])
    score = conflict_score(evidence.pair_similarity(a, b), evidence.pair_separation(a, b), a, b)
    assert score[0] > score[1]


def test_intruders_are_left_out_of_the_separation_s_pools_but_a_split_person_s_images_are_not():
    """Label 0 holds six images of one person and two of a look-alike (cosine 0.6), label 1 six of the look-alike;
    labels 2 and 3 are one person. The two intruders stand out within their label and are left out of the trained
    images compared with: the look-alikes' separation falls from -0.267 (a held-out image of label 1 finds an
    intruder among label 0's 3 nearest: (1 + 0.6 + 0.6) / 3 - 1) to 0.6 - 1. The split person's images all look like
    the other label's, so none stands out within its label: that pair stays at 0."""
    x, y, split, other = np.array([1.0, 0, 0]), np.array([0.6, 0.8, 0]), np.array([0.0, 0, 1]), np.array([0.0, -1, 0])
    rows = np.stack([x] * 6 + [y] * 2 + [y] * 6 + [split] * 8 + [other] * 4)
    labels = np.array([0] * 8 + [1] * 6 + [2] * 4 + [3] * 4 + [4] * 4)
    evidence = held_out_evidence([rows, rows], rows, labels, np.arange(len(labels)) % 2, 5)
    reference = RepeatedCrossValidation([evidence])
    assert np.flatnonzero(reference.pool_suspects).tolist() == [6, 7]
    a, b = np.array([0, 2]), np.array([1, 3])
    assert np.allclose(evidence.pair_separation(a, b), [-0.8 / 3, 0.0], atol=1e-6)
    assert np.allclose(reference.pair_separation(a, b), [-0.4, 0.0], atol=1e-6)
    assert np.allclose(evidence.pair_separation(a, b, left_out=reference.pool_suspects), [-0.4, 0.0], atol=1e-6)


def test_pair_similarity_in_chunks_equals_one_block_and_absent_classes_are_nan():
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 9, 80)  # classes 9 and 10 have no image
    evidence = held_out_evidence([rng.normal(size=(80, 3)) for _ in range(2)], rng.normal(size=(80, 3)), labels,
                                 assign_folds(labels, 2), 11)
    a, b = np.triu_indices(11, k=1)
    whole = evidence.pair_similarity(a, b)
    assert np.array_equal(evidence.pair_similarity(a, b, chunk=4), whole, equal_nan=True)
    blank = np.isin(a, [9, 10]) | np.isin(b, [9, 10]) | np.isin(a, np.setdiff1d(np.arange(9), labels))
    assert np.array_equal(np.isnan(whole), blank)
    rows_a, rows_b = evidence.class_vectors[a], evidence.class_vectors[b]
    assert np.allclose(whole[~blank], np.einsum("ij,ij->i", rows_a, rows_b)[~blank])
    assert np.array_equal(nonzero_rows(np.array([[[0.0, 0.0], [0.0, 2.0]], [[1.0, 0.0], [0.0, 0.0]]]), chunk=1),
                          [[False, True], [True, False]])


def _write(folder, evidence: CrossValidation | list[CrossValidation], num_samples: int, num_classes: int) -> None:
    """As run_crossval lays them out; one CrossValidation: the json as written before repeats existed."""
    before_repeats = not isinstance(evidence, list)
    repeats = [evidence] if before_repeats else evidence
    for repeat, one in enumerate(repeats):
        where = repeat_dir(folder, repeat)
        where.mkdir(parents=True, exist_ok=True)
        np.savez(where / RESULT_ARRAYS, **{name: getattr(one, name) for name in SAVED_ARRAYS})
        for f, embeddings in enumerate(one.fold_embeddings):
            (where / f"fold{f}").mkdir(exist_ok=True)
            np.save(where / f"fold{f}" / "embeddings.npy", embeddings)
    meta = {"data": "d", "num_samples": num_samples, "num_classes": num_classes, "folds": repeats[0].folds}
    atomic_write_json(folder / RESULT_JSON, meta if before_repeats else {**meta, "repeats": len(repeats)})


def test_the_saved_evidence_reads_back_and_other_data_is_refused(tmp_path):
    rows, labels, fold = _two_fold_world()
    evidence = held_out_evidence([rows, rows], rows, labels, fold, 2)
    _write(tmp_path / "cv", evidence, 6, 2)
    back = load_crossval(tmp_path / "cv", 6, 2)
    assert len(back.repeats) == 1 and back.folds == 2  # a json from before repeats: one
    back = back.repeats[0]
    for name in SAVED_ARRAYS:
        assert np.array_equal(getattr(back, name), getattr(evidence, name), equal_nan=True), name
    assert all(np.array_equal(a, b) for a, b in zip(back.fold_embeddings, evidence.fold_embeddings))
    a, b = np.array([0]), np.array([1])
    assert np.array_equal(back.pair_separation(a, b), evidence.pair_separation(a, b), equal_nan=True)
    with pytest.raises(DataError, match="6 images of 2 classes.*7 images of 2"):
        load_crossval(tmp_path / "cv", 7, 2)
    evidence.held_out_own = evidence.held_out_own[:5]  # one score short
    _write(tmp_path / "bad", evidence, 6, 2)
    with pytest.raises(DataError, match="arrays do not match"):
        load_crossval(tmp_path / "bad", 6, 2)
    with pytest.raises(ConfigError, match="analyze crossval"):
        load_crossval(tmp_path / "missing", 6, 2)


def test_the_fold_embeddings_must_be_there_and_fit_the_data(tmp_path):
    rows, labels, fold = _two_fold_world()
    _write(tmp_path / "cv", held_out_evidence([rows, rows], rows, labels, fold, 2), 6, 2)
    stored = tmp_path / "cv" / "fold1" / "embeddings.npy"
    np.save(stored, rows[:5])
    with pytest.raises(DataError, match=r"fold1/embeddings.npy: .*shape \[5, 3\], expected \[6, D\]"):
        load_crossval(tmp_path / "cv", 6, 2)
    np.save(stored, np.array([{"x": 1}] * 6, dtype=object))  # objects are refused, not unpickled
    with pytest.raises(DataError, match="not a readable embedding array"):
        load_crossval(tmp_path / "cv", 6, 2)
    stored.unlink()
    with pytest.raises(ConfigError, match="fold1/embeddings.npy is missing.*keep them beside crossval.npz"):
        load_crossval(tmp_path / "cv", 6, 2)


def test_repeats_average_the_noise_score_the_cosine_and_the_defined_separations():
    rows, labels, fold = _two_fold_world()
    turned = _unit(rows + np.array([0.7, 0.0, 0.0]) * (labels == 1)[:, None])  # another repeat's models
    first = held_out_evidence([rows, rows], rows, labels, fold, 2)
    second = held_out_evidence([turned, turned], turned, labels, 1 - fold, 2)
    both = RepeatedCrossValidation([first, second])
    assert both.folds == 2
    assert np.allclose(both.noise_score, (first.noise_score + second.noise_score) / 2)
    a, b = np.array([0, 1]), np.array([1, 0])
    mean_cosine = (first.pair_similarity(a, b) + second.pair_similarity(a, b)) / 2
    assert np.allclose(both.pair_similarity(a, b), mean_cosine) and not np.allclose(mean_cosine,
                                                                                    first.pair_similarity(a, b))
    # one inner product of the side-by-side class vectors is the mean cosine: what the candidates' search ranks by
    assert np.allclose(np.einsum("ij,ij->i", both.class_vectors[a], both.class_vectors[b]), mean_cosine)
    left_out = both.pool_suspects  # decided once, on the averaged noise score: the flipped image 5
    assert np.flatnonzero(left_out).tolist() == [5]
    separations = first.pair_separation(a, b, left_out=left_out), second.pair_separation(a, b, left_out=left_out)
    assert np.isfinite(separations).all() and not np.allclose(*separations)
    assert np.allclose(both.pair_separation(a, b), (separations[0] + separations[1]) / 2)
    second.held_out_own[:] = np.nan  # the second repeat judges no pair: the first's separation stands
    assert np.allclose(both.pair_separation(a, b), separations[0])
    first.held_out_own[:] = np.nan
    assert np.isnan(both.pair_separation(a, b)).all()
    first.held_out_score[:3], second.held_out_score[2:] = np.nan, np.nan
    assert both.judged.tolist() == [True, True, False, True, True, True]


def test_repeats_read_back_from_their_folders_and_a_missing_file_is_named(tmp_path):
    rows, labels, fold = _two_fold_world()
    repeats = [held_out_evidence([rows, rows], rows, labels, dealt, 2) for dealt in (fold, 1 - fold)]
    _write(tmp_path / "cv", repeats, 6, 2)
    assert (tmp_path / "cv" / "fold0").is_dir() and (tmp_path / "cv" / "repeat1" / "fold0").is_dir()
    back = load_crossval(tmp_path / "cv", 6, 2)
    assert len(back.repeats) == 2 and np.array_equal(back.repeats[1].fold, 1 - fold)
    assert np.allclose(back.noise_score, RepeatedCrossValidation(repeats).noise_score)
    (tmp_path / "cv" / "repeat1" / "fold1" / "embeddings.npy").unlink()
    with pytest.raises(ConfigError, match=r"--crossval \S*cv: \S*cv/repeat1/fold1/embeddings.npy is missing"):
        load_crossval(tmp_path / "cv", 6, 2)
    atomic_write_json(tmp_path / "cv" / RESULT_JSON, {"num_samples": 6, "num_classes": 2, "folds": 2, "repeats": 0})
    with pytest.raises(DataError, match="repeats is 0, expected a whole number >= 1"):
        load_crossval(tmp_path / "cv", 6, 2)


def test_a_crossval_file_holding_objects_is_refused_not_unpickled(tmp_path):
    folder = tmp_path / "cv"
    folder.mkdir()
    rows, labels, fold = _two_fold_world()
    arrays = {name: getattr(held_out_evidence([rows, rows], rows, labels, fold, 2), name) for name in SAVED_ARRAYS}
    np.savez(folder / RESULT_ARRAYS, **dict(arrays, held_out_score=np.array([{"x": 1}, None], dtype=object)))
    atomic_write_json(folder / RESULT_JSON, {"num_samples": 6, "num_classes": 2, "folds": 2})
    with pytest.raises(DataError, match="not a readable cross-validation result"):
        load_crossval(folder, 6, 2)
    older = {name: arrays[name] for name in ("labels", "fold", "held_out_score", "all_data_score", "class_vectors")}
    np.savez(folder / RESULT_ARRAYS, **older, fold_means=np.zeros((2, 2, 3)))  # session 12's: no held_out_own
    with pytest.raises(DataError, match="held_out_own.*write it again with python cli.py analyze crossval"):
        load_crossval(folder, 6, 2)


def test_the_default_recipe_is_the_full_softmax_baseline():
    recipe = reference_recipe()
    assert (recipe.margin, recipe.scale, recipe.margin_m, recipe.embedding_size, recipe.epochs) == (
        "cosface", 32.0, 0.3, 128, 12)
    assert recipe.spec.full_softmax_options.items() <= recipe.method_options.items()
    assert reference_recipe(epochs=3).epochs == 3


def _neighbours(own: np.ndarray) -> SampleNeighbours:
    n = len(own)
    return SampleNeighbours(own_similarity=own.astype(np.float32), nearest_label=np.zeros(n, np.int64),
                            nearest_similarity=np.full(n, 0.5, np.float32), leave_one_out=True)


def test_the_run_s_ranking_joins_the_reference_only_when_the_two_agree():
    rng = np.random.default_rng(0)
    own = rng.uniform(0.2, 0.9, 200)
    labels = np.zeros(200, np.int64)
    run_score = 0.5 - own  # feature_score: the run's own ranking without training margins
    agreeing = run_score + rng.normal(0, 0.02, 200)
    table = noise_table(_neighbours(own), labels, crossval=agreeing).sort_values("index")
    assert table.attrs["ranking"] == RANK_CROSSVAL_AND_RUN and table.attrs["agreement"] > 0.9
    assert np.allclose(table["score"], robust_z(agreeing) + 0.5 * robust_z(run_score), atol=1e-5)  # half weight
    disagreeing = rng.normal(0, 1, 200)
    disagreeing[:3] = np.nan  # images the reference could not judge sit at its median
    table = noise_table(_neighbours(own), labels, crossval=disagreeing).sort_values("index")
    assert table.attrs["ranking"] == RANK_CROSSVAL and table.attrs["agreement"] < 0.6
    filled = np.where(np.isnan(disagreeing), np.nanmedian(disagreeing), disagreeing)
    assert np.allclose(table["score"], robust_z(filled), atol=1e-5)
    assert table["crossval_score"].isna().sum() == 3
    assert noise_table(_neighbours(own), labels).attrs["ranking"] == RANK_FEATURES != RANK_COMBINED


def test_rank_correlation_is_spearman():
    assert rank_correlation(np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 300.0])) == pytest.approx(1.0)
    assert rank_correlation(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    assert rank_correlation(np.ones(3), np.array([1.0, 2.0, 3.0])) == 0.0


def test_conflict_pairs_carry_the_reference_cosine_and_its_nearest_pairs_join_the_candidates():
    # the run's centers: 0~1 and 2~3 close; the reference models see 0 and 3 as one person
    vectors = np.array([[1.0, 0.0, 0.0, 0.0], [0.9, 0.1, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.9, 0.1]])
    centers = Centers(vectors=vectors.astype(np.float32), source="means", counts=np.full(4, 5))
    neighbours = center_neighbours(centers, k=1)
    reference = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.96, 0.28, 0.0]], np.float32)
    labels = np.repeat(np.arange(4), 2)
    evidence = held_out_evidence([reference[labels]] * 2, reference[labels], labels, np.tile([0, 1], 4), 4)
    evidence.class_vectors = reference
    crossval = RepeatedCrossValidation([evidence])
    without = conflict_table(centers, neighbours, threshold=0.99)
    table = conflict_table(centers, neighbours, threshold=0.99, crossval=crossval)
    pairs = set(zip(table["label_a"], table["label_b"]))
    assert (0, 3) in pairs and (0, 3) not in set(zip(without["label_a"], without["label_b"]))
    assert table.attrs["pairs_from_crossval"] == len(table) - len(without) >= 1
    row = table[(table["label_a"] == 0) & (table["label_b"] == 3)].iloc[0]
    assert row["crossval_similarity"] == pytest.approx(0.96, abs=1e-5)
    assert row["crossval_separation"] == pytest.approx(0.96 - 1.0, abs=1e-5)
    a, b = table["label_a"].to_numpy(), table["label_b"].to_numpy()
    assert np.allclose(table["crossval_score"], conflict_score(crossval.pair_similarity(a, b),
                                                               crossval.pair_separation(a, b), a, b), atol=1e-5)
    assert without[["crossval_similarity", "crossval_separation", "crossval_score"]].isna().all().all()


def test_reference_models_begun_with_other_folds_are_not_resumed(tmp_path, monkeypatch):
    import analysis.crossval as crossval_module

    data = write_rec(tmp_path / "data", classes=6, per_class=4)
    out = tmp_path / "cv"
    trained = []
    monkeypatch.setattr(crossval_module, "_reference_embeddings",
                        lambda model_dir, *args, **kwargs: trained.append(model_dir) or np.eye(24, 4))
    run_crossval(data, out, reference_recipe(epochs=1), folds=2, repeats=1, seed=0, echo=lambda line: None)
    assert read_json(out / SETUP_JSON)["seed"] == 0 and len(trained) == 3  # two folds and the all-data model
    run_crossval(data, out, reference_recipe(epochs=1), folds=2, repeats=1, seed=0, echo=lambda line: None)  # resumes
    with pytest.raises(ConfigError, match="seed differ.*resume with the same"):
        run_crossval(data, out, reference_recipe(epochs=1), folds=2, seed=1, echo=lambda line: None)
    with pytest.raises(ConfigError, match="folds differ"):
        run_crossval(data, out, reference_recipe(epochs=1), folds=3, seed=0, echo=lambda line: None)
    with pytest.raises(ConfigError, match="recipe differ"):
        run_crossval(data, out, reference_recipe(epochs=2), folds=2, seed=0, echo=lambda line: None)
    moved = data.rename(tmp_path / "moved")  # the same data elsewhere resumes
    run_crossval(moved, out, reference_recipe(epochs=1), folds=2, repeats=1, seed=0, echo=lambda line: None)
    other = write_rec(tmp_path / "other", classes=4, per_class=6)  # as many images, labelled otherwise
    with pytest.raises(ConfigError, match="labels_sha256 differ"):
        run_crossval(other, out, reference_recipe(epochs=1), folds=2, seed=0, echo=lambda line: None)
    assert len(trained) == 9  # the refused calls trained nothing
    with pytest.raises(ConfigError, match="--repeats must be >= 1"):
        run_crossval(moved, out, reference_recipe(epochs=1), folds=2, repeats=0, seed=0, echo=lambda line: None)


def test_a_second_repeat_deals_its_own_folds_and_seeds_beside_the_first(tmp_path, monkeypatch):
    import analysis.crossval as crossval_module

    data = write_rec(tmp_path / "data", classes=6, per_class=4)
    out = tmp_path / "cv"
    trained = {}

    def fake_model(model_dir, training_data, recipe, seed, *args):
        trained[model_dir.relative_to(out).as_posix()] = seed
        model_dir.mkdir(parents=True, exist_ok=True)
        np.save(model_dir / "embeddings.npy", np.random.default_rng(seed).normal(size=(24, 4)).astype(np.float32))
        return np.load(model_dir / "embeddings.npy", mmap_mode="r")

    monkeypatch.setattr(crossval_module, "_reference_embeddings", fake_model)
    one = run_crossval(data, out, reference_recipe(epochs=1), folds=2, repeats=1, seed=5, echo=lambda line: None)
    assert trained == {"fold0": 5, "fold1": 6, "all": 7} and read_json(out / RESULT_JSON)["repeats"] == 1
    two = run_crossval(data, out, reference_recipe(epochs=1), folds=2, repeats=2, seed=5, echo=lambda line: None)
    step = REPEAT_SEED_STRIDE
    assert trained == {"fold0": 5, "fold1": 6, "all": 7, "repeat1/fold0": 5 + step, "repeat1/fold1": 6 + step,
                       "repeat1/all": 7 + step}
    labels = one.repeats[0].labels
    assert np.array_equal(two.repeats[1].fold, assign_folds(labels, 2, 5 + step))
    assert not np.array_equal(two.repeats[1].fold, two.repeats[0].fold)
    assert np.array_equal(two.repeats[0].held_out_score, one.repeats[0].held_out_score, equal_nan=True)
    back = load_crossval(out, len(labels), 6)
    assert len(back.repeats) == 2 and np.allclose(back.noise_score, two.noise_score)


def test_a_later_repeat_s_fold_models_train_without_the_first_repeat_s_suspects(tmp_path, monkeypatch):
    """INCV's second round: the intruder that repeat 0 flags is in no fold list of repeat 1, while repeat 0's fold
    models and every all-data model train on all they would otherwise."""
    import analysis.crossval as crossval_module
    from core.data.loader import open_dataset

    data = write_rec(tmp_path / "data", classes=6, per_class=8)
    out = tmp_path / "cv"
    labels = np.repeat(np.arange(6), 8)
    intruder = 3  # an image labelled 0 that every model places among class 1's
    trained_on = {}

    def fake_model(model_dir, training_data, recipe, seed, *args):
        trained_on[model_dir.relative_to(out).as_posix()] = training_data
        rng = np.random.default_rng(seed)
        embeddings = np.eye(6, 8)[labels] + 0.05 * rng.normal(size=(48, 8))
        embeddings[intruder] = np.eye(6, 8)[1] + 0.05 * rng.normal(size=8)
        model_dir.mkdir(parents=True, exist_ok=True)
        np.save(model_dir / "embeddings.npy", embeddings.astype(np.float32))
        return np.load(model_dir / "embeddings.npy", mmap_mode="r")

    monkeypatch.setattr(crossval_module, "_reference_embeddings", fake_model)
    result = run_crossval(data, out, reference_recipe(epochs=1), folds=2, repeats=2, seed=5, echo=lambda line: None)
    suspects = RepeatedCrossValidation(result.repeats[:1]).pool_suspects
    assert suspects[intruder]  # (beside whichever ordinary image strays past the fence)
    entries = crossval_module._list_entries(open_dataset(data), data)

    def listed(name: str) -> list[str]:
        return [line.rsplit(" ", 1)[0] for line in Path(trained_on[name]).read_text().splitlines()]

    for f in range(2):
        first, second = result.repeats[0].fold != f, (result.repeats[1].fold != f) & ~suspects
        assert listed(f"fold{f}") == [entries[i] for i in np.flatnonzero(first)]
        assert listed(f"repeat1/fold{f}") == [entries[i] for i in np.flatnonzero(second)]
    assert trained_on["all"] == trained_on["repeat1/all"] == str(data.absolute())


def test_trimmed_class_means_leave_out_the_images_farthest_from_the_plain_mean_but_keep_small_classes_whole():
    angle = np.deg2rad([-10.0, 10.0, -5.0, 5.0, 90.0, 0.0, 80.0, 30.0])  # class 0: four near 0 degrees, one at 90
    unit = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 2])  # class 1: two images, class 2: one; class 3: none
    means = trimmed_class_means(unit, labels, 4, share=0.8, min_images=3)
    assert np.allclose(means[0], [1.0, 0.0], atol=1e-6)  # ceil(0.8 x 5) = 4 kept: the intruder at 90 degrees is out
    assert np.allclose(means[1], [np.cos(np.deg2rad(40)), np.sin(np.deg2rad(40))], atol=1e-6)  # under 3: all
    assert np.allclose(means[2], unit[7], atol=1e-6) and not means[3].any()
    kept_all = trimmed_class_means(unit, labels, 4, share=1.0)
    plain = unit[:5].sum(0) / np.linalg.norm(unit[:5].sum(0))
    assert np.allclose(kept_all[0], plain, atol=1e-6)


def test_a_result_written_with_other_class_vectors_is_refused_on_load_and_rebuilt_by_run_crossval(tmp_path,
                                                                                                   monkeypatch):
    import analysis.crossval as crossval_module

    data = write_rec(tmp_path / "data", classes=6, per_class=4)
    out = tmp_path / "cv"

    def stored_model(model_dir, training_data, recipe, seed, *args):
        if not (model_dir / "embeddings.npy").is_file():
            model_dir.mkdir(parents=True, exist_ok=True)
            np.save(model_dir / "embeddings.npy", np.random.default_rng(seed).normal(size=(24, 4)).astype(np.float32))
        return np.load(model_dir / "embeddings.npy", mmap_mode="r")

    monkeypatch.setattr(crossval_module, "_reference_embeddings", stored_model)
    fresh = run_crossval(data, out, reference_recipe(epochs=1), folds=2, repeats=1, echo=lambda line: None)
    with np.load(out / RESULT_ARRAYS) as arrays:
        older = dict(arrays, center_share=np.array(1.0))  # an older version's vectors: every image
    np.savez(out / RESULT_ARRAYS, **older)
    with pytest.raises(DataError, match="from 1.0 of each class's images.*write it again.*analyze crossval"):
        load_crossval(out, 24, 6)
    rebuilt = run_crossval(data, out, reference_recipe(epochs=1), folds=2, repeats=1, echo=lambda line: None)
    assert np.allclose(rebuilt.class_vectors, fresh.class_vectors)
    assert np.allclose(load_crossval(out, 24, 6).class_vectors, fresh.class_vectors)
