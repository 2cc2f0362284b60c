"""Text encoders that keep a 2-D feature map: VGG-style (default) and a small ResNet.

A stage is `(filters, num_convs, pool)`: `num_convs` 3x3 ConvBNAct layers (the ResNet
encoder: that many basic residual blocks) followed by max pooling with window = stride =
`pool` (height, width). The default turns a 32x100 crop into a 4x25 map.
"""

import keras
from keras import ops

from iseg.layers.conv_bn_act import ConvBNAct
from iseg.registry import Registry

DEFAULT_STAGES = ((32, 1, (2, 2)), (64, 1, (2, 2)), (96, 2, (2, 1)), (128, 1, (1, 1)))


def _stages(stages):
    return tuple((int(f), int(n), tuple(int(p) for p in pool)) for f, n, pool in stages)


class _Encoder(keras.layers.Layer):
    def __init__(self, stages=DEFAULT_STAGES, **kwargs):
        super().__init__(**kwargs)
        self.stages = _stages(stages)
        self.blocks = []
        for s, (filters, num, _) in enumerate(self.stages):
            self.blocks.append([self._block(filters, f"stage{s + 1}_{i + 1}")
                                for i in range(num)])

    @property
    def channels(self):
        return self.stages[-1][0]

    @property
    def stride(self):
        """(height, width) stride of the output map."""
        sh = sw = 1
        for _, _, (ph, pw) in self.stages:
            sh, sw = sh * ph, sw * pw
        return sh, sw

    def build(self, input_shape):
        shape = tuple(input_shape)
        for (filters, _, pool), blocks in zip(self.stages, self.blocks):
            for block in blocks:
                block.build(shape)
                shape = shape[:-1] + (filters,)
            shape = (shape[0],) + tuple(None if d is None else d // p
                                        for d, p in zip(shape[1:3], pool)) + (filters,)
        self.built = True

    def call(self, x, training=None):
        for (_, _, pool), blocks in zip(self.stages, self.blocks):
            for block in blocks:
                x = block(x, training=training)
            if pool != (1, 1):
                x = ops.max_pool(x, pool, strides=pool, padding="valid")
        return x

    def compute_output_shape(self, input_shape):
        sh, sw = self.stride
        h, w = input_shape[1:3]
        return (input_shape[0], None if h is None else h // sh,
                None if w is None else w // sw, self.channels)

    def get_config(self):
        config = super().get_config()
        config.update(stages=[[f, n, list(p)] for f, n, p in self.stages])
        return config


@keras.saving.register_keras_serializable(package="iseg")
class VGGEncoder(_Encoder):
    """Plain 3x3 ConvBNAct stacks with max pooling."""

    def _block(self, filters, name):
        return ConvBNAct(filters, 3, dtype=self.dtype_policy, name=name)


@keras.saving.register_keras_serializable(package="iseg")
class ResidualBlock(keras.layers.Layer):
    """Basic residual block: two 3x3 ConvBNAct, a 1x1 projection when channels change."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        dt = dict(dtype=self.dtype_policy)
        self.conv1 = ConvBNAct(filters, 3, name="conv1", **dt)
        self.conv2 = ConvBNAct(filters, 3, activation=None, name="conv2", **dt)
        self.project = None

    def build(self, input_shape):
        out = tuple(input_shape[:-1]) + (self.filters,)
        self.conv1.build(input_shape)
        self.conv2.build(out)
        if int(input_shape[-1]) != self.filters:
            self.project = ConvBNAct(self.filters, 1, activation=None, name="project",
                                     dtype=self.dtype_policy)
            self.project.build(input_shape)
        self.built = True

    def call(self, x, training=None):
        y = self.conv2(self.conv1(x, training=training), training=training)
        skip = x if self.project is None else self.project(x, training=training)
        return ops.relu(y + skip)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters)
        return config


@keras.saving.register_keras_serializable(package="iseg")
class ResNetEncoder(_Encoder):
    """Basic residual blocks with max pooling."""

    def _block(self, filters, name):
        return ResidualBlock(filters, dtype=self.dtype_policy, name=name)


ENCODERS = Registry("text encoder")
ENCODERS.register("vgg")(VGGEncoder)
ENCODERS.register("resnet")(ResNetEncoder)


def build_encoder(kind, **options):
    return ENCODERS.get(kind)(**options)
