"""Partial FC as the rest of the project sees it: options, recipe, statistics (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.center_store.options import CENTER_STORE_STATISTICS, CenterStoreOptions
from core.method_spec import MethodSpec


@dataclass
class PartialFCOptions(CenterStoreOptions):
    """Partial FC needs nothing beyond the center store's options."""


def stored_centers(tables: Any, embeddings: Any, labels: Any) -> Any:
    """The trained center of every class, raw: the center store itself."""
    return tables["store.centers"]


SPEC = MethodSpec(
    name="pfc",
    title="Partial FC",
    summary="every class center kept; each step's softmax over the positives plus sampled negatives.",
    options=PartialFCOptions,
    sampler="partial_fc.sampler:build_sampler",
    recipe={"margin": "arcface", "scale": 64.0},
    statistics=CENTER_STORE_STATISTICS,
    stored_centers="partial_fc.spec:stored_centers",
    peer_step="benchmarks.train_step:InsightfaceStylePFC",
    bench_options={"sample_rate": 0.1},
    full_softmax_options={"sample_rate": 1.0},
)
