"""What is Partial FC's own on top of the center store (tests/core/center_store/): its options, how many
columns it asks for, its builder and the statistics its spec names."""

import pytest
import torch

from core.center_store.row_optimizers import RowAdamW
from core.center_store.sampler import CenterStoreSampler
from core.center_store.store import CenterStore
from core.data.batch import Batch
from core.distributed import DistributedContext
from core.errors import ConfigError
from core.loss import MarginSoftmaxLoss
from core.margins import build_margin
from core.methods import get_method
from core.sampler import SamplerEnvironment, build_sampler
from partial_fc.sampler import PartialFCSampler
from partial_fc.spec import SPEC


def test_bad_sample_rate_or_sampling():
    with pytest.raises(ConfigError, match="--sample-rate"):
        PartialFCSampler(10, 4, sample_rate=0.0)
    with pytest.raises(ConfigError, match="--sample-rate"):
        PartialFCSampler(10, 4, sample_rate=1.5)
    with pytest.raises(ConfigError, match="--pfc-sampling must be one of uniform, stratified, got 'topk'"):
        PartialFCSampler(10, 4, sample_rate=0.5, sampling="topk")


@pytest.mark.parametrize("num_classes, world_size, rate", [(200, 1, 0.1), (10, 3, 0.7), (101, 4, 0.35)])
def test_num_sample_is_the_rate_of_this_ranks_shard(num_classes, world_size, rate):
    for rank in range(world_size):
        sampler = PartialFCSampler(num_classes, 4, sample_rate=rate, rank=rank, world_size=world_size)
        shard_size = sampler.store.shard_size
        assert shard_size == num_classes // world_size + (rank < num_classes % world_size)
        assert sampler.num_sample == max(1, int(rate * shard_size))
    assert PartialFCSampler(10, 4, sample_rate=0.7, rank=0, world_size=3).num_sample == 2  # int(0.7 * 4), not 7


def test_a_rank_without_positives_in_a_batch_still_has_a_column():
    """6 classes on 2 ranks at rate 0.3: int(0.3 * 3) = 0; a batch of one shard's labels leaves the other none."""
    from core.loss import MarginSoftmaxLoss
    from core.margins import build_margin

    sampler = PartialFCSampler(6, 4, sample_rate=0.3, rank=1, world_size=2)  # classes 3, 4, 5
    assert sampler.num_sample == 1
    selection = sampler.store.select(torch.randn(4, 4), torch.tensor([0, 1, 2, 0]), sampler.num_sample)
    assert selection.weights.shape == (1, 4) and (selection.targets == -1).all()
    logits = MarginSoftmaxLoss(build_margin("arcface")).logits(selection)
    assert logits.shape == (4, 1) and torch.isfinite(logits).all()


@pytest.mark.parametrize("sampling", ["uniform", "stratified"])
def test_the_builder_makes_a_sampler_that_selects_like_its_store(sampling):
    spec = get_method("pfc")
    assert spec is SPEC
    options = spec.make_options({"sample_rate": 0.25, "pfc_sampling": sampling, "center_dtype": "bfloat16"})
    environment = SamplerEnvironment(num_classes=40, num_images=400, embedding_size=6, backbone=torch.nn.Identity(),
                                     device=torch.device("cpu"), context=DistributedContext(), seed=7,
                                     optimizer="adamw", momentum=0.8, weight_decay=1e-3)
    sampler = build_sampler(spec, options, environment)
    assert isinstance(sampler, CenterStoreSampler) and sampler.store.row_shape == (6,)  # one center per class
    assert (sampler.sample_rate, sampler.sampling, sampler.num_sample) == (0.25, sampling, 10)
    assert sampler.store.centers.shape == (40, 6) and sampler.store.centers.dtype == torch.bfloat16
    assert isinstance(sampler.store.center_optimizer, RowAdamW)
    assert sampler.store.center_optimizer.weight_decay == 1e-3
    store = CenterStore(40, (6,), optimizer="adamw", momentum=0.8, weight_decay=1e-3, seed=7,
                        storage_dtype=torch.bfloat16)
    assert torch.equal(sampler.store.centers, store.centers)
    margin = build_margin("arcface", scale=16.0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        embeddings = torch.randn(6, 6, generator=generator)
        labels = torch.randint(40, (6,), generator=generator)
        ours = sampler.select(embeddings.clone().requires_grad_(True), Batch(torch.zeros(6, 3, 2, 2), labels))
        theirs = store.select(embeddings.clone().requires_grad_(True), labels, 10, sampling)
        assert ours.state["index"].numel() == 10
        assert torch.equal(ours.state["index"], theirs.state["index"])
        assert torch.equal(ours.state["positives"], theirs.state["positives"])
        assert torch.equal(ours.targets, theirs.targets)
        assert torch.equal(ours.weights, theirs.weights)
        for selection, owner in ((ours, sampler), (theirs, store)):
            MarginSoftmaxLoss(margin)(selection).backward()
            owner.collect(selection)
            owner.step(0.1)
    assert not torch.equal(store.centers, CenterStore(40, (6,), seed=7, storage_dtype=torch.bfloat16).centers)
    for key, value in store.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(sampler.state_dict()[f"store.{key}"], value), key


def test_class_statistics_are_the_specs_statistics_held_in_its_state():
    sampler = PartialFCSampler(20, 4, sample_rate=0.5)
    statistics = sampler.class_statistics()
    assert list(statistics) == [statistic.name for statistic in SPEC.statistics]
    state = sampler.state_dict(keep_vars=True)
    for name, tensor in statistics.items():
        key = f"store.{name}"
        assert state[key] is tensor, name  # the counters themselves, not copies
        assert tensor.shape == (20,) and tensor.dtype == torch.int64
    assert set(sampler.sharded_state_names()) >= {f"store.{name}" for name in statistics}
