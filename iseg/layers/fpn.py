"""Feature pyramid network: lateral 1x1 convs, top-down upsample-and-add, 3x3 output convs."""

import keras

from iseg.layers.conv_bn_act import ConvBNAct
from iseg.ops import resize, spatial_shape


@keras.saving.register_keras_serializable(package="iseg")
class FPN(keras.layers.Layer):
    """Called on a list of feature maps ordered fine to coarse (e.g. [c2, c3, c4, c5]);
    returns the list of merged maps in the same order, each with `filters` channels.

    For every level: `lateral_i = ConvBNAct(filters, 1x1)(x_i)`; top-down, for i from the
    second-coarsest to the finest: `lateral_i += upsample(lateral_{i+1})`; then
    `out_i = ConvBNAct(filters, 3x3)(lateral_i)`.

    With `process_top=False` the coarsest input is used as its own lateral and output
    unchanged (it must already have `filters` channels): UPerNet, whose top level is the
    PPM bottleneck output (mmseg UPerHead, CAR TF code).
    """

    def __init__(
        self,
        filters=256,
        process_top=True,
        align_corners=False,
        bn_momentum=0.9,
        bn_epsilon=1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = filters
        self.process_top = process_top
        self.align_corners = align_corners
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon

    def build(self, input_shape):
        shapes = list(input_shape)
        if len(shapes) < 2:
            raise ValueError(f"{self.name}: FPN needs at least 2 feature maps, got {len(shapes)}")
        if not self.process_top and int(shapes[-1][-1]) != self.filters:
            raise ValueError(
                f"{self.name}: with process_top=False the coarsest input must have "
                f"{self.filters} channels, got {shapes[-1][-1]}"
            )
        norm = dict(
            bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon, dtype=self.dtype_policy
        )
        num = len(shapes) if self.process_top else len(shapes) - 1
        self.lateral_convs = []
        self.output_convs = []
        for i in range(num):
            lateral = ConvBNAct(self.filters, 1, name=f"lateral_{i}", **norm)
            lateral.build(shapes[i])
            out = ConvBNAct(self.filters, 3, name=f"output_{i}", **norm)
            out.build(tuple(shapes[i][:-1]) + (self.filters,))
            self.lateral_convs.append(lateral)
            self.output_convs.append(out)
        self.built = True

    def call(self, features, training=None):
        features = list(features)
        laterals = [conv(f, training=training) for conv, f in zip(self.lateral_convs, features)]
        if not self.process_top:
            laterals.append(features[-1])
        for i in range(len(laterals) - 2, -1, -1):
            size = spatial_shape(laterals[i])
            laterals[i] = laterals[i] + resize(
                laterals[i + 1], size, "bilinear", self.align_corners
            )
        outs = [conv(lat, training=training) for conv, lat in zip(self.output_convs, laterals)]
        if not self.process_top:
            outs.append(laterals[-1])
        return outs

    def compute_output_shape(self, input_shape):
        return [tuple(s[:-1]) + (self.filters,) for s in input_shape]

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            process_top=self.process_top,
            align_corners=self.align_corners,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
        )
        return config
