"""Multi-head axial attention (METHODS.md 10.3, the authors' iSeg block of May 2023) and the
context module built on it (CARD's spatial token mixer, HFGD's context encoder).

`MultiHeadAxialAttention`: q, k = Conv1x1(filters, bias), v = Conv1x1(C, bias); per head h
(head dim d = filters / heads for q, k and C / heads for v):
    column map  A_col[n, w, a, b] = softmax_b(q[n, a, w] . k[n, b, w] / sqrt(d))
    row map     A_row[n, h, a, b] = softmax_b(q[n, h, a] . k[n, h, b] / sqrt(d))
    output      = A_row applied (along W) to (A_col applied (along H) to v).
Both maps come from the same q and k. Softmax in float32. `shared_init` starts q and k from
identical kernels (the TF-Keras-2 code); the Keras-3 code draws them independently.
"""

import keras
from keras import ops

from iseg.layers.axial_attention import ChannelizedAxialAttention
from iseg.layers.conv_bn_act import ConvBlock, ConvBNAct, ImageLevel
from iseg.layers.self_attention import SharedGlorotUniform

MIXERS = ("axial", "caa")


def _heads(x, num_heads):
    """[N, H, W, C] -> [N, H, W, heads, C / heads]."""
    return ops.reshape(x, tuple(ops.shape(x)[:3]) + (num_heads, x.shape[-1] // num_heads))


@keras.saving.register_keras_serializable(package="iseg")
class MultiHeadAxialAttention(keras.layers.Layer):
    """`[N, H, W, C] -> [N, H, W, C]` (no residual; see the module docstring).

    Args:
        filters: channels of q and k (None: the input channels).
        num_heads: heads (4); `filters` and C must be divisible by it.
        shared_init: q and k start from identical kernels.
    """

    def __init__(self, filters=None, num_heads=4, shared_init=True, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.num_heads = int(num_heads)
        self.shared_init = shared_init

    def build(self, input_shape):
        channels = int(input_shape[-1])
        filters = self.filters or channels
        for name, value in (("filters", filters), ("input channels", channels)):
            if value % self.num_heads:
                raise ValueError(
                    f"{self.name}: {name} ({value}) must be divisible by num_heads "
                    f"({self.num_heads})"
                )
        conv = dict(kernel_size=1, use_bias=True, dtype=self.dtype_policy)
        init = SharedGlorotUniform() if self.shared_init else "glorot_uniform"
        qk = dict(kernel_initializer=init, **conv)
        self.query_conv = keras.layers.Conv2D(filters, name="query", **qk)
        self.key_conv = keras.layers.Conv2D(filters, name="key", **qk)
        self.value_conv = keras.layers.Conv2D(channels, name="value", **conv)
        for layer in (self.query_conv, self.key_conv, self.value_conv):
            layer.build(input_shape)
        self.built = True

    def call(self, x):
        dtype = self.compute_dtype
        q = ops.cast(_heads(self.query_conv(x), self.num_heads), "float32")
        k = ops.cast(_heads(self.key_conv(x), self.num_heads), "float32")
        v = ops.cast(_heads(self.value_conv(x), self.num_heads), "float32")
        scale = ops.sqrt(ops.cast(q.shape[-1], "float32"))
        col = ops.softmax(ops.einsum("nawhd,nbwhd->nwhab", q, k) / scale, axis=-1)
        row = ops.softmax(ops.einsum("nhajd,nhbjd->nhjab", q, k) / scale, axis=-1)
        y = ops.einsum("nwhab,nbwhc->nawhc", col, v)
        y = ops.einsum("nhjab,nhbjc->nhajc", row, y)
        return ops.cast(ops.reshape(y, ops.shape(x)[:3] + (x.shape[-1],)), dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters, num_heads=self.num_heads, shared_init=self.shared_init
        )
        return config


@keras.saving.register_keras_serializable(package="iseg")
class ContextModule(ConvBlock):
    """Spatial token mixer with an image-level branch [INFERRED design, METHODS.md 3(b), 4(b)]:

        p = ConvBNAct(filters, 1x1)(x)
        y = p + mixer(p)            mixer: "axial" (MultiHeadAxialAttention, `num_heads`) or
                                    "caa" (ChannelizedAxialAttention(filters))
        out = ConvBNAct(filters, 1x1)(concat[y, ImageLevel(filters)(p)])
    """

    def __init__(
        self,
        filters=512,
        mixer="axial",
        num_heads=4,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if mixer not in MIXERS:
            raise ValueError(f"{self.name}: unknown mixer {mixer!r}. Valid mixers: "
                             f"{', '.join(MIXERS)}")
        self.filters = filters
        self.mixer_type = mixer
        self.num_heads = num_heads
        norm = self.conv_options
        self.projection = ConvBNAct(filters, 1, name="projection", **norm)
        if mixer == "axial":
            self.mixer = MultiHeadAxialAttention(
                num_heads=num_heads, dtype=self.dtype_policy, name="mixer"
            )
        else:
            self.mixer = ChannelizedAxialAttention(filters, name="mixer", **norm)
        self.image_level = ImageLevel(filters, name="image_level", **norm)
        self.fuse = ConvBNAct(filters, 1, name="fuse", **norm)

    def build(self, input_shape):
        shape = tuple(input_shape[:-1]) + (self.filters,)
        self.projection.build(input_shape)
        self.mixer.build(shape)
        self.image_level.build(shape)
        self.fuse.build(tuple(input_shape[:-1]) + (2 * self.filters,))
        self.built = True

    def call(self, x, training=None):
        p = self.projection(x, training=training)
        if self.mixer_type == "axial":
            y = p + self.mixer(p)
        else:
            y = p + self.mixer(p, training=training)
        y = ops.concatenate([y, self.image_level(p, training=training)], axis=-1)
        return self.fuse(y, training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            mixer=self.mixer_type,
            num_heads=self.num_heads,
        )
        return config
