"""ResNet v1 backbones: 7x7 or deep 3x3 stem, stride in the first or last block, dilation.

Layout options (see docs/backbones.md):
- `stem="v1"`: 7x7/2 conv (64) + BN + ReLU; `stem="deep"`: three 3x3 convs
  (w, w, 2w; first stride 2), "v1c" / "v1-beta".
- `stride_in="first"` (torchvision, timm, keras.applications): the first block of conv3..conv5
  downsamples, with a strided 1x1 projection shortcut. `stride_in="last"` (TF-slim, the
  original): the last block of conv2..conv4 downsamples and its identity shortcut is a 2x2
  average pool (SAME, padding excluded from the mean).
- `stride_conv="3x3"` (torchvision v1.5, timm, slim) or `"1x1"` (keras.applications, Caffe):
  which conv of a bottleneck carries the stride.
- `output_stride` 8/16/32: a block whose stride would pass the target keeps stride 1 and it
  and every later block multiply their dilation by that stride; `multi_grid` then multiplies
  the dilation of the blocks of conv5 (rates 4, 8, 16 for OS8 and 2, 4, 8 for OS16 with the
  default (1, 2, 4)).
"""

import keras
from keras import ops

from iseg.backbones.common import DropPath, linear_drop_rates, out_size, pad_hw
from iseg.layers.conv_bn_act import BatchNormalization, Conv2D

DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def _conv(filters, kernel, stride, dilation, use_bias, padding, dtype, name):
    explicit = padding == "symmetric" and stride > 1
    return Conv2D(
        filters,
        kernel,
        strides=stride,
        dilation_rate=dilation,
        padding="valid" if explicit else "same",
        use_bias=use_bias,
        kernel_initializer="he_normal",
        dtype=dtype,
        name=name,
    )


