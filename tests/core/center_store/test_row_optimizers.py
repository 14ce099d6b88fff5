import pytest
import torch

from core.center_store.row_optimizers import RowSGD, stochastic_round
from core.center_store.store import CenterStore
from core.loss import MarginSoftmaxLoss
from core.margins import build_margin


def test_stochastic_rounding_picks_a_neighbour_and_is_unbiased():
    generator = torch.Generator().manual_seed(0)
    # 1 + 0.3 bf16-steps (bf16 has 7 mantissa bits: the step at 1.0 is 2**-7), and its negative
    values = torch.tensor([1.0 + 0.3 * 2 ** -7, -(1.0 + 0.3 * 2 ** -7)]).repeat(20_000, 1)
    rounded = stochastic_round(values, torch.bfloat16, generator).float()
    below, above = 1.0, 1.0 + 2 ** -7
    magnitude = rounded.abs()
    assert torch.all((magnitude == below) | (magnitude == above))
    assert torch.all(torch.sign(rounded) == torch.sign(values))
    fraction_up = (magnitude == above).float().mean(0)
    torch.testing.assert_close(fraction_up, torch.tensor([0.3, 0.3]), atol=0.015, rtol=0)
    # round-to-nearest would map every value to 1.0: a bias of 0.3 steps
    torch.testing.assert_close(rounded.mean(0), values[0], atol=0.02 * 2 ** -7, rtol=0)


def test_repeated_rows_write_their_leaders_rounding():
    """Copies of one row carry equal values but draw different rounding noise; the leader's wins everywhere."""
    optimizer = RowSGD((4, 256), storage_dtype=torch.bfloat16)
    assert optimizer.momentum_buffer.shape == (4, 256) and optimizer.momentum_buffer.dtype == torch.bfloat16
    optimizer.rounding_generator = torch.Generator().manual_seed(0)
    store = torch.zeros(4, 256, dtype=torch.bfloat16)
    values = (1.0 + 0.5 * 2 ** -7 * torch.rand(256, generator=torch.Generator().manual_seed(1))).repeat(3, 1)
    rows, leaders = torch.tensor([2, 0, 2]), torch.tensor([0, 1, 0])
    optimizer.write(store, rows, values, leaders)
    expected = stochastic_round(values, torch.bfloat16, torch.Generator().manual_seed(0))
    assert not torch.equal(expected[0], expected[2])  # without the leaders the last copy's rounding would land
    assert torch.equal(store[2], expected[0]) and torch.equal(store[0], expected[1])
    assert not store[[1, 3]].any()


def test_bfloat16_store_keeps_updates_far_below_its_resolution():
    # SGD on a row of 1.0s with lr * grad = 1e-4 (1/80 of a bf16 step at 1.0) for 400 steps:
    # round-to-nearest would leave the row at exactly 1.0; stochastic rounding tracks 0.96
    store = CenterStore(1, (256,), momentum=0.0, weight_decay=0.0, storage_dtype=torch.bfloat16)
    store.centers.fill_(1.0)
    for _ in range(400):
        store.center_optimizer.update(store.centers, None, torch.full((1, 256), 1e-3), lr=0.1)
    assert store.centers.dtype == torch.bfloat16
    assert abs(store.centers.float().mean().item() - 0.96) < 2e-3


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.1), ("adamw", 1e-3)])
def test_bfloat16_store_trains_like_float32_and_leaves_unsampled_rows_alone(optimizer, lr):
    torch.manual_seed(0)
    num_classes, dim, batch = 300, 32, 16
    num_sample = int(0.2 * num_classes)
    margin = build_margin("arcface", scale=32.0)
    stores = {dtype: CenterStore(num_classes, (dim,), optimizer, storage_dtype=dtype)
              for dtype in (torch.float32, torch.bfloat16)}
    stores[torch.bfloat16].centers.copy_(stores[torch.float32].centers.to(torch.bfloat16))
    stores[torch.float32].centers.copy_(stores[torch.bfloat16].centers.float())
    untouched = torch.ones(num_classes, dtype=torch.bool)
    losses = {}
    for step in range(5):
        embeddings, labels = torch.randn(batch, dim), torch.randint(num_classes, (batch,))
        for dtype, store in stores.items():
            store.generator.manual_seed(step)  # the same columns for both stores
            before = store.centers.clone()
            selection = store.select(embeddings, labels, num_sample, "uniform")
            loss = MarginSoftmaxLoss(margin)(selection)
            loss.backward()
            store.collect(selection)
            store.step(lr)
            losses.setdefault(dtype, []).append(loss.item())
            seen = torch.zeros(num_classes, dtype=torch.bool)
            seen[selection.state["index"]] = True
            assert torch.equal(store.centers[~seen], before[~seen])
        untouched &= ~seen
    assert untouched.any()
    assert stores[torch.bfloat16].center_optimizer.state_dict()
    for buffer in stores[torch.bfloat16].center_optimizer.buffers():
        assert buffer.dtype in (torch.bfloat16, torch.int64)
    torch.testing.assert_close(torch.tensor(losses[torch.bfloat16]), torch.tensor(losses[torch.float32]),
                               rtol=2e-2, atol=0)
    # a typical row is off by about one bf16 rounding (2**-8 relative); a few positives
    # drift further because their bf16 logits gave slightly different gradients
    reference = stores[torch.float32].centers
    row_error = (stores[torch.bfloat16].centers.float() - reference).norm(dim=1) / reference.norm(dim=1)
    assert row_error.median() < 5e-3 and row_error.max() < 0.1
