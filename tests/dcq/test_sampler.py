import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.data.batch import Batch, BatchLayout
from core.distributed import DistributedContext
from core.data.loader import IdentityBatchSampler
from core.errors import ConfigError, DataError
from core.loss import MarginSoftmaxLoss
from core.margins import build_margin
from core.methods import get_method
from core.sampler import SamplerEnvironment, build_sampler
from dcq.sampler import DCQSampler, ema_decay, resolve_queue_size
from dcq.spec import SPEC
from tests.conftest import assert_no_host_sync


def _backbone(dim=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 2 * 2, dim))


def _keys(rows, k=1):
    return torch.randn(rows, k, 3, 2, 2)


def test_mask_hides_same_label_columns_and_empty_slots():
    sampler = DCQSampler(_backbone(), 4, num_classes=10, queue_size=5)
    sampler.enqueue(F.normalize(torch.randn(3, 4)), torch.tensor([7, 1, 2]))  # slots 3, 4 stay empty
    labels = torch.tensor([1, 5, 1])
    selection = sampler.select(torch.randn(3, 4), Batch(torch.zeros(3, 3, 2, 2), labels, _keys(3)))
    assert selection.weights.shape == (3 + 5, 4)
    assert selection.targets.tolist() == [0, 1, 2]
    expected = torch.tensor([
        # batch columns 0-2      queue: 7, 1, 2, empty, empty
        [False, False, True, False, True, False, True, True],
        [False, False, False, False, False, False, True, True],
        [True, False, False, False, True, False, True, True],
    ])
    assert torch.equal(selection.negative_mask, expected)


def test_fifo_wraps_around_when_queue_is_not_a_multiple_of_the_batch():
    sampler = DCQSampler(_backbone(), 4, num_classes=100, queue_size=5)
    written = []
    for step in range(4):
        labels = torch.arange(3) + 10 * step
        sampler.enqueue(F.normalize(torch.randn(3, 4)), labels)
        written += labels.tolist()
    # 12 entries through 5 slots: slot i holds the newest entry whose position % 5 == i.
    expected = [None] * 5
    for position, label in enumerate(written):
        expected[position % 5] = label
    assert sampler.queue_labels.tolist() == expected
    assert sampler.pointer.item() == 12 % 5


def test_ema_arithmetic_matches_a_hand_computation():
    backbone = _backbone()
    sampler = DCQSampler(backbone, 4, num_classes=10, queue_size=4, momentum=0.999)
    initial = backbone[1].weight.detach().clone()
    expected = initial.clone()
    for update in range(3):
        with torch.no_grad():
            backbone[1].weight.add_(0.5)
        sampler.update_momentum_encoder(backbone)
        decay = min(0.999, (1 + update) / (10 + update))
        expected = decay * expected + (1 - decay) * backbone[1].weight.detach()
    torch.testing.assert_close(sampler.encoder[1].weight, expected)
    assert ema_decay(0.999, 100_000) == 0.999


def test_logits_and_loss_on_a_tiny_case_by_hand():
    backbone = _backbone(dim=2)
    sampler = DCQSampler(backbone, 2, num_classes=10, queue_size=2)
    sampler.enqueue(torch.tensor([[0.0, 1.0]]), torch.tensor([4]))
    keys = _keys(1)
    selection = sampler.select(torch.tensor([[3.0, 4.0]]), Batch(torch.zeros(1, 3, 2, 2), torch.tensor([2]), keys))
    generated = F.normalize(backbone(keys[0]).detach(), dim=1)[0]
    cos_target = (0.6 * generated[0] + 0.8 * generated[1]).item()
    cos_queue = 0.8  # [0.6, 0.8] . [0, 1]
    s, m = 50.0, 0.3
    expected = -math.log(math.exp(s * (cos_target - m)) / (math.exp(s * (cos_target - m)) + math.exp(s * cos_queue)))
    loss = MarginSoftmaxLoss(build_margin("cosface", scale=s, m=m))(selection)  # empty slot masked
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_k_shot_weight_is_normalised_mean_of_unit_features():
    backbone = _backbone()
    sampler = DCQSampler(backbone, 4, num_classes=10, queue_size=4, k_shot=3)
    keys = _keys(2, k=3)
    generated = sampler.generate_weights(keys)
    features = F.normalize(backbone(keys.flatten(0, 1)).detach(), dim=1).view(2, 3, 4).mean(1)
    torch.testing.assert_close(generated, F.normalize(features, dim=1))


