import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import ConfigError
from core.margins import CombinedMargin, build_margin

cosines = st.floats(min_value=-0.999, max_value=0.999)


def _target_grad(margin, value):
    cosine = torch.tensor([[value, 0.1]], dtype=torch.float64, requires_grad=True)
    logits = margin(cosine, torch.tensor([0]))
    logits[0, 0].backward()
    return logits[0, 0].item(), cosine.grad[0, 0].item(), cosine.grad[0, 1].item()


@settings(max_examples=60, deadline=None)
@given(c=cosines, m1=st.floats(1.0, 1.5), m2=st.floats(0.0, 0.6), m3=st.floats(0.0, 0.4), s=st.floats(1.0, 64.0))
def test_combined_margin_matches_closed_form_and_its_derivative(c, m1, m2, m3, s):
    margin = CombinedMargin(s, m1, m2, m3)
    theta = math.acos(c)
    if m1 * theta + m2 > math.pi - 1e-6:
        return  # the guard's region is covered separately
    value, grad, other_grad = _target_grad(margin, c)
    expected = s * (math.cos(m1 * theta + m2) - m3)
    expected_grad = s * m1 * math.sin(m1 * theta + m2) / math.sqrt(1 - c * c)
    assert value == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert grad == pytest.approx(expected_grad, rel=1e-6, abs=1e-6)
    assert other_grad == 0.0


@settings(max_examples=40, deadline=None)
@given(c=cosines, m=st.floats(0.0, 0.8))
def test_cosface_is_a_shift(c, m):
    value, grad, _ = _target_grad(build_margin("cosface", scale=30.0, m=m), c)
    assert value == pytest.approx(30.0 * (c - m), rel=1e-12, abs=1e-12)
    assert grad == pytest.approx(30.0)


@settings(max_examples=40, deadline=None)
@given(c=cosines)
def test_straight_through_keeps_value_and_passes_plain_gradient(c):
    exact = build_margin("arcface", scale=64.0, m=0.5)
    straight = build_margin("arcface", scale=64.0, m=0.5, straight_through=True)
    value_exact, _, _ = _target_grad(exact, c)
    value_straight, grad_straight, _ = _target_grad(straight, c)
    assert value_straight == pytest.approx(value_exact, rel=1e-12, abs=1e-12)
    assert grad_straight == pytest.approx(64.0)


def test_guard_is_continuous_and_monotone_past_pi():
    margin = build_margin("arcface", scale=1.0, m=0.5)
    boundary = math.cos(math.pi - 0.5)
    c = torch.linspace(-0.999, 0.999, 4001, dtype=torch.float64)
    values = margin.target_function(c)
    assert torch.all(values[1:] >= values[:-1])  # harder sample never gets an easier target
    just_below = margin.target_function(torch.tensor(boundary - 1e-9, dtype=torch.float64))
    just_above = margin.target_function(torch.tensor(boundary + 1e-9, dtype=torch.float64))
    assert just_below.item() == pytest.approx(-1.0, abs=1e-6)
    assert just_above.item() == pytest.approx(-1.0, abs=1e-6)
    # The un-guarded cos(theta + m) would rise again here:
    unguarded = torch.cos(torch.acos(c) + 0.5)
    assert not torch.all(unguarded[1:] >= unguarded[:-1])


def test_interclass_filtering_zeroes_duplicates_but_not_the_target():
    margin = build_margin("cosface", scale=10.0, m=0.0, interclass_threshold=0.4)
    cosine = torch.tensor([[0.9, 0.5, 0.3], [0.2, 0.8, 0.45]], dtype=torch.float64, requires_grad=True)
    logits = margin(cosine, torch.tensor([0, 1]))
    assert logits.tolist() == [[9.0, 0.0, 3.0], [2.0, 8.0, 0.0]]
    logits.sum().backward()
    assert cosine.grad.tolist() == [[10.0, 0.0, 10.0], [10.0, 10.0, 0.0]]


def test_rows_without_a_local_target_are_only_scaled():
    margin = build_margin("arcface", scale=2.0)
    cosine = torch.tensor([[0.3, 0.6], [0.1, 0.2]], dtype=torch.float64)
    logits = margin(cosine, torch.tensor([-1, 1]))
    assert logits[0].tolist() == [0.6, 1.2]
    assert logits[1, 0].item() == pytest.approx(0.2)
    assert logits[1, 1].item() == pytest.approx(2 * math.cos(math.acos(0.2) + 0.5))


@pytest.mark.parametrize("kwargs", [dict(name="softmax"), dict(name="arcface", scale=-1.0),
                                    dict(name="combined", combined=(0.5, 0.0, 0.0))])
def test_bad_margin_options(kwargs):
    with pytest.raises(ConfigError):
        build_margin(**kwargs)
