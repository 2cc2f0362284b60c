"""Small pieces shared by the backbones: stochastic depth, padding and shape helpers."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="iseg")
class DropPath(keras.layers.Layer):
    """Stochastic depth: drops the whole residual branch per sample with probability `rate`.

    Kept samples are scaled by `1 / (1 - rate)`; identity at inference. No variables are
    created when `rate == 0`, so parameter counts do not depend on this layer.
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop path rate must be in [0, 1), got {rate}")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if self.rate > 0 else None

    def call(self, x, training=None):
        if not training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        noise = keras.random.uniform(shape, seed=self.seed_generator, dtype=x.dtype)
        mask = ops.floor(keep + noise)
        return x * mask / keep

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(rate=self.rate, seed=self.seed)
        return config


def pad_hw(x, top, bottom, left, right, value=0.0):
    """Constant-pad the spatial axes of an NHWC tensor."""
    return ops.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]], constant_values=value)


def out_size(size, stride, ceil=True):
    """Spatial size after a stride (None stays None)."""
    if size is None:
        return None
    return -(-size // stride) if ceil else size // stride


def linear_drop_rates(rate, depths):
    """Stochastic depth rates rising linearly from 0 to `rate` over all blocks."""
    total = sum(depths)
    if total <= 1:
        return [0.0] * total
    return [rate * i / (total - 1) for i in range(total)]
