"""Seeded random streams, keyed by purpose and index, shared by every generator.

Everything is deterministic from a seed. Random streams are keyed by purpose and by
identity (``numpy.random.default_rng([seed, stream, index])``), so changing one option
(say ``flip_noise``) leaves the identities, their images and the counts unchanged; the
stream ids live together here so that no two purposes can ever share one. The default
worker count is here too: the generators split their work into fixed pieces, so it never
changes the numbers.
"""

from __future__ import annotations

import os

import numpy as np

# Stream ids: each purpose draws from its own generator so options stay independent.
_S_TRAIN_PARAMS = 1
_S_HELDOUT_PARAMS = 2
_S_TRAIN_IMAGES = 3
_S_HELDOUT_IMAGES = 4
_S_TRAIN_COUNTS = 5
_S_HELDOUT_COUNTS = 6
_S_SPLIT = 7
_S_FLIP = 8
_S_VAL = 9
_S_VAL_TAIL = 10
_S_VARIANTS = 11
_S_CENTERS = 12
_S_CLUSTERS = 13
_S_EMB_COUNTS = 14
_S_EMB_NOISE = 15
_S_STREAM = 16
_S_FAMILIES = 17
_S_OPEN_PARAMS = 18
_S_OPEN_IMAGES = 19
_S_OPEN_LABELS = 20


def _rng(seed: int, *stream: int) -> np.random.Generator:
    """A generator keyed by (seed, stream...), independent of every other key."""
    return np.random.default_rng([int(seed), *[int(s) for s in stream]])


def _default_workers() -> int:
    try:
        return max(1, min(len(os.sched_getaffinity(0)), 8))
    except AttributeError:  # platforms without sched_getaffinity
        return max(1, min(os.cpu_count() or 1, 8))
