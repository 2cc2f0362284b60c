"""Global self-attention over all H*W positions: the CAR-paper variant and Non-local.

`SelfAttention` is the attention of the CAR TF code's "nl" head (METHODS.md 2(b)):
q, k = Conv1x1(key_filters, bias) with IDENTICAL initial weights, v = Conv1x1(value_filters,
bias), `softmax(q k^T)` over all keys with no scaling, output `A v`. The residual add is done
by the caller (the head computes `x + SA(x)`), or by the layer with `residual=True`.

`NonLocal2d` is the embedded-Gaussian non-local block of mmseg's NLHead (METHODS.md 8):
theta, phi, g = Conv1x1(C / reduction, bias), `softmax(theta phi^T / sqrt(C'))`, output
Conv1x1(C, no bias) + BN with gamma and beta initialised to zero, residual add (so the block
starts as the identity).

Attention logits and softmax are computed in float32 (mixed-precision safe).
"""

import keras
import numpy as np
from keras import ops

from iseg.layers.conv_bn_act import BatchNormalization
from iseg.ops import spatial_shape


def flatten_hw(x):
    """[N, H, W, C] -> [N, H*W, C]."""
    h, w = spatial_shape(x)
    return ops.reshape(x, (-1, h * w, x.shape[-1]))


def unflatten_hw(x, size):
    """[N, H*W, C] -> [N, H, W, C] for `size` = (H, W)."""
    h, w = size
    return ops.reshape(x, (-1, h, w, x.shape[-1]))


def dot_product_attention(query, key, value, scale=False):
    """`softmax(q k^T [/ sqrt(d)]) v` with q [N,P,d], k [N,Q,d], v [N,Q,c] -> [N,P,c]."""
    dtype = value.dtype
    logits = ops.einsum("npc,nqc->npq", ops.cast(query, "float32"), ops.cast(key, "float32"))
    if scale:
        logits = logits / ops.sqrt(ops.cast(query.shape[-1], "float32"))
    attention = ops.softmax(logits, axis=-1)
    return ops.cast(ops.einsum("npq,nqc->npc", attention, ops.cast(value, "float32")), dtype)


@keras.saving.register_keras_serializable(package="iseg")
class SharedGlorotUniform(keras.initializers.Initializer):
    """Glorot-uniform values drawn once (NumPy's global generator, which
    `keras.utils.set_random_seed` seeds) and returned to every later call, so all the
    variables it initialises start identical. Works where Keras defers variable creation
    (symbolic builds), where copying values with `assign` would be lost."""

    def __init__(self):
        self._value = None

    def __call__(self, shape, dtype=None):
        shape = tuple(int(d) for d in shape)
        if self._value is None:
            receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
            fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            self._value = np.random.uniform(-limit, limit, shape).astype("float32")
        elif self._value.shape != shape:
            raise ValueError(
                f"SharedGlorotUniform: shape {shape} differs from the first call's "
                f"{self._value.shape}"
            )
        return ops.convert_to_tensor(self._value, dtype=dtype)

    def get_config(self):
        return {}


