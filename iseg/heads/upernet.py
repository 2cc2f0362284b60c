"""UPerNet head on c2..c5 (METHODS.md 2(b), 8).

    c5 -> PPM (adaptive avg-pool to 1, 2, 3, 6 -> ConvBNAct(512) -> upsample), concat with c5
       -> "bottleneck" ConvBNAct(512, 3x3) = top level
    FPN: laterals ConvBNAct(512, 1x1) on c2, c3, c4; top-down upsample-and-add;
       ConvBNAct(512, 3x3) on each merged lateral (the top is kept as is)
    upsample the four levels to c2's size, concat (4 x 512) -> [CAR: F=512, R=[2]]
       -> end "fpn_bottleneck" ConvBNAct(512, 3x3) -> dropout -> classifier.

`variant="car"` (default; CAR TF code): PPM branch convs are 3x3, bilinear upsampling with
`align_corners=True`. `variant="mmseg"` (mmseg UPerHead): PPM convs 1x1, `align_corners=False`.
"""

import keras
from keras import ops

from iseg.heads._util import check_variant, endpoint
from iseg.heads.base import Head
from iseg.heads.registry import HEADS
from iseg.layers.conv_bn_act import ConvBNAct
from iseg.layers.fpn import FPN
from iseg.layers.ppm import PPM
from iseg.ops import resize, spatial_shape


@HEADS.register("upernet")
@keras.saving.register_keras_serializable(package="iseg")
class UPerNetHead(Head):
    """UPerNet head.

    Args:
        channels: width of PPM, FPN and fusion convs (512).
        bins: PPM bin sizes (1, 2, 3, 6).
        in_keys: endpoints from fine to coarse ("c2", "c3", "c4", "c5").
        align_corners: of every bilinear upsampling (None: True "car", False "mmseg").
    """

    car_filters = 512
    car_pooling_rates = (2,)

    def __init__(
        self,
        num_classes,
        channels=512,
        bins=(1, 2, 3, 6),
        in_keys=("c2", "c3", "c4", "c5"),
        align_corners=None,
        variant="car",
        **kwargs,
    ):
        super().__init__(num_classes, **kwargs)
        self.variant = check_variant("upernet", variant)
        car = variant == "car"
        self.channels = channels
        self.bins = tuple(int(b) for b in bins)
        self.in_keys = tuple(in_keys)
        self.align_corners = car if align_corners is None else align_corners
        norm = dict(self.norm_kwargs, dtype=self.dtype_policy)
        self.ppm = PPM(
            channels,
            self.bins,
            kernel_size=3 if car else 1,
            include_input=True,
            align_corners=self.align_corners,
            name="ppm",
            **norm,
        )
        self.ppm_bottleneck = ConvBNAct(channels, 3, name="ppm_bottleneck", **norm)
        self.fpn = FPN(
            channels, process_top=False, align_corners=self.align_corners, name="fpn", **norm
        )
        self._init_end(ConvBNAct(channels, 3, name="fpn_bottleneck", **norm))

    def call(self, endpoints, training=None):
        features = [endpoint(endpoints, key, "upernet") for key in self.in_keys]
        top = self.ppm_bottleneck(self.ppm(features[-1], training=training), training=training)
        levels = self.fpn(features[:-1] + [top], training=training)
        size = spatial_shape(levels[0])
        levels = [levels[0]] + [
            resize(level, size, "bilinear", self.align_corners) for level in levels[1:]
        ]
        return self._classify(ops.concatenate(levels, axis=-1), training)

    def get_config(self):
        config = super().get_config()
        config.update(
            channels=self.channels,
            bins=list(self.bins),
            in_keys=list(self.in_keys),
            align_corners=self.align_corners,
            variant=self.variant,
        )
        return config
