"""Self-attention head `nl` (METHODS.md 2(b), 8).

`variant="car"` (default; the CAR paper's "self-attention" head, CAR TF code):
    c5 -> ConvBNAct(512, 3x3) -> x + SA(x) (q, k = Conv1x1(64, bias) with identical initial
    weights, v = Conv1x1(512, bias), softmax over all H*W, no scaling)
    -> [CAR: F=512, R=[1]] -> end ConvBNAct(512, 3x3) -> dropout -> classifier.
`variant="mmseg"` (mmseg NLHead): c5 -> ConvBNAct(512, 3x3) -> NonLocal2d (embedded
    Gaussian, inter 256, 1/sqrt scaling, zero-initialised output BN, residual)
    -> ConvBNAct(512, 3x3) -> concat[c5, .] -> [CAR] -> end "conv_cat" ConvBNAct(512, 3x3)
    -> dropout -> classifier.
"""

import keras
from keras import ops

from iseg.heads._util import check_variant, endpoint
from iseg.heads.base import Head
from iseg.heads.registry import HEADS
from iseg.layers.conv_bn_act import ConvBNAct
from iseg.layers.self_attention import NonLocal2d, SelfAttention


@HEADS.register("nl")
@keras.saving.register_keras_serializable(package="iseg")
class SelfAttentionHead(Head):
    """Self-attention / non-local head on c5.

    Args:
        channels: width of the convs and of the attention value (512).
        key_filters: q/k width of the CAR variant (64).
        reduction: inter-channel reduction of the mmseg NonLocal2d (2).
    """

    car_filters = 512
    car_pooling_rates = (1,)

    def __init__(
        self,
        num_classes,
        channels=512,
        key_filters=64,
        reduction=2,
        variant="car",
        in_key="c5",
        **kwargs,
    ):
        super().__init__(num_classes, **kwargs)
        self.variant = check_variant("nl", variant)
        self.channels = channels
        self.key_filters = key_filters
        self.reduction = reduction
        self.in_key = in_key
        norm = dict(self.norm_kwargs, dtype=self.dtype_policy)
        self.down_conv = ConvBNAct(channels, 3, name="down_conv", **norm)
        if variant == "car":
            self.attention = SelfAttention(
                key_filters, channels, shared_init=True, scale=False, residual=True,
                dtype=self.dtype_policy, name="attention",
            )
            self.post_conv = None
        else:
            # mmseg's own initialisation (normal 0.01) for the non-local convs
            self.attention = NonLocal2d(
                reduction, bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                dtype=self.dtype_policy, name="attention",
            )
            self.post_conv = ConvBNAct(channels, 3, name="post_conv", **norm)
        self._init_end(ConvBNAct(channels, 3, name="end_conv", **norm))

    def call(self, endpoints, training=None):
        inputs = endpoint(endpoints, self.in_key, "nl")
        x = self.down_conv(inputs, training=training)
        if self.variant == "car":
            x = self.attention(x)
        else:
            x = self.attention(x, training=training)
            x = self.post_conv(x, training=training)
            x = ops.concatenate([inputs, x], axis=-1)
        return self._classify(x, training)

    def get_config(self):
        config = super().get_config()
        config.update(
            channels=self.channels,
            key_filters=self.key_filters,
            reduction=self.reduction,
            variant=self.variant,
            in_key=self.in_key,
        )
        return config
