"""Partial FC (An et al. 2020/2022): keep every class center, let each step's softmax see
the batch's positive classes plus a uniform random subset of the other centers, and
update only the centers that were seen.

All of that machinery is the center store's (core/center_store/): the sharded center
table outside autograd and outside the backbone's optimizer, the sampled rows copied
into a fresh leaf so their gradient is exactly sparse, and the row optimizer that
touches them alone. Partial FC is the store with one center per class and
``int(sample_rate * C_local)`` columns per step (at least one); ``sample_rate=1.0`` is exact full softmax.
"""

from __future__ import annotations

from typing import Optional

import torch

from core.center_store.sampler import CenterStoreSampler, store_from_options
from core.center_store.store import CenterStore
from core.sampler import SamplerEnvironment
from partial_fc.spec import PartialFCOptions


class PartialFCSampler(CenterStoreSampler):
    """Class centers ``[C_local, D]`` with sparse, exact per-row optimisation."""

    def __init__(self, num_classes: int, embedding_size: int, sample_rate: float = 0.1,
                 optimizer: str = "sgd", momentum: float = 0.9, weight_decay: float = 5e-4,
                 seed: int = 0, rank: int = 0, world_size: int = 1,
                 device: Optional[torch.device] = None, dtype: torch.dtype = torch.float32,
                 storage_dtype: Optional[torch.dtype] = None, sampling: str = "uniform",
                 head_kernel: str = "torch") -> None:
        store = CenterStore(num_classes, (embedding_size,), optimizer, momentum, weight_decay, seed, rank, world_size,
                            device, dtype, storage_dtype, head_kernel)
        super().__init__(store, sample_rate, sampling)


def build_sampler(options: PartialFCOptions, environment: SamplerEnvironment) -> CenterStoreSampler:
    """The spec's builder (see partial_fc/spec.py): the store with one center per class."""
    store = store_from_options(options, environment, (environment.embedding_size,))
    return CenterStoreSampler(store, options.sample_rate, options.pfc_sampling, environment.class_counts,
                              environment.batch_size)
