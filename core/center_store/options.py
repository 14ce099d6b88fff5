"""The options every method built on the center store shares (torch-free, for method specs).

A center-based variant's options dataclass subclasses ``CenterStoreOptions``, so it
takes ``--sample-rate``, ``--center-dtype`` and ``--pfc-sampling`` with the same
meaning, defaults and checks as Partial FC.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.method_spec import Range, Statistic, option

#: The per-class counters every center store keeps (``CenterStore.class_statistics``), for a method's spec.
CENTER_STORE_STATISTICS = (
    Statistic("positive_updates", "steps in which the class was a positive", role="positive", updates_weights=True),
    Statistic("negative_updates", "steps in which the class's center was a sampled negative (a passive update)",
              role="negative", updates_weights=True),
)


@dataclass
class CenterStoreOptions:
    sample_rate: float = option(
        0.3, "Fraction of the classes in each step's softmax: every positive plus random negatives (1.0: full "
             "softmax). insightface uses 0.2-0.3 for large sets; at 0.1 the default set samples no negatives.",
        allowed=Range(0.0, 1.0, low_inclusive=False))
    center_dtype: str = option(
        "float32", "dtype of the center store and its optimizer state (bfloat16: half the memory, stochastic "
                   "rounding; for 20M+ classes on one GPU).",
        choices=("float32", "bfloat16"), fixed_on_resume=True)
    head_kernel: str = option(
        "auto", "The softmax head: triton reads the sampled centers in place and never stores a [B, K] block "
                "(fused gather, GEMM, margin, softmax and SGD update); torch is plain torch; auto is triton on CUDA.",
        choices=("auto", "torch", "triton"))
    pfc_sampling: str = option(
        "uniform", "Negatives: uniform (exactly uniform), or stratified (fixed shapes, no host sync per step).",
        choices=("uniform", "stratified"))
