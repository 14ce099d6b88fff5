"""Additive angular / cosine margins on cosine logits, and inter-class filtering.

All margins are one family: the target logit becomes ``s * (cos(m1*theta + m2) - m3)``
(ArcFace = (1, m, 0), CosFace = (1, 0, m)); non-target logits are ``s * cos``.
Margins act on a ``[B, K]`` cosine matrix and each row's target column, with -1 for a
row whose class is not among this rank's columns (it then gets no margin here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from core.errors import ConfigError

# Keeps d acos / d sqrt finite when a cosine reaches exactly +-1.
_EPS = 1e-7


@dataclass(frozen=True)
class CombinedMargin:
    """``cos(m1*theta + m2) - m3`` on the target, scaled by ``s``.

    ``straight_through`` reproduces insightface, which computes the margin under
    ``no_grad``: the target's gradient is then that of plain ``cos`` (the derivative of
    the margin function is dropped). The default is the exact gradient.

    When ``m1*theta + m2`` would pass pi the margin function stops decreasing, so a
    harder sample would get an *easier* target. Past that point the target continues as
    ``cos(theta)`` shifted to meet the curve at the boundary: continuous and monotone
    (the classic ``cos(theta) - m*sin(pi - m)`` fallback jumps at the boundary).

    ``interclass_threshold`` (insightface's ``interclass_filtering_threshold``): a
    non-target cosine above it is taken for a duplicate identity and set to 0, so it
    neither pushes the two centers apart nor gets a gradient.
    """

    scale: float = 64.0
    m1: float = 1.0
    m2: float = 0.5
    m3: float = 0.0
    straight_through: bool = False
    interclass_threshold: Optional[float] = None

    def __post_init__(self) -> None:
        if self.scale <= 0:
            raise ConfigError(f"--scale must be > 0, got {self.scale}")
        if self.m1 < 1.0 or self.m2 < 0.0 or self.m3 < 0.0:
            raise ConfigError(f"margins need m1 >= 1, m2 >= 0, m3 >= 0; got ({self.m1}, {self.m2}, {self.m3})")
        if self.m2 >= math.pi:
            raise ConfigError(f"angular margin m2 must be < pi, got {self.m2}")

    @property
    def is_angular(self) -> bool:
        return self.m1 != 1.0 or self.m2 != 0.0

    def target_function(self, cos_target: torch.Tensor) -> torch.Tensor:
        """The margin applied to target cosines (un-scaled), with the pi guard."""
        if not self.is_angular:
            return cos_target - self.m3
        cos_safe = cos_target.clamp(-1.0 + _EPS, 1.0 - _EPS)
        theta = torch.acos(cos_safe)
        boundary_theta = (math.pi - self.m2) / self.m1
        inside = torch.cos(self.m1 * theta + self.m2) - self.m3
        if boundary_theta >= math.pi:
            return inside
        # Continuous continuation: cos(theta) - cos(boundary) + (-1 - m3).
        outside = cos_target - math.cos(boundary_theta) - 1.0 - self.m3
        return torch.where(theta <= boundary_theta, inside, outside)

    def target_slope(self, cos_target: torch.Tensor) -> torch.Tensor:
        """d target_function / d cos at each target cosine (1 with ``straight_through``): what a head that
        writes its own backward multiplies the target column's gradient by."""
        if self.straight_through:
            return torch.ones_like(cos_target)
        with torch.enable_grad():
            probe = cos_target.detach().requires_grad_(True)
            (slope,) = torch.autograd.grad(self.target_function(probe).sum(), probe)
        return slope

    def __call__(self, cosine: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cosines ``[B, K]`` and target columns ``[B]`` (-1 = none) -> scaled logits."""
        # Every row is indexed (rows without a target at column 0, left unchanged) instead of
        # selecting the rows that have one: a nonzero() would stall the GPU on a host sync.
        has_target = targets >= 0
        rows = torch.arange(targets.shape[0], device=targets.device)
        cols = targets.clamp(min=0)
        if self.interclass_threshold is not None:
            duplicate = cosine > self.interclass_threshold
            duplicate[rows, cols] &= ~has_target
            cosine = cosine.masked_fill(duplicate, 0.0)
        cos_target = cosine[rows, cols]
        if self.straight_through:
            with torch.no_grad():
                shift = self.target_function(cos_target) - cos_target
            new_target = cos_target + shift
        else:
            new_target = self.target_function(cos_target)
        new_target = torch.where(has_target, new_target.to(cosine.dtype), cos_target)
        logits = cosine.index_put((rows, cols), new_target)
        return logits * self.scale


def build_margin(
    name: str,
    scale: float = 64.0,
    m: Optional[float] = None,
    combined: tuple[float, float, float] = (1.0, 0.3, 0.2),
    straight_through: bool = False,
    interclass_threshold: Optional[float] = None,
) -> CombinedMargin:
    """Margin by name: ``arcface`` (m default 0.5), ``cosface`` (m default 0.4) or ``combined``."""
    if name == "arcface":
        m1, m2, m3 = 1.0, 0.5 if m is None else m, 0.0
    elif name == "cosface":
        m1, m2, m3 = 1.0, 0.0, 0.4 if m is None else m
    elif name == "combined":
        m1, m2, m3 = combined
    else:
        raise ConfigError(f"--margin must be one of arcface, cosface, combined; got {name!r}")
    return CombinedMargin(scale, m1, m2, m3, straight_through, interclass_threshold)
