"""JPU: joint pyramid upsampling (METHODS.md 5(b), CAR framework, OS32 backbones).

Builds an OS8 feature from the last endpoints (e.g. c3, c4, c5 at OS8/16/32): each goes
through ConvBNReLU(filters, 3x3), is resized (bilinear) to the first endpoint's size, and the
results are concatenated; four branches {depthwise 3x3 with bias, dilation d -> BN ->
ConvBNReLU(filters, 1x1)} for d in `dilation_rates` read the concatenation, and their
outputs are concatenated (4 x filters channels).
"""

import keras
from keras import ops

from iseg.layers.conv_bn_act import ConvBlock, ConvBNAct
from iseg.ops import resize, spatial_shape


@keras.saving.register_keras_serializable(package="iseg")
class JointPyramidUpsampling(ConvBlock):
    """`[x_os8, x_os16, x_os32, ...] -> [N, H8, W8, filters * len(dilation_rates)]`."""

    def __init__(
        self,
        filters=512,
        dilation_rates=(1, 2, 4, 8),
        num_inputs=3,
        align_corners=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = filters
        self.dilation_rates = tuple(int(d) for d in dilation_rates)
        self.num_inputs = int(num_inputs)
        self.align_corners = align_corners
        norm = self.conv_options
        self.input_convs = [
            ConvBNAct(filters, 3, name=f"input_conv{i}", **norm) for i in range(self.num_inputs)
        ]
        self.depthwise = [
            ConvBNAct(None, 3, dilation_rate=d, depthwise=True, use_bias=True, activation=None,
                      name=f"depthwise_d{d}", **norm)
            for d in self.dilation_rates
        ]
        self.pointwise = [
            ConvBNAct(filters, 1, name=f"pointwise_d{d}", **norm) for d in self.dilation_rates
        ]

    def _check(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != self.num_inputs:
            raise ValueError(
                f"JointPyramidUpsampling expects a list of {self.num_inputs} feature maps "
                f"(highest resolution first), got {type(inputs).__name__} of length "
                f"{len(inputs) if isinstance(inputs, (list, tuple)) else 'n/a'}"
            )

    def build(self, input_shape):
        self._check(input_shape)
        for conv, shape in zip(self.input_convs, input_shape):
            conv.build(shape)
        concat = tuple(input_shape[0][:-1]) + (self.filters * self.num_inputs,)
        for dw, pw in zip(self.depthwise, self.pointwise):
            dw.build(concat)
            pw.build(concat)
        self.built = True

    def call(self, inputs, training=None):
        self._check(inputs)
        size = spatial_shape(inputs[0])
        feats = [
            resize(conv(x, training=training), size, "bilinear", self.align_corners)
            for conv, x in zip(self.input_convs, inputs)
        ]
        y = ops.concatenate(feats, axis=-1)
        outs = [
            pw(dw(y, training=training), training=training)
            for dw, pw in zip(self.depthwise, self.pointwise)
        ]
        return ops.concatenate(outs, axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0][:-1]) + (self.filters * len(self.dilation_rates),)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            dilation_rates=list(self.dilation_rates),
            num_inputs=self.num_inputs,
            align_corners=self.align_corners,
        )
        return config
