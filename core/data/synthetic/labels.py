"""Who is labelled what: long-tailed counts, split identities, label flips, verification pairs.

The label noise that experiments measure must be injected on purpose and recorded
exactly; deciding it here, apart from pixels and files, gives the rendered dataset and
the embedding mixture the same noise and the same ground-truth layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from core.data.synthetic.streams import _S_FLIP, _S_SPLIT, _rng
from core.errors import ConfigError

__all__ = ["long_tail_counts"]

# Format tag of every ground truth (images and embeddings); load_ground_truth checks it.
_FORMAT = "facequeue-synthetic-v1"


# ---------------------------------------------------------------------------------------
# Long tail
# ---------------------------------------------------------------------------------------


def long_tail_counts(
    n: int, min_images: int, max_images: int, exponent: float, rng: np.random.Generator
) -> np.ndarray:
    """Images per class drawn from a truncated Zipf law ``p(k) ~ k**-exponent``.

    A real identity list is dominated by rare classes with a few very frequent ones; the
    truncation keeps every class usable (``>= min_images``) and bounds the head. Draws are
    sequential from ``rng``, so the first ``n`` counts do not change when ``n`` grows.
    """
    k = np.arange(min_images, max_images + 1, dtype=np.float64)
    cdf = np.cumsum(k ** -float(exponent))
    cdf /= cdf[-1]
    u = rng.random(int(n))
    idx = np.minimum(np.searchsorted(cdf, u, side="right"), len(k) - 1)
    return (min_images + idx).astype(np.int64)


def _validate_long_tail(prefix: str, min_images: int, max_images: int, exponent: float) -> None:
    if min_images < 1 or max_images < min_images:
        raise ConfigError(
            f"{prefix}.min_images/max_images must satisfy 1 <= min <= max, got {min_images}/{max_images}"
        )
    if not math.isfinite(exponent) or exponent < 0:
        raise ConfigError(f"{prefix}.zipf_exponent must be a finite number >= 0, got {exponent}")


# ---------------------------------------------------------------------------------------
# Labels: splits and flips (shared by the image and the embedding generators)
# ---------------------------------------------------------------------------------------


@dataclass
class _Labelling:
    """Per-sample truth and given labels, in identity order (identity, then image index)."""

    identity: np.ndarray  # int64 [N] true identity of each sample
    within: np.ndarray  # int64 [N] image index inside its identity
    true_label: np.ndarray  # int64 [N] label after splitting, before flipping
    label: np.ndarray  # int64 [N] label written to the dataset
    flipped: np.ndarray  # int64 [F] sample indices (identity order) whose label was flipped
    split_pairs: np.ndarray  # int64 [S, 2] (original label, extra label)
    num_classes: int
    lookalike: bool = False  # flips went to look-alike identities


def _assign_labels(counts: np.ndarray, split: float, flip_noise: float, seed: int,
                   lookalikes: Optional[np.ndarray] = None) -> _Labelling:
    """Inject split identities and label flips, recording exactly what was done.

    Split identities keep their label for part of their images and give the rest a new
    label ``identities + j``: one person under two labels. Flips give a sample a label of
    another identity, never one of its own person's labels. Every label keeps at least one
    correctly labelled sample so that no class ends up empty. Flipped samples are the
    ones with the smallest random priority, so raising ``flip_noise`` only adds flips.
    ``lookalikes[identity]`` (other identities, most alike first): a flip then takes the
    label of one of them instead of any label.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n_id = len(counts)
    total = int(counts.sum())
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    identity = np.repeat(np.arange(n_id, dtype=np.int64), counts)
    within = np.arange(total, dtype=np.int64) - np.repeat(starts, counts)

    n_split = int(round(split * n_id))
    rng = _rng(seed, _S_SPLIT)
    eligible = np.flatnonzero(counts >= 4)
    if len(eligible) < n_split:
        eligible = np.flatnonzero(counts >= 2)
    if n_split > len(eligible):
        raise ConfigError(
            f"split={split} asks for {n_split} split identities but only {len(eligible)} identities "
            "have the two or more images a split needs")
    chosen = np.sort(rng.permutation(eligible)[:n_split]).astype(np.int64)
    frac = rng.uniform(0.3, 0.7, n_split)
    n_extra = np.clip(np.round(counts[chosen] * frac), 1, counts[chosen] - 1).astype(np.int64)
    extra_of = np.full(n_id, -1, dtype=np.int64)
    extra_of[chosen] = n_id + np.arange(n_split, dtype=np.int64)
    first_extra = counts.copy()  # image index from which an identity's images move to its extra label
    first_extra[chosen] = counts[chosen] - n_extra
    true_label = identity.copy()
    moved = within >= first_extra[identity]
    true_label[moved] = extra_of[identity[moved]]
    num_classes = n_id + n_split

    n_flip = int(round(flip_noise * total))
    flipped = np.zeros(0, dtype=np.int64)
    label = true_label.copy()
    if n_flip:
        anchor = (within == 0) | (within == first_extra[identity])
        candidates = np.flatnonzero(~anchor)
        if n_flip > len(candidates):
            raise ConfigError(
                f"flip_noise={flip_noise} asks for {n_flip} flipped samples but only {len(candidates)} can be "
                "flipped while every label keeps one correct sample")
        frng = _rng(seed, _S_FLIP)
        priority = frng.random(total)
        offset = frng.integers(0, max(num_classes - 1, 1), total)
        pick = candidates[np.argpartition(priority[candidates], n_flip - 1)[:n_flip]] if n_flip < len(
            candidates) else candidates
        flipped = np.sort(pick)
        if lookalikes is not None:
            choice = frng.integers(0, lookalikes.shape[1], len(flipped))
            label[flipped] = lookalikes[identity[flipped], choice]
        else:
            label[flipped] = _uniform_flip_targets(flipped, true_label, identity, extra_of, offset, num_classes, seed)
    split_pairs = np.stack([chosen, extra_of[chosen]], axis=1) if n_split else np.zeros((0, 2), dtype=np.int64)
    return _Labelling(identity, within, true_label, label, flipped, split_pairs, num_classes,
                      lookalike=lookalikes is not None)


