import numpy as np
import pytest

from analysis.index import (BruteForceIndex, CosineIndex, measured_recall, normalize_rows, self_neighbours)
from core.data.synthetic import class_centers
from core.errors import ConfigError, DataError


def _reference_topk(database: np.ndarray, queries: np.ndarray, k: int, exclude=None):
    """Brute force in float64 numpy: the ground truth every backend is checked against."""
    db = database / np.linalg.norm(database, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = q.astype(np.float64) @ db.T.astype(np.float64)
    if exclude is not None:
        sims[np.arange(len(q)), exclude] = -np.inf
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, ids, axis=1), ids


@pytest.fixture(scope="module")
def random_vectors():
    rng = np.random.default_rng(0)
    return rng.normal(size=(700, 24)).astype(np.float32) * rng.uniform(0.5, 3, size=(700, 1)).astype(np.float32)


@pytest.mark.parametrize("k", [1, 5, 12])
def test_exact_flat_search_matches_numpy(random_vectors, k):
    queries = np.random.default_rng(1).normal(size=(90, 24)).astype(np.float32)
    index = CosineIndex(random_vectors, method="exact", use_gpu=False)
    sims, ids = index.search(queries, k)
    ref_sims, ref_ids = _reference_topk(random_vectors, queries, k)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-5)
    assert index.info.method == "exact" and index.info.recall is None


def test_self_search_excludes_each_row_itself(random_vectors):
    for backend in (CosineIndex(random_vectors, method="exact", use_gpu=False), BruteForceIndex(random_vectors)):
        sims, ids = self_neighbours(backend, random_vectors, 4)
        ref_sims, ref_ids = _reference_topk(random_vectors, random_vectors, 4, exclude=np.arange(len(random_vectors)))
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_allclose(sims, ref_sims, atol=1e-5)
        assert not (ids == np.arange(len(random_vectors))[:, None]).any()


def test_scale_does_not_change_cosine_neighbours(random_vectors):
    scaled = random_vectors * np.random.default_rng(2).uniform(0.01, 100, size=(len(random_vectors), 1))
    a = CosineIndex(random_vectors, method="exact", use_gpu=False).search(random_vectors[:50], 3)[1]
    b = CosineIndex(scaled.astype(np.float32), method="exact", use_gpu=False).search(random_vectors[:50], 3)[1]
    np.testing.assert_array_equal(a, b)


def test_k_larger_than_database_pads_with_missing():
    vectors = np.eye(3, dtype=np.float32)
    sims, ids = CosineIndex(vectors, method="exact", use_gpu=False).search(vectors, 5)
    assert (ids[:, 3:] == -1).all() and np.isneginf(sims[:, 3:]).all()
    sims, ids = self_neighbours(CosineIndex(vectors, method="exact", use_gpu=False), vectors, 4)
    assert (ids[:, 2:] == -1).all()


@pytest.mark.parametrize("method", ["ivf", "hnsw"])
def test_approximate_search_reaches_and_reports_the_recall_target(method):
    centers = class_centers(6000, 32, seed=3, clusters=60)
    index = CosineIndex(centers, method=method, use_gpu=False, recall_sample=300)
    sims, ids = self_neighbours(index, index.vectors, 5)
    assert index.info.method == method
    assert index.info.recall is not None and index.info.recall >= 0.95 and index.info.recall_k == 5
    assert index.info.recall_sample == 300
    # an independent check on classes the tuning did not see
    rows = np.random.default_rng(9).choice(len(centers), 400, replace=False)
    ref_sims, ref_ids = _reference_topk(centers, centers[rows], 5, exclude=rows)
    assert measured_recall(ref_sims, ref_ids, sims[rows], ids[rows]) >= 0.93
    assert "recall@5" in index.info.describe()


def test_blocked_ivf_search_equals_faiss_ivf_search():
    centers = class_centers(4000, 16, seed=4, clusters=40)
    index = CosineIndex(centers, method="ivf", use_gpu=False, nlist=20, recall_sample=200)
    blocked_sims, blocked_ids = self_neighbours(index, index.vectors, 4)  # 4000 queries >= 8 x 20 lists
    plain_sims, plain_ids = index._raw_search(index.vectors, 4, np.arange(4000))
    np.testing.assert_allclose(blocked_sims, plain_sims, atol=1e-5)
    assert (blocked_ids == plain_ids).mean() > 0.999  # only exact ties may be ordered differently


def test_approximate_search_falls_back_to_exact_when_the_target_is_out_of_reach():
    vectors = np.random.default_rng(5).normal(size=(1500, 64)).astype(np.float32)  # no structure at all
    index = CosineIndex(vectors, method="hnsw", use_gpu=False, hnsw_m=4, target_recall=1.0, recall_sample=200)
    sims, ids = index.search(vectors[:100], 10)
    ref_sims, ref_ids = _reference_topk(vectors, vectors[:100], 10)
    if index.info.method == "exact":
        assert "fell back to exact" in index.info.note
        np.testing.assert_array_equal(ids, ref_ids)
    else:  # HNSW found every neighbour even at M=4
        assert index.info.recall == 1.0


def test_range_search_matches_numpy(random_vectors):
    index = CosineIndex(random_vectors, method="exact", use_gpu=False)
    queries = random_vectors[:40]
    rows, ids, sims = index.range_search(queries, 0.5, query_ids=np.arange(40))
    ref = _reference_topk(random_vectors, queries, len(random_vectors), exclude=np.arange(40))
    expected = {(r, int(i)) for r in range(40) for s, i in zip(*[a[r] for a in ref]) if s > 0.5}
    assert set(zip(rows.tolist(), ids.tolist())) == expected
    assert (sims > 0.5).all()


def test_auto_goes_approximate_above_the_threshold():
    centers = class_centers(3000, 16, seed=6, clusters=30)
    assert CosineIndex(centers, use_gpu=False).info.method == "exact"
    assert CosineIndex(centers, use_gpu=False, approximate_above=1000).info.method == "ivf"


def test_bad_inputs_are_clear_errors(random_vectors):
    with pytest.raises(ConfigError, match="index method"):
        CosineIndex(random_vectors, method="lsh")
    with pytest.raises(DataError, match="zero vectors"):
        CosineIndex(np.zeros((0, 4), dtype=np.float32), use_gpu=False)
    index = CosineIndex(random_vectors, method="exact", use_gpu=False)
    with pytest.raises(DataError, match="dimension"):
        index.search(np.ones((2, 3), dtype=np.float32), 1)
    with pytest.raises(ConfigError, match="--k"):
        index.search(random_vectors[:2], 0)
    bad = random_vectors.copy()
    bad[0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        normalize_rows(bad)


def test_zero_rows_stay_zero():
    out = normalize_rows(np.array([[0, 0], [3, 4]], dtype=np.float32))
    np.testing.assert_allclose(out, [[0, 0], [0.6, 0.8]])
