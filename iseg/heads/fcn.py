"""FCN head and the FCN auxiliary head (METHODS.md 2(b), 8).

`variant="car"` (default; the CAR TF code, whose numbers the model zoo reports):
    c5 -> ConvBNAct(channels=512, 3x3) -> [CAR: F=512, R=[1]] -> end ConvBNAct(256, 1x1)
    -> dropout -> classifier.
`variant="mmseg"` (mmseg FCNHead, `num_convs=2, concat_input=True`):
    c5 -> 2 x ConvBNAct(512, 3x3) -> concat[c5, .] -> [CAR] -> end "conv_cat"
    ConvBNAct(512, 3x3) -> dropout -> classifier.
"""

import keras
from keras import ops

from iseg.heads._util import check_variant, endpoint
from iseg.heads.base import Head
from iseg.heads.registry import HEADS
from iseg.layers.conv_bn_act import ConvBNAct


@HEADS.register("fcn")
@keras.saving.register_keras_serializable(package="iseg")
class FCNHead(Head):
    """FCN head on `endpoints[in_key]` (c5). See the module docstring for the layouts.

    Args:
        channels: width of the 3x3 convs (512).
        end_channels: width of the end conv (None: 256 for "car", `channels` for "mmseg").
        variant: "car" or "mmseg".
    """

    car_filters = 512
    car_pooling_rates = (1,)

    def __init__(
        self, num_classes, channels=512, end_channels=None, variant="car", in_key="c5", **kwargs
    ):
        super().__init__(num_classes, **kwargs)
        self.variant = check_variant("fcn", variant)
        self.channels = channels
        self.in_key = in_key
        norm = dict(self.norm_kwargs, dtype=self.dtype_policy)
        if variant == "car":
            self.end_channels = end_channels or 256
            self.convs = [ConvBNAct(channels, 3, name="down_conv", **norm)]
            end = ConvBNAct(self.end_channels, 1, name="end_conv", **norm)
        else:
            self.end_channels = end_channels or channels
            self.convs = [ConvBNAct(channels, 3, name=f"conv_{i}", **norm) for i in range(2)]
            end = ConvBNAct(self.end_channels, 3, name="conv_cat", **norm)
        self._init_end(end)

    def call(self, endpoints, training=None):
        inputs = endpoint(endpoints, self.in_key, "fcn")
        x = inputs
        for conv in self.convs:
            x = conv(x, training=training)
        if self.variant == "mmseg":
            x = ops.concatenate([inputs, x], axis=-1)
        return self._classify(x, training)

    def get_config(self):
        config = super().get_config()
        config.update(
            channels=self.channels,
            end_channels=self.end_channels,
            variant=self.variant,
            in_key=self.in_key,
        )
        return config


@HEADS.register("fcn_aux")
@keras.saving.register_keras_serializable(package="iseg")
class FCNAuxHead(Head):
    """Auxiliary FCN head (mmseg aux head, loss weight 0.4 in the model):
    `endpoints[in_key]` (c4) -> ConvBNAct(channels=256, 3x3) -> Dropout -> classifier.
    Returns `{"logits"}` only; it is never given CAR."""

    def __init__(self, num_classes, channels=256, in_key="c4", **kwargs):
        if kwargs.get("use_car"):
            raise ValueError("fcn_aux: the auxiliary head never takes CAR (use_car=True given)")
        super().__init__(num_classes, **kwargs)
        self.channels = channels
        self.in_key = in_key
        self.conv = ConvBNAct(
            channels, 3, name="conv", dtype=self.dtype_policy, **self.norm_kwargs
        )
        self._init_end(None)

    def call(self, endpoints, training=None):
        x = self.conv(endpoint(endpoints, self.in_key, "fcn_aux"), training=training)
        x = self.dropout(x, training=training)
        return {"logits": self.classifier(x)}

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, in_key=self.in_key)
        return config
