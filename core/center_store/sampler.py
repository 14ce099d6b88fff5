"""The ClassSampler of a method whose softmax columns are rows of a CenterStore.

Partial FC is this sampler with one center per class; a center-based variant (sub-center
ArcFace: K prototypes per class) is this sampler with another row shape, plus whatever
it adds on top. ``store_from_options`` builds the store from the options every such
method shares (``CenterStoreOptions``) and what the trainer provides.
"""

from __future__ import annotations

import torch

from core.center_store.options import CenterStoreOptions
from core.center_store.store import SAMPLINGS, CenterStore, storage_dtype
from core.data.batch import Batch
from core.errors import ConfigError
from core.sampler import ClassSampler, SamplerEnvironment, Selection


class CenterStoreSampler(ClassSampler):
    """Each step's columns: the batch's positives, topped up with sampled rows to ``int(sample_rate * C_local)``
    (at least one)."""

    def __init__(self, store: CenterStore, sample_rate: float, sampling: str = "uniform") -> None:
        super().__init__()
        if not 0.0 < sample_rate <= 1.0:
            raise ConfigError(f"--sample-rate must be in (0, 1], got {sample_rate}")
        if sampling not in SAMPLINGS:
            raise ConfigError(f"--pfc-sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")
        self.store = store
        self.sample_rate = sample_rate
        self.sampling = sampling
        # At least one column: a rank whose shard holds none of a batch's labels must still take part in the
        # model-parallel softmax (a tiny shard times a small rate would otherwise give it no column at all).
        self.num_sample = max(1, int(sample_rate * store.shard_size))

    def select(self, embeddings: torch.Tensor, batch: Batch) -> Selection:
        return self.store.select(embeddings, batch.labels, self.num_sample, self.sampling)

    def collect(self, selection: Selection) -> None:
        self.store.collect(selection)

    def step(self, lr: float) -> None:
        self.store.step(lr)

    def sharded_state_names(self) -> list[str]:
        return [f"store.{name}" for name in self.store.sharded_state_names()]

    def shard_range(self) -> tuple[int, int]:
        return self.store.shard_range()

    def class_statistics(self) -> dict[str, torch.Tensor]:
        return self.store.class_statistics()


def store_from_options(options: CenterStoreOptions, environment: SamplerEnvironment,
                       row_shape: tuple[int, ...]) -> CenterStore:
    """This rank's store, following the backbone's optimizer settings (the center rows are trained alike)."""
    context = environment.context
    return CenterStore(environment.num_classes, row_shape, environment.optimizer, environment.momentum,
                       environment.weight_decay, environment.seed, context.rank, context.world_size,
                       environment.device, storage_dtype=storage_dtype(options.center_dtype))
