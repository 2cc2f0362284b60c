"""CCNet head on c5 (METHODS.md 2(b); CAR TF code heads/ccnet.py = mmseg CCHead layout).

    c5 -> ConvBNAct(512, 3x3) -> criss-cross attention applied `recurrence` (2) times with
    shared weights -> ConvBNAct(512, 3x3) -> concat[c5, .] -> [CAR: F=512, R=[1]]
    -> end "conv_cat" ConvBNAct(512, 3x3) -> dropout -> classifier.

The CAR code and mmseg agree here; `variant` is accepted for a uniform interface.
"""

import keras
from keras import ops

from iseg.heads._util import check_variant, endpoint
from iseg.heads.base import Head
from iseg.heads.registry import HEADS
from iseg.layers.ccnet import CrissCrossAttention
from iseg.layers.conv_bn_act import ConvBNAct


@HEADS.register("ccnet")
@keras.saving.register_keras_serializable(package="iseg")
class CCNetHead(Head):
    """CCNet head.

    Args:
        channels: width of the convs (512).
        recurrence: number of criss-cross passes (2).
        reduction: q/k width = channels // reduction (8).
    """

    car_filters = 512
    car_pooling_rates = (1,)

    def __init__(
        self,
        num_classes,
        channels=512,
        recurrence=2,
        reduction=8,
        variant="car",
        in_key="c5",
        **kwargs,
    ):
        super().__init__(num_classes, **kwargs)
        self.variant = check_variant("ccnet", variant)
        self.channels = channels
        self.recurrence = recurrence
        self.reduction = reduction
        self.in_key = in_key
        norm = dict(self.norm_kwargs, dtype=self.dtype_policy)
        self.in_conv = ConvBNAct(channels, 3, name="in_conv", **norm)
        self.attention = CrissCrossAttention(reduction, dtype=self.dtype_policy, name="cca")
        self.out_conv = ConvBNAct(channels, 3, name="out_conv", **norm)
        self._init_end(ConvBNAct(channels, 3, name="conv_cat", **norm))

    def call(self, endpoints, training=None):
        inputs = endpoint(endpoints, self.in_key, "ccnet")
        x = self.in_conv(inputs, training=training)
        for _ in range(self.recurrence):
            x = self.attention(x)
        x = self.out_conv(x, training=training)
        return self._classify(ops.concatenate([inputs, x], axis=-1), training)

    def get_config(self):
        config = super().get_config()
        config.update(
            channels=self.channels,
            recurrence=self.recurrence,
            reduction=self.reduction,
            variant=self.variant,
            in_key=self.in_key,
        )
        return config
