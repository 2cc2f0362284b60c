"""Swin Transformer (Liu et al. 2021) for dense prediction: any input size, OS32.

Feature maps stay NHWC. Each block pads its input on the bottom/right to a multiple of
the window, cyclically shifts it by half a window in odd blocks, and masks attention
between pixels that come from different regions of the unshifted map (the mask is built
for the padded size, as in the segmentation code of the paper). Relative position bias
uses a ((2w-1)^2, heads) table indexed by the usual (dy + w - 1) * (2w - 1) + dx + w - 1.
"""

import numpy as np

import keras
from keras import ops

from iseg.backbones.common import DropPath, linear_drop_rates, out_size, pad_hw
from iseg.ops import spatial_shape

SWIN_SIZES = {
    "tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "small": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "base": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
    "large": (192, (2, 2, 18, 2), (6, 12, 24, 48)),
}


def relative_position_index(window):
    """[w*w, w*w] int array: index into the relative position bias table."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij"))
    coords = coords.reshape(2, -1)
    rel = coords[:, :, None] - coords[:, None, :]
    rel = rel.transpose(1, 2, 0) + (window - 1)
    return (rel[..., 0] * (2 * window - 1) + rel[..., 1]).astype("int32")


def window_partition(x, window):
    """[B, H, W, C] (H, W multiples of `window`) -> [B * nW, window * window, C]."""
    h, w = spatial_shape(x)
    c = x.shape[-1]
    x = ops.reshape(x, (-1, h // window, window, w // window, window, c))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (-1, window * window, c))


def window_merge(windows, h, w, window):
    """Inverse of `window_partition` for a padded size (h, w)."""
    c = windows.shape[-1]
    x = ops.reshape(windows, (-1, h // window, w // window, window, window, c))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (-1, h, w, c))


def shift_attention_mask(h, w, window, shift):
    """[nW, N, N] additive mask (0 or -100) for a shifted (h, w) map, h and w padded."""

    def regions(n):
        i = ops.arange(n)
        return ops.cast(i >= n - window, "int32") + ops.cast(i >= n - shift, "int32")

    ids = regions(h)[:, None] * 3 + regions(w)[None, :]
    ids = window_partition(ids[None, :, :, None], window)[..., 0]
    different = ops.not_equal(ids[:, :, None], ids[:, None, :])
    return ops.where(different, -100.0, 0.0)


@keras.saving.register_keras_serializable(package="iseg")
class SwinBlock(keras.layers.Layer):
    """(Shifted) window attention + MLP, both pre-norm with residuals, on NHWC maps."""

    def __init__(
        self,
        dim,
        num_heads,
        window_size=7,
        shift=False,
        mlp_ratio=4.0,
        qkv_bias=True,
        drop_path_rate=0.0,
        ln_epsilon=1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift = shift
        self.mlp_ratio = mlp_ratio
        self.qkv_bias = qkv_bias
        self.drop_path_rate = drop_path_rate
        self.ln_epsilon = ln_epsilon
        dt = self.dtype_policy
        self.norm1 = keras.layers.LayerNormalization(epsilon=ln_epsilon, dtype=dt, name="norm1")
        self.qkv = keras.layers.Dense(3 * dim, use_bias=qkv_bias, dtype=dt, name="qkv")
        self.proj = keras.layers.Dense(dim, dtype=dt, name="proj")
        self.norm2 = keras.layers.LayerNormalization(epsilon=ln_epsilon, dtype=dt, name="norm2")
        self.fc1 = keras.layers.Dense(int(dim * mlp_ratio), dtype=dt, name="fc1")
        self.fc2 = keras.layers.Dense(dim, dtype=dt, name="fc2")
        self.drop_path = DropPath(drop_path_rate, dtype=dt, name="drop_path")
        self._index = relative_position_index(window_size).reshape(-1)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        tokens = (None, None, self.dim)
        self.norm1.build(input_shape)
        self.qkv.build(tokens)
        self.proj.build(tokens)
        self.norm2.build(input_shape)
        self.fc1.build(input_shape)
        self.fc2.build(input_shape[:-1] + (int(self.dim * self.mlp_ratio),))
        self.relative_position_bias_table = self.add_weight(
            name="relative_position_bias_table",
            shape=((2 * self.window_size - 1) ** 2, self.num_heads),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        )
        self.built = True

    def relative_bias(self):
        """[heads, N, N] bias gathered from the table."""
        n = self.window_size * self.window_size
        bias = ops.take(self.relative_position_bias_table, ops.array(self._index), axis=0)
        return ops.transpose(ops.reshape(bias, (n, n, self.num_heads)), (2, 0, 1))

    def attention(self, windows, mask=None):
        """Multi-head self-attention within windows [B', N, C]; mask [nW, N, N] or None."""
        n = self.window_size * self.window_size
        heads, head_dim = self.num_heads, self.dim // self.num_heads
        qkv = ops.reshape(self.qkv(windows), (-1, n, 3, heads, head_dim))
        qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = q * ops.cast(head_dim**-0.5, q.dtype)
        attn = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2)))
        attn = attn + ops.cast(self.relative_bias(), attn.dtype)[None]
        if mask is not None:
            num_windows = ops.shape(mask)[0]
            attn = ops.reshape(attn, (-1, num_windows, heads, n, n))
            attn = attn + ops.cast(mask, attn.dtype)[None, :, None]
            attn = ops.reshape(attn, (-1, heads, n, n))
        attn = ops.softmax(attn, axis=-1)
        out = ops.transpose(ops.matmul(attn, v), (0, 2, 1, 3))
        return self.proj(ops.reshape(out, (-1, n, self.dim)))

    def call(self, x, training=None):
        ws = self.window_size
        h, w = spatial_shape(x)
        pad_h = (ws - h % ws) % ws
        pad_w = (ws - w % ws) % ws
        y = pad_hw(self.norm1(x), 0, pad_h, 0, pad_w)
        hp, wp = h + pad_h, w + pad_w
        shift = ws // 2 if self.shift else 0
        mask = None
        if shift:
            y = ops.roll(y, shift=(-shift, -shift), axis=(1, 2))
            mask = shift_attention_mask(hp, wp, ws, shift)
        y = window_merge(self.attention(window_partition(y, ws), mask), hp, wp, ws)
        if shift:
            y = ops.roll(y, shift=(shift, shift), axis=(1, 2))
        y = y[:, :h, :w, :]
        x = x + self.drop_path(y, training=training)
        y = self.fc2(ops.gelu(self.fc1(self.norm2(x)), approximate=False))
        return x + self.drop_path(y, training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            dim=self.dim,
            num_heads=self.num_heads,
            window_size=self.window_size,
            shift=self.shift,
            mlp_ratio=self.mlp_ratio,
            qkv_bias=self.qkv_bias,
            drop_path_rate=self.drop_path_rate,
            ln_epsilon=self.ln_epsilon,
        )
        return config


