"""TF-side training engine: strategies, optimizers, schedules, checkpoints, the loop.

    from iseg.training import TrainConfig, train
    result = train(TrainConfig(model="demo_tiny", dataset="shapes", data_dir="data/shapes",
                               model_dir="runs/x", batch_size=16, steps=600, crop_size=(96, 96)))

The names below are imported on first use, so that `iseg.training.config` (read to define
the command-line flags) loads without TensorFlow.
"""

import importlib

from iseg.errors import (
    CheckpointMismatchError,
    ConfigError,
    EmptyDatasetError,
    TrainingDivergedError,
)

_LAZY = {
    "DatasetMeta": "iseg.training.config",
    "TrainConfig": "iseg.training.config",
    "build_optimizer": "iseg.training.optimizers",
    "WarmupDecay": "iseg.training.schedules",
    "create_strategy": "iseg.training.strategy",
    "train": "iseg.training.trainer",
}

__all__ = ["CheckpointMismatchError", "ConfigError", "EmptyDatasetError",
           "TrainingDivergedError", *_LAZY]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