def _apply(conv, x):
    """Run `conv`, padding symmetrically first when it was built with 'valid' padding."""
    if conv.padding == "valid" and conv.kernel_size[0] > 1:
        k = conv.kernel_size[0]
        d = conv.dilation_rate[0]
        total = d * (k - 1)
        x = pad_hw(x, total // 2, total - total // 2, total // 2, total - total // 2)
    return conv(x)


def _bn(momentum, epsilon, dtype, name):
    return BatchNormalization(
        momentum=momentum, epsilon=epsilon, dtype=dtype, name=name
    )


def _build_chain(pairs, input_shape):
    """Build (conv, bn) pairs in sequence, returning the final output shape."""
    shape = input_shape
    for conv, bn in pairs:
        if conv.padding == "valid" and conv.kernel_size[0] > 1:
            total = conv.dilation_rate[0] * (conv.kernel_size[0] - 1)
            shape = (
                shape[0],
                None if shape[1] is None else shape[1] + total,
                None if shape[2] is None else shape[2] + total,
                shape[3],
            )
        conv.build(shape)
        shape = conv.compute_output_shape(shape)
        bn.build(shape)
    return shape


@keras.saving.register_keras_serializable(package="iseg")
class ResNetStem(keras.layers.Layer):
    """Stem up to OS2 (before the max pool): `v1` 7x7 conv or `deep` three 3x3 convs."""

    def __init__(
        self,
        stem="v1",
        stem_width=64,
        conv_bias=False,
        padding="symmetric",
        bn_momentum=0.9,
        bn_epsilon=1.001e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if stem not in ("v1", "deep"):
            raise ValueError(f"stem must be 'v1' or 'deep', got {stem!r}")
        if padding not in ("symmetric", "same"):
            raise ValueError(f"padding must be 'symmetric' or 'same', got {padding!r}")
        self.stem = stem
        self.stem_width = stem_width
        self.conv_bias = conv_bias
        self.padding = padding
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        dt = self.dtype_policy
        if stem == "v1":
            specs = [(stem_width, 7, 2)]
        else:
            specs = [(stem_width, 3, 2), (stem_width, 3, 1), (2 * stem_width, 3, 1)]
        self.convs = [
            _conv(f, k, s, 1, conv_bias, padding, dt, f"conv{i + 1}")
            for i, (f, k, s) in enumerate(specs)
        ]
        self.bns = [
            _bn(bn_momentum, bn_epsilon, dt, f"bn{i + 1}") for i in range(len(specs))
        ]

    @property
    def out_channels(self):
        return self.stem_width * (1 if self.stem == "v1" else 2)

    def build(self, input_shape):
        _build_chain(zip(self.convs, self.bns), tuple(input_shape))
        self.built = True

    def call(self, x, training=None):
        for conv, bn in zip(self.convs, self.bns):
            x = ops.relu(bn(_apply(conv, x), training=training))
        return x

    def compute_output_shape(self, input_shape):
        return (
            input_shape[0],
            out_size(input_shape[1], 2),
            out_size(input_shape[2], 2),
            self.out_channels,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            stem=self.stem,
            stem_width=self.stem_width,
            conv_bias=self.conv_bias,
            padding=self.padding,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
        )
        return config


@keras.saving.register_keras_serializable(package="iseg")
class StemPool(keras.layers.Layer):
    """3x3 / 2 max pool after the stem (zero padding is exact after the ReLU)."""

    def __init__(self, padding="symmetric", **kwargs):
        super().__init__(**kwargs)
        self.padding = padding

    def call(self, x):
        if self.padding == "symmetric":
            x = pad_hw(x, 1, 1, 1, 1)
            return ops.max_pool(x, 3, 2, padding="valid")
        return ops.max_pool(x, 3, 2, padding="same")

    def compute_output_shape(self, input_shape):
        return (
            input_shape[0],
            out_size(input_shape[1], 2),
            out_size(input_shape[2], 2),
            input_shape[3],
        )

    def get_config(self):
        config = super().get_config()
        config.update(padding=self.padding)
        return config


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="iseg")
class CaffeInput(keras.layers.Layer):
    """ImageNet-normalised RGB input -> the "caffe" input of keras.applications ResNet
    weights (BGR, 0..255, minus the Caffe mean). Exact: it acts before any padding."""

    def call(self, x):
        std = ops.convert_to_tensor([255.0 * s for s in IMAGENET_STD], dtype=x.dtype)
        mean = ops.convert_to_tensor([255.0 * m for m in IMAGENET_MEAN], dtype=x.dtype)
        caffe = ops.convert_to_tensor(CAFFE_MEAN_BGR, dtype=x.dtype)
        return ops.flip(x * std + mean, axis=-1) - caffe

    def compute_output_shape(self, input_shape):
        return input_shape


SHORTCUTS = ("identity", "conv", "avg_conv", "avg_pool")


@keras.saving.register_keras_serializable(package="iseg")
class ResNetBlock(keras.layers.Layer):
    """Bottleneck (1x1, 3x3, 1x1; 4x expansion) or basic (3x3, 3x3) residual block.

    `shortcut`: "identity"; "conv" (strided 1x1 conv + BN); "avg_conv" (2x2 average pool
    then 1x1 conv + BN, ResNet-D); "avg_pool" (2x2 average pool when strided, the slim
    identity shortcut). `stride_conv` picks the conv that carries the stride ("3x3" or
    "1x1"). `dilation` applies to the 3x3 conv(s).
    """

    def __init__(
        self,
        filters,
        kind="bottleneck",
        stride=1,
        dilation=1,
        shortcut="identity",
        stride_conv="3x3",
        conv_bias=False,
        padding="symmetric",
        bn_momentum=0.9,
        bn_epsilon=1.001e-5,
        drop_path_rate=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if kind not in ("bottleneck", "basic"):
            raise ValueError(f"block kind must be 'bottleneck' or 'basic', got {kind!r}")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
        if stride_conv not in ("3x3", "1x1"):
            raise ValueError(f"stride_conv must be '3x3' or '1x1', got {stride_conv!r}")
        self.filters = filters
        self.kind = kind
        self.stride = stride
        self.dilation = dilation
        self.shortcut = shortcut
        self.stride_conv = stride_conv
        self.conv_bias = conv_bias
        self.padding = padding
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.drop_path_rate = drop_path_rate
        dt = self.dtype_policy

        def bn(name):
            return _bn(bn_momentum, bn_epsilon, dt, name)

        if kind == "bottleneck":
            s1 = stride if stride_conv == "1x1" else 1
            s3 = stride if stride_conv == "3x3" else 1
            self.convs = [
                _conv(filters, 1, s1, 1, conv_bias, padding, dt, "conv1"),
                _conv(filters, 3, s3, dilation, conv_bias, padding, dt, "conv2"),
                _conv(4 * filters, 1, 1, 1, conv_bias, padding, dt, "conv3"),
            ]
        else:
            self.convs = [
                _conv(filters, 3, stride, dilation, conv_bias, padding, dt, "conv1"),
                _conv(filters, 3, 1, dilation, conv_bias, padding, dt, "conv2"),
            ]
        self.bns = [bn(f"bn{i + 1}") for i in range(len(self.convs))]
        self.shortcut_conv = None
        self.shortcut_bn = None
        if shortcut in ("conv", "avg_conv"):
            sc_stride = stride if shortcut == "conv" else 1
            self.shortcut_conv = _conv(
                self.out_channels, 1, sc_stride, 1, conv_bias, padding, dt, "shortcut_conv"
            )
            self.shortcut_bn = bn("shortcut_bn")
        self.drop_path = DropPath(drop_path_rate, dtype=dt, name="drop_path")

    @property
    def out_channels(self):
        return self.filters * (4 if self.kind == "bottleneck" else 1)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        _build_chain(zip(self.convs, self.bns), input_shape)
        if self.shortcut_conv is not None:
            _build_chain([(self.shortcut_conv, self.shortcut_bn)], input_shape)
        self.built = True

    def _pool(self, x):
        if self.stride == 1:
            return x
        return ops.average_pool(x, self.stride, self.stride, padding="same")

    def call(self, x, training=None):
        if self.shortcut == "conv":
            short = self.shortcut_bn(self.shortcut_conv(x), training=training)
        elif self.shortcut == "avg_conv":
            short = self.shortcut_bn(self.shortcut_conv(self._pool(x)), training=training)
        elif self.shortcut == "avg_pool":
            short = self._pool(x)
        else:
            short = x
        y = x
        last = len(self.convs) - 1
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            y = bn(_apply(conv, y), training=training)
            if i < last:
                y = ops.relu(y)
        return ops.relu(short + self.drop_path(y, training=training))

    def compute_output_shape(self, input_shape):
        return (
            input_shape[0],
            out_size(input_shape[1], self.stride),
            out_size(input_shape[2], self.stride),
            self.out_channels,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            kind=self.kind,
            stride=self.stride,
            dilation=self.dilation,
            shortcut=self.shortcut,
            stride_conv=self.stride_conv,
            conv_bias=self.conv_bias,
            padding=self.padding,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            drop_path_rate=self.drop_path_rate,
        )
        return config


def block_layout(depths, stride_in="first", output_stride=32, multi_grid=None):
    """Per-block (stride, dilation) for each of the four stages, following the rule above.

    Returns a list of four lists of (stride, dilation) tuples.
    """
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
    if stride_in not in ("first", "last"):
        raise ValueError(f"stride_in must be 'first' or 'last', got {stride_in!r}")
    layout = []
    current, rate = 4, 1
    for stage, n in enumerate(depths):
        blocks = []
        for j in range(n):
            if stride_in == "first":
                stride = 2 if (stage > 0 and j == 0) else 1
            else:
                stride = 2 if (stage < 3 and j == n - 1) else 1
            if stride > 1:
                if current >= output_stride:
                    rate *= stride
                    stride = 1
                else:
                    current *= stride
            blocks.append((stride, rate))
        layout.append(blocks)
    if multi_grid:
        grid = tuple(multi_grid)
        layout[3] = [(s, d * grid[j % len(grid)]) for j, (s, d) in enumerate(layout[3])]
    return layout


def build_resnet(
    depth=50,
    input_shape=(None, None, 3),
    stem="v1",
    stem_width=64,
    stride_in="first",
    stride_conv="3x3",
    conv_bias=False,
    avg_down=False,
    output_stride=32,
    multi_grid=None,
    padding="symmetric",
    bn_momentum=0.9,
    bn_epsilon=1.001e-5,
    drop_path_rate=0.0,
    depths=None,
    widths=None,
    input_convention=None,
    name="resnet",
):
    """Functional ResNet returning {"stem", "c2", "c3", "c4", "c5"}.

    `depths` / `widths` override the blocks per stage and the bottleneck widths (64, 128,
    256, 512) for tiny test configurations. `avg_down` uses the ResNet-D projection
    shortcut (average pool then 1x1 conv). `input_convention="caffe"` converts the
    ImageNet-normalised input to the BGR mean-subtracted input that keras.applications
    ResNet weights were trained with (set automatically when such weights are loaded), so
    every backbone takes the same "imagenet" normalisation.
    """
    if input_convention not in (None, "caffe"):
        raise ValueError(f"input_convention must be None or 'caffe', got {input_convention!r}")
    if depth not in DEPTHS:
        raise ValueError(f"ResNet depth must be one of {sorted(DEPTHS)}, got {depth!r}")
    kind, default_depths = DEPTHS[depth]
    depths = tuple(depths or default_depths)
    widths = tuple(widths or (64, 128, 256, 512))
    if len(depths) != 4 or len(widths) != 4:
        raise ValueError(f"depths and widths need 4 stages, got {depths} and {widths}")
    layout = block_layout(depths, stride_in, output_stride, multi_grid)
    expansion = 4 if kind == "bottleneck" else 1
    rates = linear_drop_rates(drop_path_rate, depths)

    inputs = keras.Input(input_shape, name="image")
    stem_layer = ResNetStem(
        stem, stem_width, conv_bias, padding, bn_momentum, bn_epsilon, name="stem"
    )
    x = CaffeInput(name="caffe_input")(inputs) if input_convention == "caffe" else inputs
    x = stem_layer(x)
    endpoints = {"stem": x}
    x = StemPool(padding, name="stem_pool")(x)
    in_channels = stem_layer.out_channels
    k = 0
    for stage, blocks in enumerate(layout):
        out_channels = widths[stage] * expansion
        for j, (stride, dilation) in enumerate(blocks):
            nominal_stride = (stride_in == "first" and stage > 0 and j == 0) or (
                stride_in == "last" and stage < 3 and j == len(blocks) - 1
            )
            if in_channels != out_channels or (stride_in == "first" and nominal_stride):
                shortcut = "avg_conv" if avg_down else "conv"
            elif stride_in == "last" and nominal_stride:
                shortcut = "avg_pool"
            else:
                shortcut = "identity"
            if stride_in == "last" and stage < 3 and j == len(blocks) - 1:
                endpoints[f"c{stage + 2}"] = x
            x = ResNetBlock(
                widths[stage],
                kind,
                stride,
                dilation,
                shortcut,
                stride_conv,
                conv_bias,
                padding,
                bn_momentum,
                bn_epsilon,
                rates[k],
                name=f"conv{stage + 2}_block{j + 1}",
            )(x)
            in_channels = out_channels
            k += 1
        endpoints.setdefault(f"c{stage + 2}", x)
    return keras.Model(inputs, endpoints, name=name)

