"""The margin softmax over a Selection: one-prototype and multi-prototype columns, and the recipe it is built from."""

import pytest
import torch
import torch.nn.functional as F

from core.config import TrainConfig
from core.loss import MarginSoftmaxLoss, cosine_logits, margin_loss_for
from core.margins import build_margin
from core.sampler import Selection


pytestmark = pytest.mark.usefixtures("float64_default")


def test_a_column_of_several_prototypes_scores_its_best_one():
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(5, 6, generator=generator)
    prototypes = torch.randn(7, 3, 6, generator=generator, requires_grad=True)
    cosines = cosine_logits(embeddings, prototypes)
    unit_rows, unit_prototypes = F.normalize(embeddings, dim=1), F.normalize(prototypes.detach(), dim=2)
    for row in range(5):
        for column in range(7):
            expected = max(float(unit_rows[row] @ unit_prototypes[column, p]) for p in range(3))
            assert cosines[row, column].item() == pytest.approx(expected, abs=1e-12)
    # the gradient of a column reaches its winning prototype alone
    cosines[0, 2].backward()
    winner = int((unit_prototypes[2] @ unit_rows[0]).argmax())
    touched = prototypes.grad.abs().sum(dim=2) > 0
    assert touched[2].tolist() == [p == winner for p in range(3)] and touched.sum() == 1


def test_multi_prototype_selections_take_the_exact_path_whatever_their_size():
    generator = torch.Generator().manual_seed(1)
    embeddings = torch.randn(4, 5, generator=generator)
    prototypes = torch.randn(40, 2, 5, generator=generator)
    targets = torch.tensor([0, 7, 39, 12])
    margin = build_margin("arcface", scale=16.0)
    chunked = MarginSoftmaxLoss(margin, chunk_columns=8)(Selection(embeddings, prototypes, targets))
    simple = MarginSoftmaxLoss(margin, chunk_columns=None)(Selection(embeddings, prototypes, targets))
    best = cosine_logits(embeddings, prototypes)
    assert chunked.item() == simple.item() == pytest.approx(F.cross_entropy(margin(best, targets), targets).item())


@pytest.mark.parametrize("changes, margin, scale, m2, m3", [
    ({"method": "pfc"}, "arcface", 64.0, 0.5, 0.0),
    ({"method": "dcq"}, "cosface", 50.0, 0.0, 0.3),
    ({"method": "dcq", "margin": "arcface"}, "arcface", 50.0, 0.5, 0.0),  # another margin keeps the recipe's scale
    ({"method": "pfc", "margin": "cosface", "margin_m": 0.25, "scale": 32.0}, "cosface", 32.0, 0.0, 0.25),
])
def test_the_loss_follows_the_methods_recipe_where_options_are_unset(changes, margin, scale, m2, m3):
    built = margin_loss_for(TrainConfig().replace(**changes)).margin
    assert (built.scale, built.m2, built.m3) == (scale, m2, m3)
