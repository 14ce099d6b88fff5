"""Sub-center ArcFace as the rest of the project sees it: options, recipe, statistics (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass

from core.center_store.options import CENTER_STORE_STATISTICS, CenterStoreOptions
from core.method_spec import MethodSpec, Range, option


@dataclass
class SubCenterOptions(CenterStoreOptions):
    subcenters: int = option(3, "Sub-centers per class (K; 3 in the paper). A class scores by its nearest sub-center; "
                                "noisy images gather at non-dominant ones.",
                             allowed=Range(1), fixed_on_resume=True)


SPEC = MethodSpec(
    name="subcenter",
    title="Sub-center ArcFace",
    summary="K sub-centers per class, the class logit their maximum (Deng et al. 2020), with Partial FC sampling.",
    options=SubCenterOptions,
    sampler="subcenter.sampler:build_sampler",
    recipe={"margin": "arcface", "scale": 64.0},
    statistics=CENTER_STORE_STATISTICS,
    stored_centers="subcenter.cleaning:stored_centers",
    noise_signals="subcenter.cleaning:noise_signals",
    bench_options={"sample_rate": 0.1},
)
