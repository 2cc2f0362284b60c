"""DANet dual attention: position attention (PAM) and channel attention (CAM).

- `PositionAttention`: self-attention over all H*W positions with q, k = Conv1x1(C/8, bias)
  (64 in the CAR TF code at C=512: the same), v = Conv1x1(C, bias), no scaling, and a
  learned scalar `gamma` (initialised to 0): `x + gamma * A v`.
- `ChannelAttention`: with `X` the [H*W, C] flattened input, energy `E = X^T X` (C x C),
  `A = softmax_row(max_row(E) - E)`, output `x + gamma * out`, gamma initialised to 0.
  `transposed=False` (original DANet and mmseg): `out[p, i] = sum_j A[i, j] X[p, j]`.
  `transposed=True` (the CAR TF code): `out[p, j] = sum_i X[p, i] A[i, j]`, i.e. `X A`.
  Computed in float32.
"""

import keras
from keras import ops

from iseg.layers.self_attention import SelfAttention, flatten_hw, unflatten_hw
from iseg.ops import spatial_shape


@keras.saving.register_keras_serializable(package="iseg")
class PositionAttention(SelfAttention):
    """DANet position attention module (PAM); see the module docstring."""

    def __init__(
        self,
        key_filters=None,
        value_filters=None,
        shared_init=False,
        scale=False,
        residual=True,
        **kwargs,
    ):
        super().__init__(
            key_filters=key_filters,
            value_filters=value_filters,
            shared_init=shared_init,
            scale=scale,
            residual=residual,
            **kwargs,
        )

    def build(self, input_shape):
        super().build(input_shape)
        self.gamma = self.add_weight(name="gamma", shape=(), initializer="zeros")

    def call(self, x):
        y = self.gamma * self.attend(x)
        return x + y if self.residual else y


@keras.saving.register_keras_serializable(package="iseg")
class ChannelAttention(keras.layers.Layer):
    """DANet channel attention module (CAM); see the module docstring."""

    def __init__(self, transposed=False, **kwargs):
        super().__init__(**kwargs)
        self.transposed = transposed

    def build(self, input_shape):
        self.gamma = self.add_weight(name="gamma", shape=(), initializer="zeros")
        self.built = True

    def call(self, x):
        size = spatial_shape(x)
        flat = ops.cast(flatten_hw(x), "float32")  # [N, P, C]
        energy = ops.einsum("npi,npj->nij", flat, flat)
        energy = ops.max(energy, axis=-1, keepdims=True) - energy
        attention = ops.softmax(energy, axis=-1)
        if self.transposed:
            out = ops.einsum("npi,nij->npj", flat, attention)
        else:
            out = ops.einsum("nij,npj->npi", attention, flat)
        out = ops.cast(unflatten_hw(out, size), x.dtype)
        return x + ops.cast(self.gamma, x.dtype) * out

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(transposed=self.transposed)
        return config
