"""TF-side training engine: strategies, optimizers, schedules, checkpoints, the loop.

    from iseg.training import TrainConfig, train
    result = train(TrainConfig(model="demo_tiny", dataset="shapes", data_dir="data/shapes",
                               model_dir="runs/x", batch_size=16, steps=600, crop_size=(96, 96)))
"""

from iseg.training.config import DatasetMeta, TrainConfig
from iseg.training.errors import (
    CheckpointMismatchError,
    ConfigError,
    EmptyDatasetError,
    TrainingDivergedError,
)
from iseg.training.optimizers import build_optimizer
from iseg.training.schedules import WarmupDecay
from iseg.training.strategy import create_strategy
from iseg.training.trainer import train
