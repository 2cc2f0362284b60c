"""ConvNeXt (Liu et al. 2022): patchify stem, 7x7 depthwise blocks, layer scale, OS32."""

import keras
from keras import ops

from iseg.backbones.common import DropPath, linear_drop_rates, out_size

CONVNEXT_SIZES = {
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "xlarge": ((3, 3, 27, 3), (256, 512, 1024, 2048)),
}


def _ln(epsilon, dtype, name):
    return keras.layers.LayerNormalization(epsilon=epsilon, dtype=dtype, name=name)


@keras.saving.register_keras_serializable(package="iseg")
class ConvNeXtDownsample(keras.layers.Layer):
    """Stem (`stem=True`: 4x4/4 conv then LayerNorm) or downsampling (LayerNorm then 2x2/2)."""

    def __init__(self, filters, stem=False, ln_epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.stem = stem
        self.ln_epsilon = ln_epsilon
        k = 4 if stem else 2
        self.conv = keras.layers.Conv2D(
            filters, k, strides=k, padding="valid", dtype=self.dtype_policy, name="conv"
        )
        self.norm = _ln(ln_epsilon, self.dtype_policy, "norm")

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if self.stem:
            self.conv.build(input_shape)
            self.norm.build(self.conv.compute_output_shape(input_shape))
        else:
            self.norm.build(input_shape)
            self.conv.build(input_shape)
        self.built = True

    def call(self, x):
        if self.stem:
            return self.norm(self.conv(x))
        return self.conv(self.norm(x))

    def compute_output_shape(self, input_shape):
        s = 4 if self.stem else 2
        return (
            input_shape[0],
            out_size(input_shape[1], s, ceil=False),
            out_size(input_shape[2], s, ceil=False),
            self.filters,
        )

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, stem=self.stem, ln_epsilon=self.ln_epsilon)
        return config


@keras.saving.register_keras_serializable(package="iseg")
class ConvNeXtBlock(keras.layers.Layer):
    """7x7 depthwise conv -> LayerNorm -> Dense(4C) -> GELU -> Dense(C) -> layer scale,
    stochastic depth, residual. `layer_scale_init=None` (or 0) disables layer scale."""

    def __init__(
        self,
        dim,
        drop_path_rate=0.0,
        layer_scale_init=1e-6,
        mlp_ratio=4,
        ln_epsilon=1e-6,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.dim = dim
        self.drop_path_rate = drop_path_rate
        self.layer_scale_init = layer_scale_init
        self.mlp_ratio = mlp_ratio
        self.ln_epsilon = ln_epsilon
        dt = self.dtype_policy
        self.dwconv = keras.layers.DepthwiseConv2D(7, padding="same", dtype=dt, name="dwconv")
        self.norm = _ln(ln_epsilon, dt, "norm")
        self.fc1 = keras.layers.Dense(mlp_ratio * dim, dtype=dt, name="fc1")
        self.fc2 = keras.layers.Dense(dim, dtype=dt, name="fc2")
        self.drop_path = DropPath(drop_path_rate, dtype=dt, name="drop_path")

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self.dwconv.build(input_shape)
        self.norm.build(input_shape)
        self.fc1.build(input_shape)
        self.fc2.build(input_shape[:-1] + (self.mlp_ratio * self.dim,))
        self.gamma = None
        if self.layer_scale_init:
            self.gamma = self.add_weight(
                name="gamma",
                shape=(self.dim,),
                initializer=keras.initializers.Constant(self.layer_scale_init),
            )
        self.built = True

    def call(self, x, training=None):
        y = self.dwconv(x)
        y = self.norm(y)
        y = self.fc2(ops.gelu(self.fc1(y), approximate=False))
        if self.gamma is not None:
            y = y * ops.cast(self.gamma, y.dtype)
        return x + self.drop_path(y, training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            dim=self.dim,
            drop_path_rate=self.drop_path_rate,
            layer_scale_init=self.layer_scale_init,
            mlp_ratio=self.mlp_ratio,
            ln_epsilon=self.ln_epsilon,
        )
        return config


def build_convnext(
    size="tiny",
    input_shape=(None, None, 3),
    depths=None,
    widths=None,
    drop_path_rate=0.0,
    layer_scale_init=1e-6,
    ln_epsilon=1e-6,
    final_norm=True,
    out_norms=False,
    name="convnext",
):
    """Functional ConvNeXt returning {"stem", "c2", "c3", "c4", "c5"}.

    "stem" is the OS4 patchify output (ConvNeXt has no OS2 feature); c2..c5 are the four
    stage outputs at OS4, 8, 16 and 32. `final_norm` applies the last LayerNorm to c5, as
    keras.applications' ConvNeXt without top does (timm: the `head.norm` weights).
    `out_norms` adds a LayerNorm to every endpoint c2..c4 as well (the segmentation
    variant of the paper; these new norms start at identity and are not in classification
    checkpoints).
    """
    if size not in CONVNEXT_SIZES:
        raise ValueError(f"ConvNeXt size must be one of {sorted(CONVNEXT_SIZES)}, got {size!r}")
    default_depths, default_widths = CONVNEXT_SIZES[size]
    depths = tuple(depths or default_depths)
    widths = tuple(widths or default_widths)
    if len(depths) != 4 or len(widths) != 4:
        raise ValueError(f"depths and widths need 4 stages, got {depths} and {widths}")
    rates = linear_drop_rates(drop_path_rate, depths)

    inputs = keras.Input(input_shape, name="image")
    x = ConvNeXtDownsample(widths[0], stem=True, ln_epsilon=ln_epsilon, name="stem")(inputs)
    endpoints = {"stem": x}
    k = 0
    for i, (n, dim) in enumerate(zip(depths, widths)):
        if i > 0:
            x = ConvNeXtDownsample(dim, ln_epsilon=ln_epsilon, name=f"downsample{i}")(x)
        for j in range(n):
            x = ConvNeXtBlock(
                dim, rates[k], layer_scale_init, ln_epsilon=ln_epsilon,
                name=f"stage{i + 1}_block{j + 1}",
            )(x)
            k += 1
        if i == 3 and (final_norm or out_norms):
            x = _ln(ln_epsilon, None, "norm")(x)
        elif out_norms:
            endpoints[f"c{i + 2}"] = _ln(ln_epsilon, None, f"out_norm{i + 1}")(x)
            continue
        endpoints[f"c{i + 2}"] = x
    return keras.Model(inputs, endpoints, name=name)
