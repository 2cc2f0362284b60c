"""Atrous spatial pyramid pooling (DeepLabV3 / V3+) and the depthwise-separable ConvBNAct.

ASPP runs parallel branches on one feature map and concatenates them:
an image-level branch (global average pool -> 1x1 ConvBNAct -> broadcast), a 1x1 ConvBNAct
branch and one 3x3 atrous ConvBNAct per rate (METHODS.md 2(b), 8). With `separable=True`
each atrous branch is depthwise-separable (dilated depthwise 3x3 + BN + ReLU, then pointwise
1x1 + BN + ReLU), as in mmseg's DepthwiseSeparableASPPHead. An optional projection
ConvBNAct fuses the concatenation (mmseg: 3x3, 512; TF DeepLab: 1x1, 256); without it the
layer returns the concatenation itself (the CAR TF code's DeepLabV3, 5 x 256 = 1280 ch).
"""

import keras
from keras import ops

from iseg.layers.conv_bn_act import ConvBNAct, ImageLevel


@keras.saving.register_keras_serializable(package="iseg")
class SeparableConvBNAct(keras.layers.Layer):
    """Depthwise ConvBNAct(k x k, dilation) -> pointwise ConvBNAct(filters, 1x1)."""

    def __init__(
        self,
        filters,
        kernel_size=3,
        dilation_rate=1,
        bn_momentum=0.9,
        bn_epsilon=1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.dilation_rate = dilation_rate
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        norm = dict(bn_momentum=bn_momentum, bn_epsilon=bn_epsilon, dtype=self.dtype_policy)
        self.depthwise = ConvBNAct(
            None, kernel_size, dilation_rate=dilation_rate, depthwise=True,
            name="depthwise", **norm,
        )
        self.pointwise = ConvBNAct(filters, 1, name="pointwise", **norm)

    def build(self, input_shape):
        self.depthwise.build(input_shape)
        self.pointwise.build(input_shape)
        self.built = True

    def call(self, x, training=None):
        return self.pointwise(self.depthwise(x, training=training), training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            dilation_rate=self.dilation_rate,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
        )
        return config


@keras.saving.register_keras_serializable(package="iseg")
class ASPP(keras.layers.Layer):
    """Atrous spatial pyramid pooling.

    Branch order in the concatenation: [image pooling, 1x1, atrous rates...].

    Args:
        filters: channels of every branch.
        rates: dilation rates of the 3x3 atrous branches (OS8: 12, 24, 36; OS16: 6, 12, 18).
        image_pooling: include the image-level branch.
        pixel_level: include the 1x1 branch.
        separable: depthwise-separable atrous branches (DeepLabV3+ / mmseg).
        projection_filters: if set, a ConvBNAct(projection_filters, projection_kernel_size)
            fuses the concatenation; if None the concatenation is returned.
        projection_kernel_size: 1 (TF DeepLab) or 3 (mmseg "bottleneck").
    """

    def __init__(
        self,
        filters=256,
        rates=(12, 24, 36),
        image_pooling=True,
        pixel_level=True,
        separable=False,
        projection_filters=None,
        projection_kernel_size=1,
        bn_momentum=0.9,
        bn_epsilon=1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = filters
        self.rates = tuple(int(r) for r in rates)
        self.image_pooling = image_pooling
        self.pixel_level = pixel_level
        self.separable = separable
        self.projection_filters = projection_filters
        self.projection_kernel_size = projection_kernel_size
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        if not (image_pooling or pixel_level or self.rates):
            raise ValueError("ASPP needs at least one branch (image_pooling, pixel_level, rates)")
        norm = dict(bn_momentum=bn_momentum, bn_epsilon=bn_epsilon, dtype=self.dtype_policy)
        self.image_branch = ImageLevel(filters, name="image_pooling", **norm) if image_pooling else None
        self.pixel_branch = ConvBNAct(filters, 1, name="conv_1x1", **norm) if pixel_level else None
        self.atrous_branches = []
        for rate in self.rates:
            if separable:
                branch = SeparableConvBNAct(filters, 3, dilation_rate=rate, name=f"sep_rate_{rate}", **norm)
            else:
                branch = ConvBNAct(filters, 3, dilation_rate=rate, name=f"conv_rate_{rate}", **norm)
            self.atrous_branches.append(branch)
        self.projection = (
            ConvBNAct(projection_filters, projection_kernel_size, name="projection", **norm)
            if projection_filters
            else None
        )

    @property
    def num_branches(self):
        return int(self.image_pooling) + int(self.pixel_level) + len(self.rates)

    def build(self, input_shape):
        for branch in self._branches():
            branch.build(input_shape)
        if self.projection is not None:
            self.projection.build(tuple(input_shape[:-1]) + (self.filters * self.num_branches,))
        self.built = True

    def _branches(self):
        return [b for b in (self.image_branch, self.pixel_branch) if b is not None] + list(
            self.atrous_branches
        )

    def call(self, x, training=None):
        outs = [branch(x, training=training) for branch in self._branches()]
        y = ops.concatenate(outs, axis=-1) if len(outs) > 1 else outs[0]
        if self.projection is not None:
            y = self.projection(y, training=training)
        return y

    def compute_output_shape(self, input_shape):
        channels = self.projection_filters or self.filters * self.num_branches
        return tuple(input_shape[:-1]) + (channels,)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            rates=list(self.rates),
            image_pooling=self.image_pooling,
            pixel_level=self.pixel_level,
            separable=self.separable,
            projection_filters=self.projection_filters,
            projection_kernel_size=self.projection_kernel_size,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
        )
        return config
