"""The CAR block: the training-time hook of class-aware regularization inside a head.

The block holds the two 1x1 convolutions CAR adds to a head (METHODS.md 2(b)): the linear
projection `z = Conv1x1(min(Cin, F), bias)(x)` on which the CAR losses are computed, and the
optional end conv `ReLU(BN(Conv1x1(C)(z)))` that replaces the head's own second-to-last
conv. The losses themselves live in `iseg.losses.car` and are computed by the model from
`z` and the labels, during training only, so inference carries just the two 1x1 convs.
"""

import keras

from iseg.layers.conv_bn_act import ConvBlock, ConvBNAct


@keras.saving.register_keras_serializable(package="iseg")
class CARBlock(ConvBlock):
    """Returns `(out, z)`: `z` the projected feature the CAR losses read, `out` what the
    head classifies (`z` itself when `apply_end_conv=False`)."""

    def __init__(
        self,
        filters=512,
        apply_end_conv=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = filters
        self.apply_end_conv = apply_end_conv

    def build(self, input_shape):
        channels = min(int(input_shape[-1]), self.filters)
        self.linear_conv = keras.layers.Conv2D(
            channels, 1, use_bias=True, dtype=self.dtype_policy, name="linear_conv"
        )
        self.linear_conv.build(input_shape)
        self.end_conv = None
        if self.apply_end_conv:
            self.end_conv = ConvBNAct(
                channels,
                1,
                name="end_conv",
                **self.conv_options,
            )
            self.end_conv.build(tuple(input_shape[:-1]) + (channels,))
        self.built = True

    def call(self, x, training=None):
        z = self.linear_conv(x)
        out = self.end_conv(z, training=training) if self.end_conv is not None else z
        return out, z

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape[:-1]) + (min(int(input_shape[-1]), self.filters),)
        return shape, shape

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            apply_end_conv=self.apply_end_conv,
        )
        return config
