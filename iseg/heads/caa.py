"""CAA head (METHODS.md 5(b), CAR framework layout):

    x = c5  (or, with `use_jpu=True` for OS32 backbones, JPU(c3, c4, c5) at OS8, 2048 ch)
    x -> ConvBNAct(512, 3x3) entry -> ChannelizedAxialAttention(512) -> ConvBNAct(512, 1x1)
      -> concat with ImageLevel(512)(x) (1024 ch) -> [CAR: F=256, R=[1]]
      -> end ConvBNAct(256, 1x1) -> dropout(0.1) -> classifier.

With JPU the image-level branch reads the JPU output (the feature that replaces c5). The
auxiliary head is the model's (`aux_weight`), as for the other heads; the head also returns
its input (c5 or the JPU output) as `"head_input"`, which an aux head with
`in_key="head_input"` reads (the CAR and CAA code's aux head).
"""

import keras
from keras import ops

from iseg.heads._util import endpoint
from iseg.heads.base import Head
from iseg.heads.registry import HEADS
from iseg.layers.axial_attention import ChannelizedAxialAttention
from iseg.layers.conv_bn_act import ConvBNAct, ImageLevel
from iseg.layers.jpu import JointPyramidUpsampling


@HEADS.register("caa")
@keras.saving.register_keras_serializable(package="iseg")
class CAAHead(Head):
    """Channelized axial attention head.

    Args:
        channels: width of the entry conv, the CAA block, its output conv and the image-level
            branch (512).
        end_channels: width of the end conv (256).
        guide_filters, mlp_hidden, mlp_layers, group_size: of `ChannelizedAxialAttention`.
        use_jpu: build the input with a JPU from `jpu_keys` (ConvNeXt / Swin at OS32).
        jpu_filters, jpu_keys: JPU width (512) and endpoints (highest resolution first).
        in_key: endpoint read without JPU ("c5").
    """

    car_filters = 256
    car_pooling_rates = (1,)

    def __init__(
        self,
        num_classes,
        channels=512,
        end_channels=256,
        guide_filters=64,
        mlp_hidden=None,
        mlp_layers=5,
        group_size=None,
        use_jpu=False,
        jpu_filters=512,
        jpu_keys=("c3", "c4", "c5"),
        in_key="c5",
        **kwargs,
    ):
        super().__init__(num_classes, **kwargs)
        self.channels = channels
        self.end_channels = end_channels
        self.guide_filters = guide_filters
        self.mlp_hidden = mlp_hidden
        self.mlp_layers = mlp_layers
        self.group_size = group_size
        self.use_jpu = use_jpu
        self.jpu_filters = jpu_filters
        self.jpu_keys = tuple(jpu_keys)
        self.in_key = in_key
        norm = dict(self.norm_kwargs, dtype=self.dtype_policy)
        self.jpu = (
            JointPyramidUpsampling(jpu_filters, num_inputs=len(self.jpu_keys), name="jpu", **norm)
            if use_jpu
            else None
        )
        self.entry_conv = ConvBNAct(channels, 3, name="entry_conv", **norm)
        self.caa = ChannelizedAxialAttention(
            channels,
            guide_filters=guide_filters,
            mlp_hidden=mlp_hidden,
            mlp_layers=mlp_layers,
            group_size=group_size,
            name="caa",
            **norm,
        )
        self.caa_conv = ConvBNAct(channels, 1, name="caa_conv", **norm)
        self.image_level = ImageLevel(channels, name="image_level", **norm)
        self._init_end(ConvBNAct(end_channels, 1, name="end_conv", **norm))

    def call(self, endpoints, training=None):
        if self.jpu is not None:
            x = self.jpu([endpoint(endpoints, k, "caa") for k in self.jpu_keys], training=training)
        else:
            x = endpoint(endpoints, self.in_key, "caa")
        y = self.entry_conv(x, training=training)
        y = self.caa_conv(self.caa(y, training=training), training=training)
        y = ops.concatenate([y, self.image_level(x, training=training)], axis=-1)
        return dict(self._classify(y, training), head_input=x)

    def endpoint_keys(self):
        return list(self.jpu_keys) if self.jpu is not None else [self.in_key]

    def get_config(self):
        config = super().get_config()
        config.update(
            channels=self.channels,
            end_channels=self.end_channels,
            guide_filters=self.guide_filters,
            mlp_hidden=self.mlp_hidden,
            mlp_layers=self.mlp_layers,
            group_size=self.group_size,
            use_jpu=self.use_jpu,
            jpu_filters=self.jpu_filters,
            jpu_keys=list(self.jpu_keys),
            in_key=self.in_key,
        )
        return config
