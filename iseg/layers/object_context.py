"""OCR (object-contextual representations): spatial gather and object attention.

- `SpatialGather`: class contexts `k_c = sum_i softmax_i(scale * s_c)_i p_i`, a softmax over
  all H*W positions of each class's soft-region logits `s_c` (METHODS.md 8; scale 1).
- `ObjectAttention`: query = two ConvBNAct(key_filters, 1x1) on the pixels, key = two
  ConvBNAct(key_filters, 1x1) on the contexts, value = ConvBNAct(key_filters, 1x1) on the
  contexts, `softmax_c(q k^T / sqrt(key_filters))` over classes, weighted values, then
  ConvBNAct(out_filters, 1x1) ("up" conv back to the pixel width).
- `ObjectContext`: gather + attention in one layer; called on `[pixels, region_logits]`.
"""

import keras
from keras import ops

from iseg.layers.conv_bn_act import ConvBlock, ConvBNAct
from iseg.layers.self_attention import dot_product_attention, flatten_hw, unflatten_hw
from iseg.ops import resize, spatial_shape


@keras.saving.register_keras_serializable(package="iseg")
class SpatialGather(keras.layers.Layer):
    """`[pixels [N,H,W,C], region_logits [N,H,W,K]] -> contexts [N,K,C]`."""

    def __init__(self, scale=1.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale

    def call(self, inputs):
        pixels, logits = inputs
        probs = flatten_hw(ops.cast(logits, "float32")) * self.scale  # [N, P, K]
        probs = ops.softmax(probs, axis=1)
        feats = ops.cast(flatten_hw(pixels), "float32")  # [N, P, C]
        contexts = ops.einsum("npk,npc->nkc", probs, feats)
        return ops.cast(contexts, pixels.dtype)

    def compute_output_shape(self, input_shape):
        pixels, logits = input_shape
        return (pixels[0], logits[-1], pixels[-1])

    def get_config(self):
        config = super().get_config()
        config.update(scale=self.scale)
        return config


@keras.saving.register_keras_serializable(package="iseg")
class ObjectAttention(ConvBlock):
    """`[pixels [N,H,W,C], contexts [N,K,C]] -> [N,H,W,out_filters]` (out_filters=None: C)."""

    def __init__(
        self,
        key_filters=256,
        out_filters=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.key_filters = key_filters
        self.out_filters = out_filters

    def build(self, input_shape):
        pixel_shape, context_shape = input_shape
        channels = int(pixel_shape[-1])
        norm = self.conv_options
        kf = self.key_filters
        self.query_convs = [ConvBNAct(kf, 1, name=f"query_{i}", **norm) for i in range(2)]
        self.key_convs = [ConvBNAct(kf, 1, name=f"key_{i}", **norm) for i in range(2)]
        self.value_conv = ConvBNAct(kf, 1, name="value", **norm)
        self.out_conv = ConvBNAct(self.out_filters or channels, 1, name="out", **norm)
        ctx4 = (context_shape[0], context_shape[1], 1, context_shape[-1])
        self.query_convs[0].build(pixel_shape)
        self.query_convs[1].build(tuple(pixel_shape[:-1]) + (kf,))
        self.key_convs[0].build(ctx4)
        self.key_convs[1].build(ctx4[:-1] + (kf,))
        self.value_conv.build(ctx4)
        self.out_conv.build(tuple(pixel_shape[:-1]) + (kf,))
        self.built = True

    def call(self, inputs, training=None):
        pixels, contexts = inputs
        size = spatial_shape(pixels)
        ctx = ops.expand_dims(contexts, 2)  # [N, K, 1, C]: classes laid out as an image
        q = pixels
        for conv in self.query_convs:
            q = conv(q, training=training)
        k = ctx
        for conv in self.key_convs:
            k = conv(k, training=training)
        v = self.value_conv(ctx, training=training)
        y = dot_product_attention(flatten_hw(q), k[:, :, 0], v[:, :, 0], scale=True)
        return self.out_conv(unflatten_hw(y, size), training=training)

    def compute_output_shape(self, input_shape):
        pixel_shape = input_shape[0]
        return tuple(pixel_shape[:-1]) + (self.out_filters or pixel_shape[-1],)

    def get_config(self):
        config = super().get_config()
        config.update(
            key_filters=self.key_filters,
            out_filters=self.out_filters,
        )
        return config


@keras.saving.register_keras_serializable(package="iseg")
class ObjectContext(ConvBlock):
    """OCR context block: `[pixels, region_logits] -> object-context features` (same width
    as the pixels unless `out_filters` is given). Region logits at another resolution are
    bilinearly resized to the pixels' size first."""

    def __init__(
        self,
        key_filters=256,
        out_filters=None,
        scale=1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.key_filters = key_filters
        self.out_filters = out_filters
        self.scale = scale
        self.gather = SpatialGather(scale, dtype=self.dtype_policy, name="gather")
        self.attention = ObjectAttention(
            key_filters, out_filters, name="attention", **self.conv_options
        )

    def build(self, input_shape):
        pixel_shape, logit_shape = input_shape
        self.attention.build([pixel_shape, (pixel_shape[0], logit_shape[-1], pixel_shape[-1])])
        self.built = True

    def call(self, inputs, training=None):
        pixels, logits = inputs
        logits = resize(logits, spatial_shape(pixels), "bilinear", False)
        contexts = self.gather([pixels, logits])
        return self.attention([pixels, contexts], training=training)

    def compute_output_shape(self, input_shape):
        return self.attention.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            key_filters=self.key_filters,
            out_filters=self.out_filters,
            scale=self.scale,
        )
        return config
