"""Dynamic Class Queue as the rest of the project sees it: options, recipe, statistics (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass

from core.method_spec import MethodSpec, Range, Statistic, option


@dataclass
class DCQOptions:
    queue_size: float = option(
        0.1, "Queue entries, or a fraction of the classes if < 1 (0.1: 10 %, the paper's setting).",
        allowed=Range(0.0, None, low_inclusive=False), fixed_on_resume=True)
    dcq_momentum: float = option(0.999, "Momentum of the EMA (key) encoder.",
                                 allowed=Range(0.0, 1.0, high_inclusive=False))
    k_shot: int = option(1, "Other images per identity that generate its class weight (1: the official recipe).",
                         allowed=Range(1, 63), fixed_on_resume=True)  # each key flips by its own coin, 63 at most
    strict_k_shot: bool = option(False, "Fail when an identity has fewer than k + 1 images instead of repeating "
                                        "images.")
    identity_sampling: str = option("image", "Draw batch rows uniformly over images or over identities.",
                                    choices=("image", "category"), fixed_on_resume=True)


SPEC = MethodSpec(
    name="dcq",
    title="Dynamic Class Queue",
    summary="no stored class weights; a momentum encoder generates them and a queue holds the negatives.",
    options=DCQOptions,
    sampler="dcq.sampler:build_sampler",
    recipe={"margin": "cosface", "margin_m": 0.3, "scale": 50.0},  # the official DCQ recipe
    statistics=(
        Statistic("positive_updates", "steps in which the class was a positive (its weight generated)",
                  role="positive"),
        Statistic("queue_entries", "generated weights of the class enqueued"),
        Statistic("queue_steps", "steps the class's generated weights spent in the queue as negatives (evicted "
                                 "entries; never trained, so not passive updates)", role="negative"),
    ),
    evaluation_network="momentum encoder",
    peer_step="benchmarks.train_step:OfficialStyleDCQ",
    bench_options={"queue_size": 8192},
)
