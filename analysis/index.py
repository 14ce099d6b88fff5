"""Cosine nearest neighbours for every analysis: one FAISS wrapper, one place to tune it.

Conflict, noise and long-tail analyses all ask the same question ("which class centers
are nearest to these vectors?") at sizes from a few hundred classes to millions. Keeping
the answer in one class means the exact/approximate decision, the recall it costs and
the memory bound are made and reported once:

* vectors are L2-normalised, so inner product is cosine similarity;
* exact flat search is the default; above ``approximate_above`` vectors an IVF (or HNSW)
  index is built and its search parameter is raised until recall@k against exact
  search, measured on a sample of the real queries, reaches ``target_recall``; the
  measured recall is kept in ``info`` so reports can state it;
* GPU indexes are used when ``faiss.get_num_gpus() > 0`` (FAISS has no GPU range search,
  so a CPU copy answers ``range_search``);
* queries are processed in chunks, so memory beyond the results stays bounded.

The neighbour backend is injectable (as pytorch-metric-learning's ``knn_func``): every
analysis takes an ``IndexBuilder`` (vectors -> ``NeighborIndex``). ``BruteForceIndex`` is
a dependency-light exact backend used as the reference in tests.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Protocol

import numpy as np

from core.errors import ConfigError, DataError

# Database size above which method="auto" switches from exact to approximate search.
# Exact self-search of 100k x 512 takes about 2 minutes on two CPU cores and grows with
# the square of the size (250k: ~12 min), while the tuned IVF path does 200k in ~15 s
# and 1M in ~2.5 min at recall >= 0.95.
DEFAULT_APPROXIMATE_ABOVE = 100_000
DEFAULT_TARGET_RECALL = 0.95
DEFAULT_RECALL_SAMPLE = 1000
DEFAULT_QUERY_CHUNK = 16_384
# CPU IVF searches with at least this many queries per inverted list run list by list as
# matrix products (_blocked_ivf_search) instead of through FAISS's per-query scan.
BLOCKED_QUERIES_PER_LIST = 8
METHODS = ("auto", "exact", "ivf", "hnsw")


@dataclass
class IndexInfo:
    """What was built and how good it is, for reports and benchmarks."""

    method: str
    device: str
    size: int
    dim: int
    parameters: dict[str, Any] = field(default_factory=dict)
    recall: Optional[float] = None  # measured recall@k against exact search (None: exact)
    recall_k: Optional[int] = None
    recall_sample: int = 0
    build_seconds: float = 0.0
    tune_seconds: float = 0.0
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One sentence for reports: the method, its parameters and its measured recall."""
        params = ", ".join(f"{k}={v}" for k, v in self.parameters.items())
        text = f"{self.method} ({self.device}{', ' + params if params else ''}) over {self.size:,} vectors"
        if self.recall is not None:
            text += (f"; recall@{self.recall_k} against exact search {self.recall:.4f} "
                     f"on a sample of {self.recall_sample} queries")
        if self.note:
            text += f"; {self.note}"
        return text


class NeighborIndex(Protocol):
    """The backend contract: cosine top-k over a fixed database of vectors.

    ``query_ids`` says that the queries are database rows (their row numbers), as when
    every class center asks for its nearest other centers; each row's own id is then
    left out of its results. Missing results have id -1 and similarity -inf.
    """

    info: IndexInfo

    def search(self, queries: np.ndarray, k: int, query_ids: Optional[np.ndarray] = None,
               progress: bool = False) -> tuple[np.ndarray, np.ndarray]: ...


IndexBuilder = Callable[[np.ndarray], NeighborIndex]


