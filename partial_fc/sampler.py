"""Partial FC (An et al. 2020/2022): keep every class center, let each step's softmax see
the batch's positive classes plus a uniform random subset of the other centers, and
update only the centers that were seen.

All of that machinery is the center store's (core/center_store/): the sharded center
table outside autograd and outside the backbone's optimizer, the sampled rows copied
into a fresh leaf so their gradient is exactly sparse, and the row optimizer that
touches them alone. Partial FC is the store with one center per class and
``int(sample_rate * C_local)`` columns per step; ``sample_rate=1.0`` is exact full softmax.
"""

from __future__ import annotations

from typing import Optional

import torch

from core.center_store.store import SAMPLINGS, CenterStore, storage_dtype
from core.data.batch import Batch
from core.errors import ConfigError
from core.sampler import ClassSampler, SamplerEnvironment, Selection
from partial_fc.spec import PartialFCOptions


class PartialFCSampler(ClassSampler):
    """Class centers ``[C_local, D]`` with sparse, exact per-row optimisation."""

    def __init__(self, num_classes: int, embedding_size: int, sample_rate: float = 0.1,
                 optimizer: str = "sgd", momentum: float = 0.9, weight_decay: float = 5e-4,
                 seed: int = 0, rank: int = 0, world_size: int = 1,
                 device: Optional[torch.device] = None, dtype: torch.dtype = torch.float32,
                 storage_dtype: Optional[torch.dtype] = None, sampling: str = "uniform") -> None:
        super().__init__()
        if not 0.0 < sample_rate <= 1.0:
            raise ConfigError(f"--sample-rate must be in (0, 1], got {sample_rate}")
        if sampling not in SAMPLINGS:
            raise ConfigError(f"--pfc-sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")
        self.sampling = sampling
        self.sample_rate = sample_rate
        self.store = CenterStore(num_classes, (embedding_size,), optimizer, momentum, weight_decay, seed, rank,
                                 world_size, device, dtype, storage_dtype)
        self.num_sample = int(sample_rate * self.store.shard_size)

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


def build_sampler(options: PartialFCOptions, environment: SamplerEnvironment) -> PartialFCSampler:
    """The spec's builder (see partial_fc/spec.py); the backbone is not needed here."""
    context = environment.context
    return PartialFCSampler(environment.num_classes, environment.embedding_size, options.sample_rate,
                            environment.optimizer, environment.momentum, environment.weight_decay, environment.seed,
                            context.rank, context.world_size, environment.device,
                            storage_dtype=storage_dtype(options.center_dtype), sampling=options.pfc_sampling)
