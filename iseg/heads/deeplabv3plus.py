"""DeepLabV3+ head: ASPP on c5 plus a decoder with the c2 (OS4) feature (METHODS.md 8).

The CAR TF code has no DeepLabV3+ head, so `variant="car"` (default) is the TF DeepLab
layout at the CAR code's DeepLabV3 width [INFERRED as the CAR-style default]:
    c5 -> ASPP(256: image pooling, 1x1, three atrous 3x3, regular convs)
       -> projection ConvBNAct(256, 1x1)
    c2 -> ConvBNAct(48, 1x1); ASPP output bilinearly upsampled to c2's size; concat
       -> SeparableConvBNAct(256, 3x3) -> [CAR: F=256, R=[2]]
       -> end SeparableConvBNAct(256, 3x3) -> dropout -> classifier.
`variant="mmseg"` (mmseg DepthwiseSeparableASPPHead): 512-ch ASPP with depthwise-separable
atrous branches, projection "bottleneck" ConvBNAct(512, 3x3), the same decoder at 512 ch,
`align_corners=False`.

The CAR hook (not in the CAR code's table) sits before the last decoder conv, at OS4, so
like UPerNet (also OS4) the CAR losses are pooled at rate 2 by default.
"""

import keras

from iseg.heads._util import check_variant, endpoint
from iseg.heads.base import Head
from iseg.heads.deeplabv3 import aspp_rates
from iseg.heads.registry import HEADS
from iseg.layers.aspp import ASPP, LowLevelFusion, SeparableConvBNAct


@HEADS.register("deeplabv3plus")
@keras.saving.register_keras_serializable(package="iseg")
class DeepLabV3PlusHead(Head):
    """DeepLabV3+ head on c5 (ASPP) and c2 (decoder).

    Args:
        channels: ASPP and decoder width (None: 256 "car", 512 "mmseg").
        low_level_channels: width of the c2 reduction (48).
        output_stride, rates: ASPP rates as in `deeplabv3`.
        align_corners: of the decoder upsampling (None: True "car", False "mmseg").
    """

    car_filters = 256
    car_pooling_rates = (2,)

    def __init__(
        self,
        num_classes,
        channels=None,
        low_level_channels=48,
        output_stride=8,
        rates=None,
        align_corners=None,
        variant="car",
        in_key="c5",
        low_level_key="c2",
        **kwargs,
    ):
        super().__init__(num_classes, **kwargs)
        self.variant = check_variant("deeplabv3plus", variant)
        car = variant == "car"
        self.channels = channels or (256 if car else 512)
        self.low_level_channels = low_level_channels
        self.output_stride = output_stride
        self.rates = aspp_rates(output_stride, rates)
        self.align_corners = car if align_corners is None else align_corners
        self.in_key = in_key
        self.low_level_key = low_level_key
        norm = dict(self.norm_kwargs, dtype=self.dtype_policy)
        self.aspp = ASPP(
            self.channels,
            self.rates,
            separable=not car,
            projection_filters=self.channels,
            projection_kernel_size=1 if car else 3,
            name="aspp",
            **norm,
        )
        self.decoder = LowLevelFusion(
            self.channels, low_level_channels, separable=True,
            align_corners=self.align_corners, name="decoder", **norm,
        )
        self._init_end(SeparableConvBNAct(self.channels, 3, name="end_conv", **norm))

    def call(self, endpoints, training=None):
        x = self.aspp(endpoint(endpoints, self.in_key, "deeplabv3plus"), training=training)
        low = endpoint(endpoints, self.low_level_key, "deeplabv3plus")
        x = self.decoder([x, low], training=training)
        return self._classify(x, training)

    def get_config(self):
        config = super().get_config()
        config.update(
            channels=self.channels,
            low_level_channels=self.low_level_channels,
            output_stride=self.output_stride,
            rates=list(self.rates),
            align_corners=self.align_corners,
            variant=self.variant,
            in_key=self.in_key,
            low_level_key=self.low_level_key,
        )
        return config
