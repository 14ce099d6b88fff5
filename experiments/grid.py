"""The experiment grid: which runs test which of the seed papers' claims.

Two datasets are rendered per seed from the same long-tailed identities: a clean one
(Partial FC vs full softmax, DCQ, long-tail behaviour) and a noisy one with 20 % split
identities and 10 % flipped labels (robustness, filtering, the analysis tools). The
identity count is chosen so that a 10 % Partial FC sample and a 10 % DCQ queue still
hold negatives beyond a batch's own positives, which the 600-identity demo set does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from core.data.synthetic import SyntheticConfig

SEEDS = (0, 1, 2)
INTERCLASS_THRESHOLD = 0.4
NOISY_SPLIT = 0.2
NOISY_FLIP = 0.1


@dataclass(frozen=True)
class GridScale:
    """How big the grid is: the full grid for the record, --quick for a smoke run."""

    name: str
    identities: int
    heldout_identities: int
    max_images: int
    zipf_exponent: float
    epochs: int
    batch_size: int
    val_pairs: int
    seeds: tuple[int, ...] = SEEDS

    def synthetic(self, flip_noise: float, split: float, seed: int) -> SyntheticConfig:
        return SyntheticConfig(identities=self.identities, heldout_identities=self.heldout_identities,
                               max_images=self.max_images, zipf_exponent=self.zipf_exponent,
                               val_pairs=self.val_pairs, flip_noise=flip_noise, split=split, seed=seed)


FULL = GridScale("full", identities=2000, heldout_identities=200, max_images=40, zipf_exponent=2.0, epochs=8,
                 batch_size=128, val_pairs=3000)
QUICK = GridScale("quick", identities=700, heldout_identities=120, max_images=30, zipf_exponent=2.0, epochs=2,
                  batch_size=64, val_pairs=1000)


@dataclass(frozen=True)
class Arm:
    """One training recipe of the grid (the same for every seed): a method and its options, checked by its spec."""

    label: str
    method: str
    options: dict[str, Any] = field(default_factory=dict, hash=False)
    interclass_threshold: Optional[float] = None

    def overrides(self) -> dict[str, Any]:
        return {"method": self.method, "interclass_threshold": self.interclass_threshold, **self.options}


SOFTMAX = Arm("softmax (PFC 1.0)", "pfc", {"sample_rate": 1.0})
PFC_03 = Arm("PFC 0.3", "pfc", {"sample_rate": 0.3})
PFC_01 = Arm("PFC 0.1", "pfc", {"sample_rate": 0.1})
DCQ = Arm("DCQ (queue 10 %)", "dcq", {"queue_size": 0.1})


def filtered(arm: Arm) -> Arm:
    return Arm(f"{arm.label} + filter {INTERCLASS_THRESHOLD}", arm.method, arm.options, INTERCLASS_THRESHOLD)


# dataset -> arms trained on it; the noisy set also gets the analysis tools.
DATASETS: dict[str, tuple[float, float]] = {"clean": (0.0, 0.0), "noisy": (NOISY_FLIP, NOISY_SPLIT)}
ARMS: dict[str, tuple[Arm, ...]] = {
    "clean": (SOFTMAX, PFC_01, DCQ),
    "noisy": (SOFTMAX, PFC_03, PFC_01, filtered(SOFTMAX), filtered(PFC_03), filtered(PFC_01), DCQ),
}
ANALYSED = {"noisy"}


@dataclass(frozen=True)
class Cell:
    """One training run of the grid: a dataset, an arm and a seed."""

    dataset: str
    arm: Arm
    seed: int

    @property
    def name(self) -> str:
        slug = self.arm.label.lower().replace(" + ", "-").replace(" %", "").replace("(", "").replace(")", "")
        return f"{self.dataset}-{slug.replace(' ', '-')}-seed{self.seed}"

    @property
    def analysed(self) -> bool:
        return self.dataset in ANALYSED

    def describe(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "arm": self.arm.label, "seed": self.seed, "method": self.arm.method,
                "options": dict(self.arm.options), "interclass_threshold": self.arm.interclass_threshold}


def grid_cells(scale: GridScale) -> list[Cell]:
    """Every cell, seed-major so that an interrupted grid already has whole seeds done."""
    return [Cell(dataset, arm, seed) for seed in scale.seeds for dataset, arms in ARMS.items() for arm in arms]
