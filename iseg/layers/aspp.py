"""Atrous spatial pyramid pooling (DeepLabV3 / V3+) and the depthwise-separable ConvBNAct.

ASPP runs parallel branches on one feature map and concatenates them:
an image-level branch (global average pool -> 1x1 ConvBNAct -> broadcast), a 1x1 ConvBNAct
branch and one 3x3 atrous ConvBNAct per rate (METHODS.md 2(b), 8). With `separable=True`
each atrous branch is depthwise-separable (dilated depthwise 3x3 + BN + ReLU, then pointwise
1x1 + BN + ReLU), as in mmseg's DepthwiseSeparableASPPHead. An optional projection
ConvBNAct fuses the concatenation (mmseg: 3x3, 512; TF DeepLab: 1x1, 256); without it the
layer returns the concatenation itself (the CAR TF code's DeepLabV3, 5 x 256 = 1280 ch).

`LowLevelFusion` is the DeepLabV3+ decoder step shared by the DeepLabV3+ and KSAC heads.
"""

import keras
from keras import ops

from iseg.layers.conv_bn_act import ConvBlock, ConvBNAct, ImageLevel
from iseg.ops import resize, spatial_shape


@keras.saving.register_keras_serializable(package="iseg")
class SeparableConvBNAct(ConvBlock):
    """Depthwise ConvBNAct(k x k, dilation) -> pointwise ConvBNAct(filters, 1x1)."""

    def __init__(
        self,
        filters,
        kernel_size=3,
        dilation_rate=1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.dilation_rate = dilation_rate
        norm = self.conv_options
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
        )
        return config


@keras.saving.register_keras_serializable(package="iseg")
class ASPP(ConvBlock):
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
        if not (image_pooling or pixel_level or self.rates):
            raise ValueError("ASPP needs at least one branch (image_pooling, pixel_level, rates)")
        norm = self.conv_options
        self.image_branch = (ImageLevel(filters, name="image_pooling", **norm)
                             if image_pooling else None)
        self.pixel_branch = ConvBNAct(filters, 1, name="conv_1x1", **norm) if pixel_level else None
        self.atrous_branches = []
        for rate in self.rates:
            if separable:
                branch = SeparableConvBNAct(filters, 3, dilation_rate=rate,
                                            name=f"sep_rate_{rate}", **norm)
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
        )
        return config


@keras.saving.register_keras_serializable(package="iseg")
class LowLevelFusion(ConvBlock):
    """The DeepLabV3+ decoder step: `layer([x, low])` projects the low-level feature with
    ConvBNAct(low_level_filters, 1x1), upsamples `x` to its size (bilinear,
    `align_corners`), concatenates `[x, low]` and fuses them with `num_convs` 3x3
    ConvBNAct(filters) (depthwise-separable with `separable=True`)."""

    def __init__(
        self,
        filters,
        low_level_filters=48,
        separable=False,
        align_corners=True,
        num_convs=1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = filters
        self.low_level_filters = low_level_filters
        self.separable = separable
        self.num_convs = int(num_convs)
        self.align_corners = align_corners
        norm = self.conv_options
        self.low_level_conv = ConvBNAct(low_level_filters, 1, name="low_level_conv", **norm)
        conv = SeparableConvBNAct if separable else ConvBNAct
        self.decoder_convs = [
            conv(filters, 3, name=f"decoder_conv{i}", **norm) for i in range(self.num_convs)
        ]

    def build(self, input_shape):
        x_shape, low_shape = (tuple(s) for s in input_shape)
        self.low_level_conv.build(low_shape)
        channels = x_shape[-1] + self.low_level_filters
        for conv in self.decoder_convs:
            conv.build(low_shape[:-1] + (channels,))
            channels = self.filters
        self.built = True

    def call(self, inputs, training=None):
        x, low = inputs
        low = self.low_level_conv(low, training=training)
        x = resize(x, spatial_shape(low), "bilinear", self.align_corners)
        y = ops.concatenate([x, low], axis=-1)
        for conv in self.decoder_convs:
            y = conv(y, training=training)
        return y

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[1][:-1]) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            low_level_filters=self.low_level_filters,
            separable=self.separable,
            align_corners=self.align_corners,
            num_convs=self.num_convs,
        )
        return config
