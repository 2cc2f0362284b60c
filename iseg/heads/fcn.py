"""FCN head and the FCN auxiliary head (METHODS.md 2(b), 8).

`variant="car"` (default; the CAR TF code, whose numbers the model zoo reports):
    c5 -> ConvBNAct(channels=512, 3x3) -> [CAR: F=512, R=[1]] -> end ConvBNAct(256, 1x1)
    -> dropout -> classifier.
`variant="mmseg"` (mmseg FCNHead, `num_convs=2, kernel_size=3, concat_input=True`):
    c5 -> 2 x ConvBNAct(512, 3x3) -> concat[c5, .] -> [CAR] -> end "conv_cat"
    ConvBNAct(512, 3x3) -> dropout -> classifier.
With `concat_input=False` the last of the `num_convs` convs is the end conv: mmseg's HRNet
head (`fcn_hr*`: `num_convs=1, kernel_size=1, concat_input=False`, channels = the HRNetV2
width, `dropout=0`) is c5 -> [CAR] -> ConvBNAct(720, 1x1) -> classifier.
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
        num_convs, kernel_size, concat_input: mmseg FCNHead options ("mmseg" only).
    """

    car_filters = 512
    car_pooling_rates = (1,)

    def __init__(
        self,
        num_classes,
        channels=512,
        end_channels=None,
        variant="car",
        in_key="c5",
        num_convs=2,
        kernel_size=3,
        concat_input=True,
        **kwargs,
    ):
        super().__init__(num_classes, **kwargs)
        self.variant = check_variant("fcn", variant)
        self.channels = channels
        self.in_key = in_key
        self.num_convs = int(num_convs)
        self.kernel_size = int(kernel_size)
        self.concat_input = bool(concat_input)
        if variant == "mmseg" and self.num_convs < 1:
            raise ValueError(f"fcn: num_convs must be at least 1, got {num_convs!r}")
        norm = dict(self.norm_kwargs, dtype=self.dtype_policy)
        if variant == "car":
            self.end_channels = end_channels or 256
            self.convs = [ConvBNAct(channels, 3, name="down_conv", **norm)]
            end = ConvBNAct(self.end_channels, 1, name="end_conv", **norm)
        else:
            self.end_channels = end_channels or channels
            k, n = self.kernel_size, self.num_convs - (0 if self.concat_input else 1)
            self.convs = [ConvBNAct(channels, k, name=f"conv_{i}", **norm) for i in range(n)]
            end_name = "conv_cat" if self.concat_input else f"conv_{n}"
            end = ConvBNAct(self.end_channels, k, name=end_name, **norm)
        self._init_end(end)

    def call(self, endpoints, training=None):
        inputs = endpoint(endpoints, self.in_key, "fcn")
        x = inputs
        for conv in self.convs:
            x = conv(x, training=training)
        if self.variant == "mmseg" and self.concat_input:
            x = ops.concatenate([inputs, x], axis=-1)
        return self._classify(x, training)

    def get_config(self):
        config = super().get_config()
        config.update(
            channels=self.channels,
            end_channels=self.end_channels,
            variant=self.variant,
            in_key=self.in_key,
            num_convs=self.num_convs,
            kernel_size=self.kernel_size,
            concat_input=self.concat_input,
        )
        return config


@HEADS.register("fcn_aux")
@keras.saving.register_keras_serializable(package="iseg")
class FCNAuxHead(Head):
    """Auxiliary FCN head (mmseg aux head, loss weight 0.4 in the model):
    `endpoints[in_key]` (c4) -> ConvBNAct(channels=256, 3x3) -> Dropout -> classifier.
    `in_key="head_input"` reads the feature the main head consumed (heads that return it,
    e.g. CAA: c5 or its JPU output). Returns `{"logits"}` only; it is never given CAR."""

    def __init__(self, num_classes, channels=256, in_key="c4", **kwargs):
        if kwargs.get("car") is not None:
            raise ValueError("fcn_aux: the auxiliary head never takes CAR (car= given)")
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
