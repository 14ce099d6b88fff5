"""Rendered identities: deterministic images that append, with per-image nuisance."""

from __future__ import annotations

import numpy as np

from core.data.synthetic.faces import draw_identity_params, render_identity_images


def test_render_identity_images_is_deterministic_and_appends():
    params = draw_identity_params(np.random.default_rng(1))
    three = render_identity_images(params, np.random.default_rng(2), 3, size=112)
    five = render_identity_images(params, np.random.default_rng(2), 5, size=112)
    assert three.shape == (3, 112, 112, 3) and three.dtype == np.uint8
    assert np.array_equal(three, five[:3])
    assert not np.array_equal(five[3], five[4]), "every image has its own nuisance"
    small = render_identity_images(params, np.random.default_rng(2), 1, size=48)
    assert small.shape == (1, 48, 48, 3)