def normalize_rows(vectors: np.ndarray, copy: bool = True) -> np.ndarray:
    """Unit rows as C-contiguous float32 (FAISS needs exactly that); zero rows stay zero."""
    array = np.asarray(vectors)
    if array.ndim != 2:
        raise DataError(f"expected a 2-D array of vectors, got shape {list(array.shape)}")
    out = np.array(array, dtype=np.float32, order="C", copy=True) if copy else np.ascontiguousarray(
        array, dtype=np.float32)
    if not np.all(np.isfinite(out)):
        raise DataError("vectors contain NaN or infinite values; the checkpoint or embeddings are corrupt")
    for start in range(0, out.shape[0], DEFAULT_QUERY_CHUNK):
        block = out[start:start + DEFAULT_QUERY_CHUNK]
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))
        block /= np.maximum(norms, np.float32(1e-12))[:, None]
    return out


def _drop_self(sims: np.ndarray, ids: np.ndarray, query_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """From k+1 results per row keep the first k that are not the row's own id."""
    keep = ids != query_ids[:, None]
    # Rows where the own id was not returned (approximate search, or ties) drop their last result.
    missing = keep.all(axis=1)
    keep[missing, -1] = False
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), np.take_along_axis(ids, order, axis=1)


def measured_recall(exact_sims: np.ndarray, exact_ids: np.ndarray, sims: np.ndarray, ids: np.ndarray) -> float:
    """Fraction of the exact top-k that was found; a result tied with the k-th exact one counts.

    Counting ties keeps duplicate vectors (equally near, either one correct) from
    reading as misses.
    """
    if exact_ids.size == 0:
        return 1.0
    kth = exact_sims[:, -1:]
    tied = (sims >= kth - 1e-5) & (ids >= 0)
    found = np.array([np.isin(row, exact_row).sum() for row, exact_row in zip(ids, exact_ids)])
    hits = np.maximum(found, tied.sum(axis=1))
    return float(np.minimum(hits, exact_ids.shape[1]).sum() / exact_ids.size)


class BruteForceIndex:
    """Exact cosine top-k with chunked matrix products (torch), no FAISS.

    The reference that FAISS results are checked against, and an injectable backend
    where FAISS is unavailable; it is also about 1.5x faster than a flat FAISS index
    for all-pairs search on a small CPU, because torch's GEMM + topk avoids FAISS's
    per-query heaps.
    """

    def __init__(self, vectors: np.ndarray, query_chunk: int = 4096) -> None:
        self.vectors = normalize_rows(vectors)
        self.query_chunk = query_chunk
        self.info = IndexInfo(method="exact", device="cpu", size=len(self.vectors),
                              dim=self.vectors.shape[1], parameters={"backend": "torch matmul"})

    def search(self, queries: np.ndarray, k: int, query_ids: Optional[np.ndarray] = None,
               progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Same contract as ``CosineIndex.search`` (the tests hold both to it)."""
        import torch

        queries = normalize_rows(queries)
        _check_queries(queries, self.info.dim, k)
        wanted = k + (1 if query_ids is not None else 0)
        take = min(wanted, len(self.vectors))
        database = torch.from_numpy(self.vectors)
        out_sims = np.full((len(queries), wanted), -np.inf, dtype=np.float32)
        out_ids = np.full((len(queries), wanted), -1, dtype=np.int64)
        for start in _progress(range(0, len(queries), self.query_chunk), progress, "nearest neighbours"):
            block = torch.from_numpy(queries[start:start + self.query_chunk]) @ database.T
            values, indices = torch.topk(block, take, dim=1)
            out_sims[start:start + len(block), :take] = values.numpy()
            out_ids[start:start + len(block), :take] = indices.numpy()
        if query_ids is not None:
            return _drop_self(out_sims, out_ids, np.asarray(query_ids, dtype=np.int64), k)
        return out_sims, out_ids

    def range_search(self, queries: np.ndarray, threshold: float, query_ids: Optional[np.ndarray] = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every database vector with cosine > ``threshold``: flat ``(query_rows, ids, similarities)``."""
        queries = normalize_rows(queries)
        _check_queries(queries, self.info.dim, 1)
        rows_out, ids_out, sims_out = [], [], []
        for start in range(0, len(queries), self.query_chunk):
            block = queries[start:start + self.query_chunk] @ self.vectors.T
            if query_ids is not None:
                own = np.asarray(query_ids, dtype=np.int64)[start:start + len(block)]
                block[np.arange(len(block)), own] = -np.inf
            rows, ids = np.nonzero(block > threshold)
            rows_out.append(rows.astype(np.int64) + start)
            ids_out.append(ids.astype(np.int64))
            sims_out.append(block[rows, ids].astype(np.float32))
        return np.concatenate(rows_out), np.concatenate(ids_out), np.concatenate(sims_out)


def _check_queries(queries: np.ndarray, dim: int, k: int) -> None:
    if queries.shape[1] != dim:
        raise DataError(f"queries have dimension {queries.shape[1]} but the index holds {dim}-d vectors")
    if k < 1:
        raise ConfigError(f"--k must be >= 1, got {k}")


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, unit="chunk", leave=False, mininterval=1.0)


