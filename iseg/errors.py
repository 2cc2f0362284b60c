"""Errors raised for bad input (settings, checkpoints, data, a diverging loss); the
command lines print them as one line."""


class ConfigError(ValueError):
    """Inconsistent or invalid settings (flags, names, batch size vs replicas...)."""


class CheckpointMismatchError(ValueError):
    """A checkpoint whose variables do not match the model."""


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or Inf."""


class EmptyDatasetError(ValueError):
    """A split that yields no examples."""


class ModelDirInUseError(RuntimeError):
    """Another training run holds the model_dir's lock."""


class CheckpointUnreadableError(ValueError):
    """A checkpoint whose files are truncated or damaged."""


class DataError(ValueError):
    """A damaged TFRecord shard or an invalid record in it."""
