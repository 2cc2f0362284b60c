"""Conv -> BatchNorm -> activation, and the image-level (global pooling) branch."""

import keras
from keras import ops

from iseg.ops import atrous_conv, spatial_shape
from iseg.tf_kernels import fused_batch_norm_training


@keras.saving.register_keras_serializable(package="iseg")
class Conv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` whose stride-1 'same' convolution with an odd-sized kernel
    runs as `iseg.ops.atrous_conv` (same weights, same result up to float32 rounding,
    faster on TensorFlow's CPU kernels: dilated, and without oneDNN also plain). Other
    configurations run as in Keras's Conv2D. It keeps the class name because Keras weight
    files address a layer's variables by its class name, so weight files and checkpoints
    of either class load into the other."""

    def convolution_op(self, inputs, kernel):
        rate = self.dilation_rate[0]
        if (self.dilation_rate[1] == rate and self.strides == (1, 1)
                and self.padding == "same" and self.groups == 1
                and self.data_format == "channels_last"
                and all(k % 2 for k in self.kernel_size)):
            return atrous_conv(inputs, kernel, rate)
        return super().convolution_op(inputs, kernel)


@keras.saving.register_keras_serializable(package="iseg")
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` whose training-mode call on the TensorFlow backend
    runs TensorFlow's fused kernel (one `FusedBatchNormV3` op forward and one backward,
    instead of Keras's separate moments, normalisation and gradient ops) for a 4-D
    channels-last input without a mask, renorm or synchronised statistics. Output,
    gradients and moving statistics are Keras's up to float32 rounding; every other case,
    and the other backends, run Keras's code. It keeps the class name, so weight files of
    either class load into the other (see `Conv2D`)."""

    def call(self, inputs, training=None, mask=None):
        if (training and self.trainable and mask is None and not self.renorm
                and not self.synchronized and len(inputs.shape) == 4
                and self.axis in (-1, 3) and keras.backend.backend() == "tensorflow"):
            return self._fused_training_call(inputs)
        return super().call(inputs, training=training, mask=mask)

    def _fused_training_call(self, inputs):
        x = ops.cast(inputs, "float32")  # statistics in float32, as Keras computes them
        channels = x.shape[-1:]
        gamma = ops.cast(self.gamma, x.dtype) if self.scale else ops.ones(channels, x.dtype)
        beta = ops.cast(self.beta, x.dtype) if self.center else ops.zeros(channels, x.dtype)
        y, mean, variance = fused_batch_norm_training(x, gamma, beta, self.epsilon)
        for moving, value in ((self.moving_mean, mean), (self.moving_variance, variance)):
            moving.assign(moving * self.momentum
                          + ops.cast(value, moving.dtype) * (1.0 - self.momentum))
        return ops.cast(y, self.compute_dtype)


@keras.saving.register_keras_serializable(package="iseg")
class ConvBNAct(keras.layers.Layer):
    """`Conv2D` (no bias by default) -> `BatchNormalization` -> activation.

    With `depthwise=True` the conv is a `DepthwiseConv2D` (filters ignored, channels kept).
    `activation=None` gives Conv+BN; `use_bn=False` gives Conv+activation (then a bias is
    usually wanted: pass `use_bias=True`).
    """

    def __init__(
        self,
        filters,
        kernel_size=1,
        strides=1,
        dilation_rate=1,
        activation="relu",
        use_bias=False,
        use_bn=True,
        depthwise=False,
        bn_momentum=0.9,
        bn_epsilon=1e-5,
        kernel_initializer="he_normal",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.dilation_rate = dilation_rate
        self.activation = activation
        self.use_bias = use_bias
        self.use_bn = use_bn
        self.depthwise = depthwise
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.kernel_initializer = kernel_initializer
        common = dict(
            kernel_size=kernel_size,
            strides=strides,
            dilation_rate=dilation_rate,
            padding="same",
            use_bias=use_bias,
            dtype=self.dtype_policy,
            name="conv",
        )
        if depthwise:
            self.conv = keras.layers.DepthwiseConv2D(
                depthwise_initializer=kernel_initializer, **common
            )
        else:
            self.conv = Conv2D(filters, kernel_initializer=kernel_initializer, **common)
        self.bn = (
            BatchNormalization(
                momentum=bn_momentum, epsilon=bn_epsilon, dtype=self.dtype_policy, name="bn"
            )
            if use_bn
            else None
        )
        self.act = keras.activations.get(activation) if activation else None

    def build(self, input_shape):
        self.conv.build(input_shape)
        out_shape = self.conv.compute_output_shape(input_shape)
        if self.bn is not None:
            self.bn.build(out_shape)
        self.built = True

    def call(self, x, training=None):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x, training=training)
        if self.act is not None:
            x = self.act(x)
        return x

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            dilation_rate=self.dilation_rate,
            activation=self.activation,
            use_bias=self.use_bias,
            use_bn=self.use_bn,
            depthwise=self.depthwise,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            kernel_initializer=self.kernel_initializer,
        )
        return config


class ConvBlock(keras.layers.Layer):
    """Base of the layers built from ConvBNActs: keeps the BN momentum / epsilon and the
    conv kernel initializer they forward to every ConvBNAct (`conv_options`) and returns
    them in `get_config`."""

    def __init__(self, bn_momentum=0.9, bn_epsilon=1e-5, kernel_initializer="he_normal",
                 **kwargs):
        super().__init__(**kwargs)
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.kernel_initializer = kernel_initializer

    @property
    def conv_options(self):
        """Keyword options of `ConvBNAct` (and `ConvBlock`s) built inside this layer."""
        return dict(bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                    kernel_initializer=self.kernel_initializer, dtype=self.dtype_policy)

    def get_config(self):
        config = super().get_config()
        config.update(bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                      kernel_initializer=self.kernel_initializer)
        return config


@keras.saving.register_keras_serializable(package="iseg")
class ImageLevel(ConvBlock):
    """Global average pool -> ConvBNAct(filters, 1x1) -> broadcast back to H x W."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.conv = ConvBNAct(filters, 1, name="conv", **self.conv_options)

    def build(self, input_shape):
        self.conv.build((input_shape[0], 1, 1, input_shape[-1]))
        self.built = True

    def call(self, x, training=None):
        h, w = spatial_shape(x)
        pooled = ops.mean(x, axis=(1, 2), keepdims=True)
        y = self.conv(pooled, training=training)
        return y * ops.ones((1, h, w, 1), dtype=y.dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters)
        return config