def test_state_size_does_not_depend_on_the_number_of_classes():
    from benchmarks.heads import state_bytes  # the method's state, without the per-class counters for analysis

    small = DCQSampler(_backbone(), 4, num_classes=100, queue_size=64)
    large = DCQSampler(_backbone(), 4, num_classes=1_000_000, queue_size=64)
    assert state_bytes(small) == state_bytes(large) > 64 * 4 * 4


def test_queue_size_options():
    assert resolve_queue_size(0.1, 1000) == 100
    assert resolve_queue_size(300, 1000) == 300
    with pytest.raises(ConfigError, match="--queue-size must be > 0"):
        resolve_queue_size(0, 1000)
    with pytest.raises(ConfigError, match="larger than the dataset"):
        resolve_queue_size(5000, 1000, num_images=2000)
    with pytest.raises(ConfigError, match="a whole number"):
        resolve_queue_size(2.5, 1000)


def test_the_builder_follows_the_options_and_asks_for_key_images():
    spec = get_method("dcq")
    assert spec is SPEC
    options = spec.make_options({"queue_size": 0.1, "k_shot": 2, "dcq_momentum": 0.99,
                                 "identity_sampling": "category", "strict_k_shot": True})
    environment = SamplerEnvironment(num_classes=200, num_images=1000, embedding_size=4, backbone=_backbone(),
                                     device=torch.device("cpu"), context=DistributedContext(), seed=0)
    sampler = build_sampler(spec, options, environment)
    assert isinstance(sampler, DCQSampler)
    assert sampler.queue.shape == (20, 4) and sampler.momentum == 0.99
    assert sampler.batch_layout() == BatchLayout(key_images_per_row=2, identity_sampling="category", strict=True)
    assert list(sampler.class_statistics()) == [statistic.name for statistic in SPEC.statistics]
    state = sampler.state_dict(keep_vars=True)
    assert all(state[name] is tensor for name, tensor in sampler.class_statistics().items())
    with pytest.raises(ConfigError, match="key images"):
        sampler.select(torch.randn(2, 4), Batch(torch.zeros(2, 3, 2, 2), torch.tensor([0, 1])))


def test_strict_k_shot_needs_enough_images():
    labels = np.array([0, 0, 0, 1, 2, 2])
    with pytest.raises(DataError, match="identity 1 has only 1 image"):
        IdentityBatchSampler(labels, 2, k=1, seed=0, strict=True)


@pytest.mark.parametrize("mode", ["image", "category"])
def test_identity_batches_pair_rows_with_other_images_of_their_identity(mode):
    labels = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    sampler = IdentityBatchSampler(labels, 5, k=2, seed=1, mode=mode)
    batches = list(sampler)
    assert len(batches) == 2
    for batch in batches:
        for query, *keys in batch:
            assert all(labels[key] == labels[query] for key in keys)
            if (labels == labels[query]).sum() > 1:
                assert query not in keys
            else:
                assert keys == [query, query]  # single-image identity: its own (re-augmented) copy
    assert [list(b) for b in sampler] == [list(b) for b in batches]  # deterministic per epoch


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs only exist on CUDA")
def test_a_step_never_waits_for_the_host():
    device = torch.device("cuda")
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 4 * 4, 16)).to(device)
    sampler = DCQSampler(backbone, 16, num_classes=1000, queue_size=64, device=device)
    loss_fn = MarginSoftmaxLoss(build_margin("cosface", scale=50.0, m=0.3))

    def step():
        images, keys = torch.randn(8, 3, 6, 6, device=device), torch.randn(8, 1, 3, 6, 6, device=device)
        labels = torch.randint(1000, (8,), device=device)
        selection = sampler.select(backbone(images), Batch(images, labels, keys))
        loss_fn(selection).backward()
        sampler.collect(selection)
        sampler.step(0.1)

    assert_no_host_sync(step, step)