def _uniform_flip_targets(flipped: np.ndarray, true_label: np.ndarray, identity: np.ndarray, extra_of: np.ndarray,
                          offset: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    """A label for each flipped sample, uniform over the labels that are not its own person's."""
    own = true_label[flipped]
    new = offset[flipped] + (offset[flipped] >= own)
    sibling = np.where(own == identity[flipped], extra_of[identity[flipped]], identity[flipped])
    clash = np.flatnonzero(new == sibling)
    retry = _rng(seed, _S_FLIP, 1)
    while len(clash):
        r = retry.integers(0, num_classes - 1, len(clash))
        new[clash] = r + (r >= own[clash])
        clash = clash[new[clash] == sibling[clash]]
    return new


def _label_identity(lab: _Labelling) -> np.ndarray:
    """True identity behind every label (extra labels point at the split person)."""
    out = np.arange(lab.num_classes, dtype=np.int64)
    if len(lab.split_pairs):
        out[lab.split_pairs[:, 1]] = lab.split_pairs[:, 0]
    return out


def _validate_noise(prefix: str, flip_noise: float, split: float) -> None:
    if not 0.0 <= flip_noise < 1.0:
        raise ConfigError(f"{prefix}.flip_noise must be in [0, 1), got {flip_noise}")
    if not 0.0 <= split <= 1.0:
        raise ConfigError(f"{prefix}.split must be in [0, 1], got {split}")


# ---------------------------------------------------------------------------------------
# Verification pairs
# ---------------------------------------------------------------------------------------


def _verification_pairs(counts: Sequence[int], n_pairs: int,
                        rng: np.random.Generator) -> tuple[list[tuple[int, int, int, int]], list[bool]]:
    """Balanced, distinct pairs ``(identity_a, image_a, identity_b, image_b)``.

    Positives pick an identity uniformly (as LFW-style protocols do, so large identities do
    not dominate) and two different images of it; negatives pick two different
    identities. Halves are equal; fewer pairs are returned when the identities cannot
    supply enough distinct ones.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n_id = len(counts)
    multi = np.flatnonzero(counts >= 2)
    pos_available = int((counts * (counts - 1) // 2).sum())
    neg_available = int((counts.sum() ** 2 - (counts ** 2).sum()) // 2)
    half = min(n_pairs // 2, pos_available, neg_available)
    positives: dict[tuple[int, int, int, int], None] = {}
    if half > pos_available // 2:
        every = [(int(i), a, int(i), b) for i in multi for a in range(counts[i]) for b in range(a + 1, counts[i])]
        for j in np.sort(rng.choice(len(every), half, replace=False)):
            positives[every[int(j)]] = None
    while len(positives) < half:
        i = int(multi[rng.integers(len(multi))])
        a, b = sorted(int(x) for x in rng.choice(int(counts[i]), 2, replace=False))
        positives.setdefault((i, a, i, b), None)
    negatives: dict[tuple[int, int, int, int], None] = {}
    while len(negatives) < half:
        i, j = sorted(int(x) for x in rng.choice(n_id, 2, replace=False))
        negatives.setdefault((i, int(rng.integers(counts[i])), j, int(rng.integers(counts[j]))), None)
    pairs = list(positives) + list(negatives)
    same = [True] * half + [False] * half
    order = rng.permutation(len(pairs))
    return [pairs[int(k)] for k in order], [same[int(k)] for k in order]
