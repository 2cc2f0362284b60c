"""DeepLabV3 (ASPP) head (METHODS.md 2(b), 8).

Atrous rates: `rates` if given, else (3, 6, 9) x (32 / output_stride), i.e. 12, 24, 36 at
OS8 and 6, 12, 18 at OS16.

`variant="car"` (default; the CAR TF code):
    c5 -> ASPP(256: image pooling, 1x1, three atrous 3x3) concat (1280 ch)
    -> [CAR: F=256, R=[1]] -> end ConvBNAct(256, 1x1) -> dropout -> classifier.
`variant="mmseg"` (mmseg ASPPHead): ASPP with 512-ch branches, concat (2560 ch)
    -> [CAR] -> end "bottleneck" ConvBNAct(512, 3x3) -> dropout -> classifier.
"""

import keras

from iseg.heads._util import check_variant, endpoint
from iseg.heads.base import Head
from iseg.heads.registry import HEADS
from iseg.layers.aspp import ASPP
from iseg.layers.conv_bn_act import ConvBNAct


def aspp_rates(output_stride, rates=None):
    """The ASPP dilation rates for an output stride: (3, 6, 9) * 32 / OS."""
    if rates is not None:
        return tuple(int(r) for r in rates)
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
    return tuple(r * 32 // output_stride for r in (3, 6, 9))


@HEADS.register("deeplabv3")
@keras.saving.register_keras_serializable(package="iseg")
class DeepLabV3Head(Head):
    """DeepLabV3 head on c5.

    Args:
        channels: ASPP branch width (None: 256 "car", 512 "mmseg").
        end_channels: end conv width (None: same as channels).
        output_stride, rates: see the module docstring.
        variant: "car" or "mmseg".
    """

    car_filters = 256
    car_pooling_rates = (1,)

    def __init__(
        self,
        num_classes,
        channels=None,
        end_channels=None,
        output_stride=8,
        rates=None,
        variant="car",
        in_key="c5",
        **kwargs,
    ):
        super().__init__(num_classes, **kwargs)
        self.variant = check_variant("deeplabv3", variant)
        self.channels = channels or (256 if variant == "car" else 512)
        self.end_channels = end_channels or self.channels
        self.output_stride = output_stride
        self.rates = aspp_rates(output_stride, rates)
        self.in_key = in_key
        norm = dict(self.norm_kwargs, dtype=self.dtype_policy)
        self.aspp = ASPP(self.channels, self.rates, name="aspp", **norm)
        kernel = 1 if variant == "car" else 3
        self._init_end(ConvBNAct(self.end_channels, kernel, name="end_conv", **norm))

    def call(self, endpoints, training=None):
        x = self.aspp(endpoint(endpoints, self.in_key, "deeplabv3"), training=training)
        return self._classify(x, training)

    def get_config(self):
        config = super().get_config()
        config.update(
            channels=self.channels,
            end_channels=self.end_channels,
            output_stride=self.output_stride,
            rates=list(self.rates),
            variant=self.variant,
            in_key=self.in_key,
        )
        return config
