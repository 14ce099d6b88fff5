"""Sub-center ArcFace: the center store with K sub-centers per class, sampled like Partial FC."""

import copy

import pytest
import torch
from torch import nn

from core.config import TrainConfig
from core.data.batch import Batch
from core.distributed import DistributedContext
from core.loss import margin_loss_for
from core.methods import get_method
from core.sampler import SamplerEnvironment, build_sampler

CLASSES, DIM = 30, 6


def _sampler(name, backbone, **options):
    spec = get_method(name)
    environment = SamplerEnvironment(num_classes=CLASSES, num_images=300, embedding_size=DIM, backbone=backbone,
                                     device=torch.device("cpu"), context=DistributedContext(), seed=4)
    return build_sampler(spec, spec.make_options(options), environment)


def _train(name, steps=4, **options):
    torch.manual_seed(0)
    backbone = nn.Linear(5, DIM)
    sampler = _sampler(name, backbone, **options)
    optimizer = torch.optim.SGD(backbone.parameters(), lr=0.1)
    loss_fn = margin_loss_for(TrainConfig().replace(method=name))
    generator = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        batch = Batch(torch.randn(8, 5, generator=generator), torch.randint(CLASSES, (8,), generator=generator))
        optimizer.zero_grad()
        selection = sampler.select(backbone(batch.images), batch)
        loss = loss_fn(selection)
        loss.backward()
        sampler.collect(selection)
        optimizer.step()
        sampler.step(0.1)
        losses.append(loss.item())
    return losses, sampler


def test_one_subcenter_per_class_is_partial_fc_step_for_step():
    pfc_losses, pfc = _train("pfc", sample_rate=0.4)
    sub_losses, sub = _train("subcenter", sample_rate=0.4, subcenters=1)
    assert sub_losses == pfc_losses
    assert sub.store.centers.shape == (CLASSES, 1, DIM)
    assert torch.equal(sub.store.centers[:, 0], pfc.store.centers)
    assert torch.equal(sub.class_statistics()["negative_updates"], pfc.class_statistics()["negative_updates"])


def test_three_subcenters_train_differently_and_keep_unsampled_classes_whole():
    _, one = _train("subcenter", sample_rate=0.2, subcenters=1)
    losses, three = _train("subcenter", sample_rate=0.2, subcenters=3)
    assert three.store.centers.shape == (CLASSES, 3, DIM)
    assert losses != _train("subcenter", sample_rate=0.2, subcenters=1)[0]
    initial = copy.deepcopy(_sampler("subcenter", nn.Linear(5, DIM), sample_rate=0.2, subcenters=3))
    untouched = (three.class_statistics()["positive_updates"] + three.class_statistics()["negative_updates"]) == 0
    assert untouched.any()  # with 6 of 30 classes a step, some class was never sampled in 4 steps
    assert torch.equal(three.store.centers[untouched], initial.store.centers[untouched])
    momentum = three.store.center_optimizer.momentum_buffer
    assert not momentum[untouched].any() and momentum[~untouched].any()


@pytest.mark.parametrize("subcenters", [0, 1.5])
def test_bad_subcenter_counts_are_refused(subcenters):
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="subcenters"):
        TrainConfig().replace(method="subcenter", subcenters=subcenters).validate()
