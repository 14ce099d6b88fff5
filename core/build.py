"""Builds a method's ClassSampler from the config by name.

This registry is the only place that names the methods, so that the trainer stays
ignorant of them; each method module is imported only when it is used.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from core.config import TrainConfig
from core.distributed import DistributedContext
from core.errors import ConfigError
from core.sampler import ClassSampler

METHODS = {
    "pfc": "partial_fc.sampler:sampler_from_config",
    "dcq": "dcq.sampler:sampler_from_config",
}


# Each method's recipe defaults, applied where the user left an option unset (None).
METHOD_DEFAULTS = {
    "pfc": {"margin": "arcface", "scale": 64.0},
    "dcq": {"margin": "cosface", "margin_m": 0.3, "scale": 50.0},  # the official DCQ recipe
}


def resolve_method_defaults(config: TrainConfig) -> TrainConfig:
    """Fill unset margin options from the method's recipe."""
    if config.method not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}; got {config.method!r}")
    defaults = METHOD_DEFAULTS[config.method]
    if config.margin is not None and config.margin != defaults["margin"]:
        defaults = {k: v for k, v in defaults.items() if k == "scale"}
    return config.replace(**{k: v for k, v in defaults.items() if getattr(config, k) is None})


def build_sampler(config: TrainConfig, num_classes: int, backbone: nn.Module, device: torch.device,
                  context: DistributedContext, num_images: int) -> ClassSampler:
    if config.method not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}; got {config.method!r}")
    module_name, function_name = METHODS[config.method].split(":")
    factory = getattr(importlib.import_module(module_name), function_name)
    return factory(config, num_classes, backbone, device, context, num_images)
