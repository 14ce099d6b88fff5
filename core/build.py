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


def build_sampler(config: TrainConfig, num_classes: int, backbone: nn.Module, device: torch.device,
                  context: DistributedContext) -> ClassSampler:
    if config.method not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}; got {config.method!r}")
    module_name, function_name = METHODS[config.method].split(":")
    factory = getattr(importlib.import_module(module_name), function_name)
    return factory(config, num_classes, backbone, device, context)
