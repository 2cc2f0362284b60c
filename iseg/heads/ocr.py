"""OCR head (cascade; METHODS.md 2(b), 8).

Soft object regions: `variant="car"` (default; CAR TF code) computes them on c5 with
ConvBNAct(c5 width, 3x3) -> classifier; `variant="mmseg"` uses an FCN on c4:
ConvBNAct(256, 3x3) -> Dropout -> classifier. Their logits are returned as `"aux_logits"`
(the model adds their cross-entropy with weight 0.4).

Both variants then: c5 -> ConvBNAct(512, 3x3) = pixel features p; ObjectContext (spatial
gather with a softmax over H*W of each region's logits, object attention with 256-d
key/query) -> 512-ch context; concat[context, p] -> [CAR: F=512, R=[2]]
-> end ConvBNAct(512, 1x1) (mmseg's OCR "bottleneck") -> dropout -> classifier.
"""

import keras
from keras import ops

from iseg.heads._util import check_variant, endpoint
from iseg.heads.base import Head
from iseg.heads.registry import HEADS
from iseg.layers.conv_bn_act import ConvBNAct
from iseg.layers.object_context import ObjectContext


@HEADS.register("ocr")
@keras.saving.register_keras_serializable(package="iseg")
class OCRHead(Head):
    """OCR head; returns `{"logits", "feature", "aux_logits"}`.

    Args:
        channels: width of the pixel features, context and end conv (512).
        key_filters: key/query/value width of the object attention (256).
        region_channels: width of the region head conv (None: c5 width for "car", 256 for
            "mmseg").
        region_key: endpoint of the region head (None: "c5" for "car", "c4" for "mmseg").
    """

    car_filters = 512
    car_pooling_rates = (2,)
    #: The region logits play the auxiliary head's role (the model builds no fcn_aux).
    provides_aux_logits = True
    #: The soft object regions are the aux output: the model adds no separate aux head.
    provides_aux_logits = True

    def __init__(
        self,
        num_classes,
        channels=512,
        key_filters=256,
        region_channels=None,
        region_key=None,
        variant="car",
        in_key="c5",
        **kwargs,
    ):
        super().__init__(num_classes, **kwargs)
        self.variant = check_variant("ocr", variant)
        car = variant == "car"
        self.channels = channels
        self.key_filters = key_filters
        self.region_channels = (
            region_channels if region_channels is not None else (None if car else 256)
        )
        self.region_key = region_key or ("c5" if car else "c4")
        self.in_key = in_key
        norm = dict(self.norm_kwargs, dtype=self.dtype_policy)
        self.region_dropout = (
            None if car else keras.layers.Dropout(self.dropout_rate, name="region_dropout")
        )
        self.region_classifier = keras.layers.Conv2D(
            num_classes, 1, use_bias=True, dtype=self.dtype_policy, name="region_classifier"
        )
        self.pixel_conv = ConvBNAct(channels, 3, name="pixel_conv", **norm)
        self.object_context = ObjectContext(
            key_filters, channels, name="object_context", **norm
        )
        self._init_end(ConvBNAct(channels, 1, name="end_conv", **norm))

    def build(self, input_shape):
        region_shape = endpoint(input_shape, self.region_key, "ocr")
        width = self.region_channels or int(region_shape[-1])
        self.region_conv = ConvBNAct(
            width, 3, name="region_conv", dtype=self.dtype_policy, **self.norm_kwargs
        )
        super().build(input_shape)

    def call(self, endpoints, training=None):
        region = self.region_conv(
            endpoint(endpoints, self.region_key, "ocr"), training=training
        )
        if self.region_dropout is not None:
            region = self.region_dropout(region, training=training)
        region_logits = self.region_classifier(region)
        pixels = self.pixel_conv(endpoint(endpoints, self.in_key, "ocr"), training=training)
        context = self.object_context([pixels, region_logits], training=training)
        out = self._classify(ops.concatenate([context, pixels], axis=-1), training)
        out["aux_logits"] = region_logits
        return out

    def get_config(self):
        config = super().get_config()
        config.update(
            channels=self.channels,
            key_filters=self.key_filters,
            region_channels=self.region_channels,
            region_key=self.region_key,
            variant=self.variant,
            in_key=self.in_key,
        )
        return config