class CosineIndex:
    """FAISS cosine index: exact flat, or IVF / HNSW tuned to a measured recall.

    ``method``: "auto" (exact up to ``approximate_above`` vectors, IVF above), "exact",
    "ivf" or "hnsw". Tuning happens at the first search with a given k, on up to
    ``recall_sample`` of that search's own queries, so the recall reported is the recall
    of the search that was actually run. If no parameter reaches ``target_recall`` the
    index falls back to exact search and says so in ``info.note``.
    """

    def __init__(self, vectors: np.ndarray, method: str = "auto", *,
                 approximate_above: int = DEFAULT_APPROXIMATE_ABOVE, use_gpu: Optional[bool] = None,
                 target_recall: float = DEFAULT_TARGET_RECALL, recall_sample: int = DEFAULT_RECALL_SAMPLE,
                 query_chunk: int = DEFAULT_QUERY_CHUNK, seed: int = 0, nlist: Optional[int] = None,
                 hnsw_m: int = 32, copy: bool = True) -> None:
        import faiss

        if method not in METHODS:
            raise ConfigError(f"index method must be one of {', '.join(METHODS)}; got {method!r}")
        if not 0.0 < target_recall <= 1.0:
            raise ConfigError(f"target recall must be in (0, 1], got {target_recall}")
        self.vectors = normalize_rows(vectors, copy=copy)
        if len(self.vectors) == 0:
            raise DataError("cannot build a nearest-neighbour index over zero vectors")
        self.faiss = faiss
        self.use_gpu = faiss.get_num_gpus() > 0 if use_gpu is None else bool(use_gpu)
        if self.use_gpu and faiss.get_num_gpus() == 0:
            raise ConfigError("a GPU index was asked for but FAISS sees no GPU (faiss.get_num_gpus() == 0)")
        if method == "auto":
            method = "ivf" if len(self.vectors) > approximate_above else "exact"
        if method == "hnsw" and self.use_gpu:
            method = "ivf"  # FAISS has no GPU HNSW; IVF is its GPU approximate index
        self.method = method
        self.target_recall = target_recall
        self.recall_sample = recall_sample
        self.query_chunk = query_chunk
        self.seed = seed
        self._tuned_k: Optional[int] = None
        self._gpu_resources = None
        started = time.perf_counter()
        n, dim = self.vectors.shape
        if method == "exact":
            self.cpu_index = faiss.IndexFlatIP(dim)
            self.cpu_index.add(self.vectors)
            parameters: dict[str, Any] = {}
        elif method == "ivf":
            self.nlist = nlist or int(min(max(16, round(2 * math.sqrt(n))), max(1, n // 40)))
            self.nlist = max(1, min(self.nlist, n))
            quantizer = faiss.IndexFlatIP(dim)
            self.cpu_index = faiss.IndexIVFFlat(quantizer, dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
            self.cpu_index.cp.seed = seed
            train = self._training_sample(40 * self.nlist)
            self.cpu_index.train(train)
            self.cpu_index.add(self.vectors)
            parameters = {"nlist": self.nlist, "nprobe": 1}
        else:
            self.cpu_index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            self.cpu_index.hnsw.efConstruction = 80
            self.cpu_index.add(self.vectors)
            parameters = {"M": hnsw_m, "efConstruction": 80, "efSearch": 16}
        self.index = self.cpu_index
        if self.use_gpu:
            self._gpu_resources = faiss.StandardGpuResources()
            self.index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, self.cpu_index)
        self.info = IndexInfo(method=method, device="gpu" if self.use_gpu else "cpu", size=n, dim=dim,
                              parameters=parameters, build_seconds=round(time.perf_counter() - started, 3))

    # -- building ----------------------------------------------------------------------
    def _training_sample(self, count: int) -> np.ndarray:
        if count >= len(self.vectors):
            return self.vectors
        rows = np.sort(np.random.default_rng(self.seed).choice(len(self.vectors), count, replace=False))
        return self.vectors[rows]

    def _set_parameter(self, name: str, value: int) -> None:
        space = self.faiss.GpuParameterSpace() if self.use_gpu else self.faiss.ParameterSpace()
        space.set_index_parameter(self.index, name, value)
        if self.use_gpu:  # the CPU copy answers range searches with the same setting
            self.faiss.ParameterSpace().set_index_parameter(self.cpu_index, name, value)
        self.info.parameters[name] = value

    def _fall_back_to_exact(self, reason: str) -> None:
        dim = self.vectors.shape[1]
        self.cpu_index = self.faiss.IndexFlatIP(dim)
        self.cpu_index.add(self.vectors)
        self.index = self.cpu_index
        if self.use_gpu:
            self.index = self.faiss.index_cpu_to_gpu(self._gpu_resources, 0, self.cpu_index)
        self.method = "exact"
        self.info.method = "exact"
        self.info.parameters = {}
        self.info.note = reason

    # -- tuning ------------------------------------------------------------------------
    def tune(self, queries: np.ndarray, k: int, query_ids: Optional[np.ndarray] = None) -> None:
        """Raise nprobe / efSearch until recall@k on a sample of ``queries`` reaches the target."""
        if self.method == "exact":
            return
        started = time.perf_counter()
        rng = np.random.default_rng(self.seed + 1)
        rows = np.arange(len(queries))
        if len(rows) > self.recall_sample:
            rows = np.sort(rng.choice(len(rows), self.recall_sample, replace=False))
        sample = np.ascontiguousarray(queries[rows])
        sample_ids = None if query_ids is None else np.asarray(query_ids, dtype=np.int64)[rows]
        wanted = min(k + (1 if sample_ids is not None else 0), len(self.vectors))
        exact_sims, exact_ids = self.faiss.knn(sample, self.vectors, wanted, self.faiss.METRIC_INNER_PRODUCT)
        exact_ids = exact_ids.astype(np.int64)
        if sample_ids is not None:
            exact_sims, exact_ids = _drop_self(exact_sims, exact_ids, sample_ids, min(k, wanted))
        if self.method == "ivf":
            name, values = "nprobe", [v for v in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
                                      if v < self.nlist] + [self.nlist]
        else:
            name, values = "efSearch", sorted({max(16, k + 1), 32, 64, 128, 256, 512, 1024})
        recall = 0.0
        for value in values:
            self._set_parameter(name, value)
            sims, ids = self._raw_search(sample, k, sample_ids)
            recall = measured_recall(exact_sims, exact_ids, sims, ids)
            # Two standard errors of the sampled recall above the target, so that the
            # recall of the whole search (not only of the sample) clears it.
            margin = 2.0 * math.sqrt(max(recall * (1.0 - recall), 1e-6) / max(exact_ids.size, 1))
            if recall - margin >= self.target_recall or value == values[-1]:
                break
        self.info.recall, self.info.recall_k, self.info.recall_sample = round(recall, 5), k, len(rows)
        if recall < self.target_recall - 1e-9 and self.method == "hnsw":
            self._fall_back_to_exact(f"{self.method} reached only recall {recall:.3f} < {self.target_recall}; "
                                     "fell back to exact search")
            self.info.recall, self.info.recall_k = None, None
        self.info.tune_seconds = round(time.perf_counter() - started, 3)
        self._tuned_k = k

    # -- searching ---------------------------------------------------------------------
    def _raw_search(self, queries: np.ndarray, k: int, query_ids: Optional[np.ndarray]
                    ) -> tuple[np.ndarray, np.ndarray]:
        wanted = min(k + (1 if query_ids is not None else 0), len(self.vectors))
        sims, ids = self.index.search(queries, wanted)
        sims = sims.astype(np.float32, copy=False)
        ids = ids.astype(np.int64, copy=False)
        sims = np.where(ids >= 0, sims, -np.inf).astype(np.float32)
        if wanted < k + (1 if query_ids is not None else 0):
            pad = k + (1 if query_ids is not None else 0) - wanted
            sims = np.pad(sims, ((0, 0), (0, pad)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        if query_ids is not None:
            return _drop_self(sims, ids, query_ids, k)
        return sims, ids

    def _list_members(self) -> tuple[np.ndarray, np.ndarray]:
        """Database ids of every inverted list, concatenated, and the lists' offsets."""
        invlists = self.cpu_index.invlists
        sizes = np.array([invlists.list_size(i) for i in range(self.nlist)], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        members = np.empty(int(offsets[-1]), dtype=np.int64)
        for i in range(self.nlist):
            if sizes[i]:
                members[offsets[i]:offsets[i + 1]] = self.faiss.rev_swig_ptr(invlists.get_ids(i), int(sizes[i]))
        return members, offsets

    def _blocked_ivf_search(self, queries: np.ndarray, k: int, query_ids: Optional[np.ndarray],
                            progress: bool) -> tuple[np.ndarray, np.ndarray]:
        """IVF search of many queries one inverted list at a time, as matrix products.

        Same probed lists and the same exact scan as FAISS's IVF-Flat search (so the
        same neighbours and the recall measured at tuning), but all queries that probe a
        list are scored against it in one GEMM instead of list-by-list per query, which
        is memory-bound: about 10x faster for a million centers against themselves on
        two cores. Memory: the probe table (n x nprobe ids) plus one list's block.
        """
        import torch

        nprobe = int(self.info.parameters["nprobe"])
        quantizer = self.faiss.downcast_index(self.cpu_index.quantizer)
        n = len(queries)
        probes = np.empty((n, nprobe), dtype=np.int64)
        for start in range(0, n, self.query_chunk):
            probes[start:start + self.query_chunk] = quantizer.search(queries[start:start + self.query_chunk],
                                                                      nprobe)[1]
        flat_lists = probes.reshape(-1)
        order = np.argsort(flat_lists, kind="stable")
        flat_rows = (order // nprobe).astype(np.int64)
        bounds = np.searchsorted(flat_lists[order], np.arange(self.nlist + 1))
        members, offsets = self._list_members()
        database = torch.from_numpy(self.vectors)
        query_tensor = torch.from_numpy(queries)
        best_sims = torch.full((n, k), -float("inf"))
        best_ids = torch.full((n, k), -1, dtype=torch.int64)
        own = None if query_ids is None else torch.from_numpy(query_ids)
        for lst in _progress(range(self.nlist), progress, "nearest neighbours (IVF lists)"):
            rows = torch.from_numpy(flat_rows[bounds[lst]:bounds[lst + 1]])
            ids = torch.from_numpy(members[offsets[lst]:offsets[lst + 1]])
            if rows.numel() == 0 or ids.numel() == 0:
                continue
            scores = query_tensor[rows] @ database[ids].T
            if own is not None:
                scores.masked_fill_(own[rows][:, None] == ids[None, :], -float("inf"))
            take = min(k, ids.numel())
            values, positions = torch.topk(scores, take, dim=1)
            merged_sims = torch.cat([best_sims[rows], values], dim=1)
            merged_ids = torch.cat([best_ids[rows], ids[positions]], dim=1)
            top_values, top_positions = torch.topk(merged_sims, k, dim=1)
            best_sims[rows] = top_values
            best_ids[rows] = torch.gather(merged_ids, 1, top_positions)
        sims, ids = best_sims.numpy(), best_ids.numpy()
        ids = np.where(np.isfinite(sims), ids, -1)
        return sims.astype(np.float32), ids

    def search(self, queries: np.ndarray, k: int, query_ids: Optional[np.ndarray] = None,
               progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Top-k cosine similarities ``float32 [n, k]`` and ids ``int64 [n, k]``, best first."""
        if queries is not self.vectors:  # the database itself is already unit, and may be gigabytes
            queries = normalize_rows(queries)
        _check_queries(queries, self.vectors.shape[1], k)
        if query_ids is not None:
            query_ids = np.asarray(query_ids, dtype=np.int64)
            if query_ids.shape != (len(queries),):
                raise DataError(f"query_ids must have one id per query ({len(queries)}), got {query_ids.shape}")
        if self.method != "exact" and self._tuned_k != k:
            self.tune(queries, k, query_ids)
        if self.method == "ivf" and not self.use_gpu and len(queries) >= BLOCKED_QUERIES_PER_LIST * self.nlist:
            return self._blocked_ivf_search(queries, k, query_ids, progress)
        out_sims = np.empty((len(queries), k), dtype=np.float32)
        out_ids = np.empty((len(queries), k), dtype=np.int64)
        for start in _progress(range(0, len(queries), self.query_chunk), progress, "nearest neighbours"):
            block_ids = None if query_ids is None else query_ids[start:start + self.query_chunk]
            sims, ids = self._raw_search(np.ascontiguousarray(queries[start:start + self.query_chunk]), k, block_ids)
            out_sims[start:start + len(sims)], out_ids[start:start + len(sims)] = sims, ids
        return out_sims, out_ids

    def range_search(self, queries: np.ndarray, threshold: float, query_ids: Optional[np.ndarray] = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All database vectors with cosine > ``threshold``, on CPU (FAISS has no GPU range search).

        Returns ``(query_rows, ids, similarities)`` as flat arrays; with ``query_ids`` a
        row's own id is left out. Approximate indexes use their tuned parameter, so
        their range results are as complete as their kNN recall.
        """
        queries = normalize_rows(queries)
        _check_queries(queries, self.vectors.shape[1], 1)
        rows_out, ids_out, sims_out = [], [], []
        for start in range(0, len(queries), self.query_chunk):
            block = queries[start:start + self.query_chunk]
            lims, sims, ids = self.cpu_index.range_search(block, float(threshold))
            rows = np.repeat(np.arange(start, start + len(block), dtype=np.int64), np.diff(lims.astype(np.int64)))
            ids = ids.astype(np.int64)
            if query_ids is not None:
                keep = ids != np.asarray(query_ids, dtype=np.int64)[rows]
                rows, ids, sims = rows[keep], ids[keep], sims[keep]
            rows_out.append(rows)
            ids_out.append(ids)
            sims_out.append(sims.astype(np.float32))
        return np.concatenate(rows_out), np.concatenate(ids_out), np.concatenate(sims_out)


def build_index(vectors: np.ndarray, method: str = "auto", **options: Any) -> CosineIndex:
    """The default ``IndexBuilder``: a ``CosineIndex`` over ``vectors``."""
    return CosineIndex(vectors, method, **options)


def self_neighbours(index: NeighborIndex, vectors: np.ndarray, k: int, progress: bool = False
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Each database row's k nearest *other* rows (the conflict question)."""
    return index.search(vectors, k, query_ids=np.arange(len(vectors), dtype=np.int64), progress=progress)
