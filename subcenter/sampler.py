"""Sub-center ArcFace (Deng et al., ECCV 2020), in PyTorch and with Partial FC sampling.

Each class keeps K sub-centers. A sample's logit for a class is its cosine to the
nearest of that class's sub-centers, with the ArcFace margin on the target; only the
winning sub-center of each (sample, class) pair receives a gradient. Clean images of a
class gather at one dominant sub-center, and mislabelled or odd images settle at the
others instead of dragging the class's center (see cleaning.py for the paper's
cleaning step). insightface's implementation is MXNet only and uses every class each
step; here the classes are sampled as in Partial FC.

Nothing beyond the center store is needed: its rows are ``[K, D]`` per class, sharded,
sampled and optimised like Partial FC's (unsampled classes, all K sub-centers and their
optimizer state, stay untouched), and the loss scores a multi-prototype column by its
best prototype.
"""

from __future__ import annotations

from core.center_store.sampler import CenterStoreSampler, store_from_options
from core.sampler import SamplerEnvironment
from subcenter.spec import SubCenterOptions


def build_sampler(options: SubCenterOptions, environment: SamplerEnvironment) -> CenterStoreSampler:
    """The spec's builder: a center store with K sub-centers per class."""
    store = store_from_options(options, environment, (options.subcenters, environment.embedding_size))
    return CenterStoreSampler(store, options.sample_rate, options.pfc_sampling, environment.class_counts,
                              environment.batch_size)
