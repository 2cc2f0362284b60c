"""CARD: class-aware regularized decoder (METHODS.md 3, 10.3). A reconstruction: no code or
full text exists; the spatial token mixer and the upsampling module below are [INFERRED],
built from the authors' library blocks, and swappable by option.

    spatial token mixer:  x = ContextModule(channels=512, mixer)(c5)
                          (1x1 projection, x + mixer(x) with 4-head axial attention or CAA's
                          block, concat ImageLevel, 1x1 fuse)
    upsampling module:    SimpleDecoder: c2 -> ConvBNAct(48, 1x1); x bilinearly resized to
                          c2's size; concat; two ConvBNAct(256, 3x3)
    -> [CAR: F=256, R=[1], with its 1x1 end conv] -> dropout -> classifier.

CARD is meant to be trained with CAR: the zoo names `card_<backbone>` turn it on; without
CAR the decoder output goes straight to the classifier.
"""

import keras

from iseg.heads._util import endpoint
from iseg.heads.base import Head
from iseg.heads.registry import HEADS
from iseg.layers.aspp import LowLevelFusion
from iseg.layers.multihead_axial_attention import ContextModule


@HEADS.register("card")
@keras.saving.register_keras_serializable(package="iseg")
class CARDHead(Head):
    """CARD head on c5 (token mixer) and c2 (upsampling module), for non-dilated backbones.

    Args:
        channels: width of the spatial token mixer (512).
        mixer, num_heads: its token mixer ("axial", 4 heads | "caa").
        decoder_channels: width of the two 3x3 decoder convs (256).
        low_level_channels: width of the c2 projection (48).
        align_corners: of the decoder's bilinear upsampling (False).
    """

    car_filters = 256
    car_pooling_rates = (1,)
    car_by_default = True

    def __init__(
        self,
        num_classes,
        channels=512,
        mixer="axial",
        num_heads=4,
        decoder_channels=256,
        low_level_channels=48,
        align_corners=False,
        in_key="c5",
        low_level_key="c2",
        **kwargs,
    ):
        super().__init__(num_classes, **kwargs)
        self.channels = channels
        self.mixer = mixer
        self.num_heads = num_heads
        self.decoder_channels = decoder_channels
        self.low_level_channels = low_level_channels
        self.align_corners = align_corners
        self.in_key = in_key
        self.low_level_key = low_level_key
        norm = dict(self.norm_kwargs, dtype=self.dtype_policy)
        self.token_mixer = ContextModule(
            channels, mixer=mixer, num_heads=num_heads, name="token_mixer", **norm
        )
        self.decoder = LowLevelFusion(
            decoder_channels, low_level_channels, num_convs=2, align_corners=align_corners,
            name="decoder", **norm,
        )
        self._init_end(None)

    def call(self, endpoints, training=None):
        x = self.token_mixer(endpoint(endpoints, self.in_key, "card"), training=training)
        low = endpoint(endpoints, self.low_level_key, "card")
        x = self.decoder([x, low], training=training)
        return self._classify(x, training)

    def get_config(self):
        config = super().get_config()
        config.update(
            channels=self.channels,
            mixer=self.mixer,
            num_heads=self.num_heads,
            decoder_channels=self.decoder_channels,
            low_level_channels=self.low_level_channels,
            align_corners=self.align_corners,
            in_key=self.in_key,
            low_level_key=self.low_level_key,
        )
        return config
