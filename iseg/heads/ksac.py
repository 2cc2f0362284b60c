"""KSAC head: DeepLabV3+ with a kernel-sharing ASPP (METHODS.md 6(b)).

    c5 -> KernelSharingASPP(256, rates (6, 12, 18) * 16 / OS, concat fusion, projection
          ConvBNAct(256, 1x1), dropout 0.1)
    c2 -> ConvBNAct(48, 1x1); KSAC output bilinearly upsampled to c2's size; concat
       -> ConvBNAct(256, 3x3) -> [CAR: F=256, R=[2]] -> end ConvBNAct(256, 3x3)
       -> dropout -> classifier.
`separable=True` uses depthwise-separable decoder convs (the original DeepLab code). Like
`deeplabv3plus`, the CAR hook sits at OS4, so its losses are pooled at rate 2 by default.
"""

import keras

from iseg.heads._util import endpoint
from iseg.heads.base import Head
from iseg.heads.registry import HEADS
from iseg.layers.aspp import LowLevelFusion, SeparableConvBNAct
from iseg.layers.conv_bn_act import ConvBNAct
from iseg.layers.ksac import KernelSharingASPP


def ksac_rates(output_stride, rates=None):
    """KSAC rates: (6, 12, 18) at OS16, doubled at OS8, halved at OS32."""
    if rates is not None:
        return tuple(int(r) for r in rates)
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
    return tuple(r * 16 // output_stride for r in (6, 12, 18))


@HEADS.register("ksac")
@keras.saving.register_keras_serializable(package="iseg")
class KSACHead(Head):
    """DeepLabV3+-style head around `KernelSharingASPP`.

    Args:
        channels: KSAC and decoder width (256).
        low_level_channels: width of the c2 reduction (48).
        output_stride, rates: KSAC rates (see `ksac_rates`).
        fusion: "concat" or "sum" (see `KernelSharingASPP`).
        ksac_dropout: dropout inside the KSAC module (0.1).
        separable: depthwise-separable decoder convs.
        align_corners: of the decoder upsampling.
    """

    car_filters = 256
    car_pooling_rates = (2,)

    def __init__(
        self,
        num_classes,
        channels=256,
        low_level_channels=48,
        output_stride=8,
        rates=None,
        fusion="concat",
        ksac_dropout=0.1,
        separable=False,
        align_corners=True,
        in_key="c5",
        low_level_key="c2",
        **kwargs,
    ):
        super().__init__(num_classes, **kwargs)
        self.channels = channels
        self.low_level_channels = low_level_channels
        self.output_stride = output_stride
        self.rates = ksac_rates(output_stride, rates)
        self.fusion = fusion
        self.ksac_dropout = ksac_dropout
        self.separable = separable
        self.align_corners = align_corners
        self.in_key = in_key
        self.low_level_key = low_level_key
        norm = dict(self.norm_kwargs, dtype=self.dtype_policy)
        self.ksac = KernelSharingASPP(
            channels, self.rates, fusion=fusion, dropout=ksac_dropout, name="ksac", **norm
        )
        self.decoder = LowLevelFusion(
            channels, low_level_channels, separable=separable, align_corners=align_corners,
            name="decoder", **norm,
        )
        conv = SeparableConvBNAct if separable else ConvBNAct
        self._init_end(conv(channels, 3, name="end_conv", **norm))

    def call(self, endpoints, training=None):
        x = self.ksac(endpoint(endpoints, self.in_key, "ksac"), training=training)
        low = endpoint(endpoints, self.low_level_key, "ksac")
        x = self.decoder([x, low], training=training)
        return self._classify(x, training)

    def get_config(self):
        config = super().get_config()
        config.update(
            channels=self.channels,
            low_level_channels=self.low_level_channels,
            output_stride=self.output_stride,
            rates=list(self.rates),
            fusion=self.fusion,
            ksac_dropout=self.ksac_dropout,
            separable=self.separable,
            align_corners=self.align_corners,
            in_key=self.in_key,
            low_level_key=self.low_level_key,
        )
        return config
