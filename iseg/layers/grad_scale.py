"""Gradient scaling: forward identity, backward `scale * dy` (HFGD's stop-gradients)."""

import keras
from keras import ops


def scale_gradient(x, scale):
    """`x` in the forward pass; the gradient flowing back through it is multiplied by
    `scale` (0: stop-gradient, 1: identity).

    Written as `sg(x) + scale * (x - sg(x))`: the forward value is exactly `x` (the
    difference is exactly zero) and the derivative is `scale`, with keras.ops only, so it
    runs on every backend without a custom-gradient primitive.
    """
    scale = float(scale)
    if scale == 1.0:
        return x
    frozen = ops.stop_gradient(x)
    if scale == 0.0:
        return frozen
    return frozen + ops.cast(scale, x.dtype) * (x - frozen)


@keras.saving.register_keras_serializable(package="iseg")
class GradientScale(keras.layers.Layer):
    """Layer form of `scale_gradient` (no weights). `scale=0` (default) is stop-gradient."""

    def __init__(self, scale=0.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)

    def call(self, x):
        return scale_gradient(x, self.scale)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(scale=self.scale)
        return config