@keras.saving.register_keras_serializable(package="iseg")
class SelfAttention(keras.layers.Layer):
    """CAR-paper self-attention (also the core of DANet's position attention).

    Args:
        key_filters: channels of q and k (64 in the CAR code); None means input // 8.
        value_filters: channels of v; None means the input channels (so `x + SA(x)` works).
        shared_init: q and k start from identical kernels and biases (CAR code:
            `shared_querykey_weights=True`); they are trained independently afterwards.
        scale: divide the logits by sqrt(key_filters) (off in the CAR code).
        residual: return `x + A v` instead of `A v` (needs value_filters == input channels).
    """

    def __init__(
        self,
        key_filters=64,
        value_filters=None,
        shared_init=True,
        scale=False,
        residual=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.key_filters = key_filters
        self.value_filters = value_filters
        self.shared_init = shared_init
        self.scale = scale
        self.residual = residual

    def build(self, input_shape):
        channels = int(input_shape[-1])
        value_filters = self.value_filters or channels
        if self.residual and value_filters != channels:
            raise ValueError(
                f"{self.name}: residual=True needs value_filters ({value_filters}) equal to "
                f"the input channels ({channels})"
            )
        conv = dict(kernel_size=1, use_bias=True, dtype=self.dtype_policy)
        key_filters = self.key_filters or max(channels // 8, 1)
        qk_init = SharedGlorotUniform() if self.shared_init else "glorot_uniform"
        self.query_conv = keras.layers.Conv2D(
            key_filters, kernel_initializer=qk_init, name="query_conv", **conv
        )
        self.key_conv = keras.layers.Conv2D(
            key_filters, kernel_initializer=qk_init, name="key_conv", **conv
        )
        self.value_conv = keras.layers.Conv2D(value_filters, name="value_conv", **conv)
        for layer in (self.query_conv, self.key_conv, self.value_conv):
            layer.build(input_shape)
        self.built = True

    def attend(self, x):
        """`A v` as [N, H, W, value_filters] (no residual)."""
        size = spatial_shape(x)
        q = flatten_hw(self.query_conv(x))
        k = flatten_hw(self.key_conv(x))
        v = flatten_hw(self.value_conv(x))
        return unflatten_hw(dot_product_attention(q, k, v, scale=self.scale), size)

    def call(self, x):
        y = self.attend(x)
        return x + y if self.residual else y

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.value_filters or input_shape[-1],)

    def get_config(self):
        config = super().get_config()
        config.update(
            key_filters=self.key_filters,
            value_filters=self.value_filters,
            shared_init=self.shared_init,
            scale=self.scale,
            residual=self.residual,
        )
        return config


@keras.saving.register_keras_serializable(package="iseg")
class NonLocal2d(keras.layers.Layer):
    """Embedded-Gaussian non-local block with a zero-initialised output BN (identity at start).

    Args:
        reduction: inter channels = input channels // reduction (mmseg NLHead: 2).
        inter_channels: overrides `reduction` when given.
        use_scale: divide the logits by sqrt(inter channels) (mmseg: True).
    """

    def __init__(
        self,
        reduction=2,
        inter_channels=None,
        use_scale=True,
        bn_momentum=0.9,
        bn_epsilon=1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.reduction = reduction
        self.inter_channels = inter_channels
        self.use_scale = use_scale
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon

    def build(self, input_shape):
        channels = int(input_shape[-1])
        inter = self.inter_channels or max(channels // self.reduction, 1)
        init = keras.initializers.RandomNormal(stddev=0.01)
        conv = dict(kernel_size=1, use_bias=True, kernel_initializer=init, dtype=self.dtype_policy)
        # theta / phi / g of the paper.
        self.query_conv = keras.layers.Conv2D(inter, name="query_conv", **conv)
        self.key_conv = keras.layers.Conv2D(inter, name="key_conv", **conv)
        self.value_conv = keras.layers.Conv2D(inter, name="value_conv", **conv)
        self.out_conv = keras.layers.Conv2D(
            channels, 1, use_bias=False, kernel_initializer=init, dtype=self.dtype_policy,
            name="out_conv",
        )
        self.out_bn = BatchNormalization(
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            gamma_initializer="zeros",
            beta_initializer="zeros",
            dtype=self.dtype_policy,
            name="out_bn",
        )
        for layer in (self.query_conv, self.key_conv, self.value_conv):
            layer.build(input_shape)
        self.out_conv.build(tuple(input_shape[:-1]) + (inter,))
        self.out_bn.build(input_shape)
        self.built = True

    def call(self, x, training=None):
        size = spatial_shape(x)
        q = flatten_hw(self.query_conv(x))
        k = flatten_hw(self.key_conv(x))
        v = flatten_hw(self.value_conv(x))
        y = unflatten_hw(dot_product_attention(q, k, v, scale=self.use_scale), size)
        return x + self.out_bn(self.out_conv(y), training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            reduction=self.reduction,
            inter_channels=self.inter_channels,
            use_scale=self.use_scale,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
        )
        return config