@keras.saving.register_keras_serializable(package="iseg")
class PatchEmbed(keras.layers.Layer):
    """Pad to a multiple of the patch size, patchify conv, LayerNorm."""

    def __init__(self, embed_dim, patch_size=4, ln_epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.ln_epsilon = ln_epsilon
        self.proj = keras.layers.Conv2D(
            embed_dim, patch_size, strides=patch_size, dtype=self.dtype_policy, name="proj"
        )
        self.norm = keras.layers.LayerNormalization(
            epsilon=ln_epsilon, dtype=self.dtype_policy, name="norm"
        )

    def build(self, input_shape):
        self.proj.build(tuple(input_shape))
        self.norm.build((None, None, None, self.embed_dim))
        self.built = True

    def call(self, x):
        p = self.patch_size
        h, w = spatial_shape(x)
        x = pad_hw(x, 0, (p - h % p) % p, 0, (p - w % p) % p)
        return self.norm(self.proj(x))

    def compute_output_shape(self, input_shape):
        p = self.patch_size
        return (
            input_shape[0],
            out_size(input_shape[1], p),
            out_size(input_shape[2], p),
            self.embed_dim,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            embed_dim=self.embed_dim, patch_size=self.patch_size, ln_epsilon=self.ln_epsilon
        )
        return config


@keras.saving.register_keras_serializable(package="iseg")
class PatchMerging(keras.layers.Layer):
    """Pad to even size, concatenate each 2x2 neighbourhood (order (0,0), (1,0), (0,1),
    (1,1) as (row, col)), LayerNorm over 4C, linear 4C -> `out_dim` (default 2C), no bias."""

    def __init__(self, dim, out_dim=None, ln_epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.dim = dim
        self.out_dim = out_dim or 2 * dim
        self.ln_epsilon = ln_epsilon
        self.norm = keras.layers.LayerNormalization(
            epsilon=ln_epsilon, dtype=self.dtype_policy, name="norm"
        )
        self.reduction = keras.layers.Dense(
            self.out_dim, use_bias=False, dtype=self.dtype_policy, name="reduction"
        )

    def build(self, input_shape):
        self.norm.build((None, None, None, 4 * self.dim))
        self.reduction.build((None, None, None, 4 * self.dim))
        self.built = True

    def call(self, x):
        h, w = spatial_shape(x)
        x = pad_hw(x, 0, h % 2, 0, w % 2)
        h2, w2 = (h + h % 2) // 2, (w + w % 2) // 2
        x = ops.reshape(x, (-1, h2, 2, w2, 2, self.dim))
        x = ops.transpose(x, (0, 1, 3, 4, 2, 5))
        x = ops.reshape(x, (-1, h2, w2, 4 * self.dim))
        return self.reduction(self.norm(x))

    def compute_output_shape(self, input_shape):
        return (
            input_shape[0],
            out_size(input_shape[1], 2),
            out_size(input_shape[2], 2),
            self.out_dim,
        )

    def get_config(self):
        config = super().get_config()
        config.update(dim=self.dim, out_dim=self.out_dim, ln_epsilon=self.ln_epsilon)
        return config


def build_swin(
    size="tiny",
    input_shape=(None, None, 3),
    window_size=7,
    embed_dim=None,
    depths=None,
    num_heads=None,
    mlp_ratio=4.0,
    drop_path_rate=0.0,
    final_norm=True,
    out_norms=False,
    ln_epsilon=1e-5,
    name="swin",
):
    """Functional Swin returning {"stem", "c2", "c3", "c4", "c5"}.

    "stem" is the OS4 patch embedding; c2..c5 are the stage outputs (C, 2C, 4C, 8C at OS4,
    8, 16, 32); `final_norm` applies the model's last LayerNorm to c5 (timm's
    `forward_features`). `out_norms` adds a LayerNorm to every endpoint c2..c4 as well
    (as the segmentation code of the paper; these start at identity and are not in
    classification checkpoints).
    """
    if size not in SWIN_SIZES:
        raise ValueError(f"Swin size must be one of {sorted(SWIN_SIZES)}, got {size!r}")
    d_embed, d_depths, d_heads = SWIN_SIZES[size]
    embed_dim = embed_dim or d_embed
    depths = tuple(depths or d_depths)
    num_heads = tuple(num_heads or d_heads)
    if len(depths) != 4 or len(num_heads) != 4:
        raise ValueError(f"depths and num_heads need 4 stages, got {depths} and {num_heads}")
    rates = linear_drop_rates(drop_path_rate, depths)

    inputs = keras.Input(input_shape, name="image")
    x = PatchEmbed(embed_dim, 4, ln_epsilon, name="patch_embed")(inputs)
    endpoints = {"stem": x}
    k = 0
    dim = embed_dim
    for i, (n, heads) in enumerate(zip(depths, num_heads)):
        if i > 0:
            x = PatchMerging(dim, ln_epsilon=ln_epsilon, name=f"merge{i}")(x)
            dim *= 2
        for j in range(n):
            x = SwinBlock(
                dim,
                heads,
                window_size,
                shift=j % 2 == 1,
                mlp_ratio=mlp_ratio,
                drop_path_rate=rates[k],
                ln_epsilon=ln_epsilon,
                name=f"stage{i + 1}_block{j + 1}",
            )(x)
            k += 1
        if i == 3 and (final_norm or out_norms):
            x = keras.layers.LayerNormalization(epsilon=ln_epsilon, name="norm")(x)
        elif out_norms:
            endpoints[f"c{i + 2}"] = keras.layers.LayerNormalization(
                epsilon=ln_epsilon, name=f"out_norm{i + 1}"
            )(x)
            continue
        endpoints[f"c{i + 2}"] = x
    return keras.Model(inputs, endpoints, name=name)
