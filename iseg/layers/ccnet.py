"""CCNet criss-cross attention.

Each pixel (h, w) attends to the H + W - 1 positions of its column and row: energies
`q(h,w) . k(g,w)` for every g != h (the column, self excluded) and `q(h,w) . k(h,v)` for
every v (the row, self included), so the self position is counted once. One softmax over
all of them, output `sum_g A_col v(g,w) + sum_v A_row v(h,v)`, and `x + gamma * out` with a
scalar gamma initialised to 0. q, k = Conv1x1(C / reduction, bias), v = Conv1x1(C, bias).
Recurrence (applying the same layer twice) is done by the caller. Computed in float32.
"""

import keras
from keras import ops

from iseg.ops import spatial_shape


@keras.saving.register_keras_serializable(package="iseg")
class CrissCrossAttention(keras.layers.Layer):
    def __init__(self, reduction=8, key_filters=None, **kwargs):
        super().__init__(**kwargs)
        self.reduction = reduction
        self.key_filters = key_filters

    def build(self, input_shape):
        channels = int(input_shape[-1])
        key_filters = self.key_filters or max(channels // self.reduction, 1)
        conv = dict(kernel_size=1, use_bias=True, dtype=self.dtype_policy)
        self.query_conv = keras.layers.Conv2D(key_filters, name="query_conv", **conv)
        self.key_conv = keras.layers.Conv2D(key_filters, name="key_conv", **conv)
        self.value_conv = keras.layers.Conv2D(channels, name="value_conv", **conv)
        for layer in (self.query_conv, self.key_conv, self.value_conv):
            layer.build(input_shape)
        self.gamma = self.add_weight(name="gamma", shape=(), initializer="zeros")
        self.built = True

    def call(self, x):
        h, _ = spatial_shape(x)
        q = ops.cast(self.query_conv(x), "float32")
        k = ops.cast(self.key_conv(x), "float32")
        v = ops.cast(self.value_conv(x), "float32")
        col = ops.einsum("nhwc,ngwc->nhwg", q, k)  # [N, H, W, H]
        row = ops.einsum("nhwc,nhvc->nhwv", q, k)  # [N, H, W, W]
        self_mask = ops.reshape(ops.cast(ops.eye(h), "bool"), (1, h, 1, h))
        col = ops.where(self_mask, float("-inf"), col)
        peak = ops.maximum(
            ops.max(col, axis=-1, keepdims=True), ops.max(row, axis=-1, keepdims=True)
        )
        col = ops.exp(col - peak)
        row = ops.exp(row - peak)
        total = ops.sum(col, axis=-1, keepdims=True) + ops.sum(row, axis=-1, keepdims=True)
        out = ops.einsum("nhwg,ngwc->nhwc", col / total, v) + ops.einsum(
            "nhwv,nhvc->nhwc", row / total, v
        )
        return x + ops.cast(self.gamma, x.dtype) * ops.cast(out, x.dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(reduction=self.reduction, key_filters=self.key_filters)
        return config
