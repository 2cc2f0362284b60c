"""DANet (dual attention) head on c5 (METHODS.md 2(b); CAR TF code heads/danet.py).

    position branch: c5 -> ConvBNAct(512, 3x3) -> PositionAttention (q/k = C/8 = 64, gamma)
                     -> [CAR "car": F=512, R=[1]] -> end ConvBNAct(512, 3x3)
    channel branch:  c5 -> ConvBNAct(512, 3x3) -> ChannelAttention (gamma)
                     -> [CAR "car_cam": F=512, R=[1]] -> end ConvBNAct(512, 3x3)
    sum of the two branches -> dropout -> classifier.

Each branch has its own CAR block, as in the CAR code. The head returns the position
branch's CAR feature as `"feature"` and the channel branch's as `"extra_features"` (a
one-element list); a model applying CAR should add the losses of every entry.

`variant="car"` (default): the channel attention uses the CAR code's transposed product
(`X A`); `variant="mmseg"` (mmseg DAHead, original DANet): `X A^T`. Otherwise the layouts
match. The per-branch auxiliary classifiers of mmseg/DANet are not built.
"""

import keras

from iseg.heads._util import check_variant, endpoint
from iseg.heads.base import Head
from iseg.heads.registry import HEADS
from iseg.layers.conv_bn_act import ConvBNAct
from iseg.layers.danet import ChannelAttention, PositionAttention


@HEADS.register("danet")
@keras.saving.register_keras_serializable(package="iseg")
class DANetHead(Head):
    """DANet head; see the module docstring.

    Args:
        channels: width of both branches (512).
        key_filters: q/k width of the position attention (None: channels // 8).
    """

    car_filters = 512
    car_pooling_rates = (1,)

    def __init__(
        self, num_classes, channels=512, key_filters=None, variant="car", in_key="c5", **kwargs
    ):
        super().__init__(num_classes, **kwargs)
        self.variant = check_variant("danet", variant)
        self.channels = channels
        self.key_filters = key_filters
        self.in_key = in_key
        norm = dict(self.norm_kwargs, dtype=self.dtype_policy)
        self.pam_in_conv = ConvBNAct(channels, 3, name="pam_in_conv", **norm)
        self.pam = PositionAttention(key_filters, dtype=self.dtype_policy, name="pam")
        self.cam_in_conv = ConvBNAct(channels, 3, name="cam_in_conv", **norm)
        self.cam = ChannelAttention(
            transposed=variant == "car", dtype=self.dtype_policy, name="cam"
        )
        self._init_end(ConvBNAct(channels, 3, name="pam_out_conv", **norm))
        if self.use_car:
            self.car_cam = self.car_block("car_cam")
            self.cam_out_conv = None
        else:
            self.car_cam = None
            self.cam_out_conv = ConvBNAct(channels, 3, name="cam_out_conv", **norm)

    def call(self, endpoints, training=None):
        inputs = endpoint(endpoints, self.in_key, "danet")
        pam = self.pam(self.pam_in_conv(inputs, training=training))
        cam = self.cam(self.cam_in_conv(inputs, training=training))
        if self.car_cam is not None:
            pam, feature = self.car(pam, training=training)
            cam, cam_feature = self.car_cam(cam, training=training)
        else:
            feature, cam_feature = pam, cam
            pam = self.end_conv(pam, training=training)
            cam = self.cam_out_conv(cam, training=training)
        x = self.dropout(pam + cam, training=training)
        return {
            "logits": self.classifier(x),
            "feature": feature,
            "extra_features": [cam_feature],
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            channels=self.channels,
            key_filters=self.key_filters,
            variant=self.variant,
            in_key=self.in_key,
        )
        return config
