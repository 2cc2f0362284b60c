"""HRNetV2 backbones (W18, W48): four parallel branches at OS4, 8, 16 and 32, fused
repeatedly (the timm / mmseg HRNet, without the classification head).

Layout (timm `hrnet_w*` = mmseg `HRNet`):
- stem: two 3x3 / 2 convs (64) with BN + ReLU (OS4); "stem" endpoint = the first (OS2);
- stage 1: 4 bottleneck blocks (64 -> 256);
- transitions: a branch whose width changes gets a 3x3 ConvBN + ReLU; a new branch is a
  3x3 / 2 ConvBN + ReLU on the last branch of the previous stage;
- stages 2..4: `modules` x (4 basic blocks per branch, then a fusion: branch i sums, for
  every branch j, j -> i = identity (j = i), 1x1 ConvBN + nearest upsampling (j > i), or
  (i - j) 3x3 / 2 ConvBNs with ReLU between them (j < i); ReLU after the sum).
- endpoints c2..c5 = the four branches. With `concat_branches=True` (default; "HRNetV2",
  mmseg's `resize_concat` of `fcn_hr*`) c5 is instead the four branches bilinearly resized
  to the OS4 branch (`align_corners=False`) and concatenated (15 * width channels).

Upsampling in the fusion is an integer nearest repeat cropped to the target size: exact
for inputs divisible by 32 (timm and mmseg agree there); for other sizes mmseg resizes
bilinearly instead.
"""

import keras
from keras import ops

from iseg.backbones.resnet import ResNetBlock, _apply, _bn, _build_chain, _conv
from iseg.ops import resize, spatial_shape

#: width -> (modules of stages 2, 3, 4); every HRNetV2 size has 4 blocks per branch.
HRNET_WIDTHS = {18: (1, 4, 3), 48: (1, 4, 3)}


@keras.saving.register_keras_serializable(package="iseg")
class ConvBNChain(keras.layers.Layer):
    """A chain of Conv (no bias, symmetric padding) + BN (+ ReLU) steps.

    `specs`: list of `[filters, kernel_size, stride, relu]`.
    """

    def __init__(self, specs, bn_momentum=0.9, bn_epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.specs = [list(s) for s in specs]
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        dt = self.dtype_policy
        self.convs = [
            _conv(f, k, s, 1, False, "symmetric", dt, f"conv{i + 1}")
            for i, (f, k, s, _) in enumerate(self.specs)
        ]
        self.bns = [_bn(bn_momentum, bn_epsilon, dt, f"bn{i + 1}") for i in range(len(specs))]

    def build(self, input_shape):
        _build_chain(zip(self.convs, self.bns), tuple(input_shape))
        self.built = True

    def call(self, x, training=None):
        for conv, bn, spec in zip(self.convs, self.bns, self.specs):
            x = bn(_apply(conv, x), training=training)
            if spec[3]:
                x = ops.relu(x)
        return x

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape)
        for conv in self.convs:
            shape = conv.compute_output_shape(shape)
        return shape

    def get_config(self):
        config = super().get_config()
        config.update(
            specs=self.specs, bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon
        )
        return config


def _upsample_to(x, factor, size):
    """Nearest upsampling by an integer factor, cropped to `size`."""
    x = ops.repeat(ops.repeat(x, factor, axis=1), factor, axis=2)
    return x[:, : size[0], : size[1], :]


@keras.saving.register_keras_serializable(package="iseg")
class HRFuse(keras.layers.Layer):
    """Fusion into branch `index`: `relu(sum_j path_j(x_j))` over the branch list."""

    def __init__(self, index, widths, bn_momentum=0.9, bn_epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.index = int(index)
        self.widths = [int(w) for w in widths]
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        i, out = self.index, self.widths[self.index]
        self.paths = {}
        for j, width in enumerate(self.widths):
            if j > i:
                specs = [[out, 1, 1, False]]
            elif j < i:
                specs = [[width, 3, 2, True]] * (i - j - 1) + [[out, 3, 2, False]]
            else:
                continue
            self.paths[j] = ConvBNChain(
                specs, bn_momentum, bn_epsilon, dtype=self.dtype_policy, name=f"from{j}"
            )

    def build(self, input_shape):
        for j, path in self.paths.items():
            path.build(tuple(input_shape[j]))
        self.built = True

    def call(self, branches, training=None):
        target = branches[self.index]
        size = spatial_shape(target)
        y = target
        for j, path in self.paths.items():
            z = path(branches[j], training=training)
            if j > self.index:
                z = _upsample_to(z, 2 ** (j - self.index), size)
            y = y + z
        return ops.relu(y)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[self.index])

    def get_config(self):
        config = super().get_config()
        config.update(
            index=self.index,
            widths=self.widths,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
        )
        return config


@keras.saving.register_keras_serializable(package="iseg")
class ResizeConcat(keras.layers.Layer):
    """Bilinearly resize every input to the first one's size and concatenate."""

    def __init__(self, align_corners=False, **kwargs):
        super().__init__(**kwargs)
        self.align_corners = align_corners

    def call(self, features):
        size = spatial_shape(features[0])
        return ops.concatenate(
            [features[0]]
            + [resize(f, size, "bilinear", self.align_corners) for f in features[1:]],
            axis=-1,
        )

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0][:-1]) + (sum(int(s[-1]) for s in input_shape),)

    def get_config(self):
        config = super().get_config()
        config.update(align_corners=self.align_corners)
        return config


def build_hrnet(
    width=18,
    input_shape=(None, None, 3),
    stem_width=64,
    stage1_width=64,
    modules=None,
    blocks=4,
    widths=None,
    concat_branches=True,
    bn_momentum=0.9,
    bn_epsilon=1e-5,
    name="hrnet",
):
    """Functional HRNetV2 returning {"stem", "c2", "c3", "c4", "c5"} (see module docstring).

    `width` picks the branch widths (w, 2w, 4w, 8w) and module counts of `HRNET_WIDTHS`;
    `modules` (stages 2..4), `blocks` (per branch) and `widths` override them for tiny test
    configurations. Stage 1 keeps 4 bottleneck blocks of `stage1_width` (x4 expansion).
    """
    if width not in HRNET_WIDTHS and widths is None:
        raise ValueError(f"HRNet width must be one of {sorted(HRNET_WIDTHS)}, got {width!r}")
    widths = tuple(widths or (width, 2 * width, 4 * width, 8 * width))
    modules = tuple(modules or HRNET_WIDTHS[width])
    if len(widths) != 4 or len(modules) != 3:
        raise ValueError(
            f"HRNet needs 4 branch widths and 3 module counts, got {widths}, {modules}"
        )
    norm = dict(bn_momentum=bn_momentum, bn_epsilon=bn_epsilon)
    block = dict(
        stride_conv="3x3", conv_bias=False, padding="symmetric", **norm
    )

    inputs = keras.Input(input_shape, name="image")
    stem = ConvBNChain([[stem_width, 3, 2, True]], name="stem1", **norm)(inputs)
    x = ConvBNChain([[64, 3, 2, True]], name="stem2", **norm)(stem)
    in_channels = 64
    for j in range(4):
        shortcut = "conv" if in_channels != 4 * stage1_width else "identity"
        x = ResNetBlock(
            stage1_width, "bottleneck", shortcut=shortcut, name=f"layer1_block{j + 1}", **block
        )(x)
        in_channels = 4 * stage1_width
    branches, channels = [x], [in_channels]
    for stage, num_modules in enumerate(modules, start=2):
        n = stage
        new = []
        for i in range(n):
            if i < len(branches) and channels[i] == widths[i]:
                new.append(branches[i])
                continue
            stride = 1 if i < len(branches) else 2  # a new branch: from the last one
            chain = ConvBNChain(
                [[widths[i], 3, stride, True]], name=f"transition{stage - 1}_{i}", **norm
            )
            new.append(chain(branches[min(i, len(branches) - 1)]))
        branches, channels = new, list(widths[:n])
        for m in range(num_modules):
            for i in range(n):
                for k in range(blocks):
                    name = f"stage{stage}_module{m + 1}_branch{i}_block{k + 1}"
                    branches[i] = ResNetBlock(widths[i], "basic", name=name, **block)(branches[i])
            branches = [
                HRFuse(i, widths[:n], name=f"stage{stage}_module{m + 1}_fuse{i}", **norm)(branches)
                for i in range(n)
            ]
    endpoints = {"stem": stem}
    endpoints.update({f"c{i + 2}": b for i, b in enumerate(branches)})
    if concat_branches:
        endpoints["c5"] = ResizeConcat(name="concat")(branches)
    return keras.Model(inputs, endpoints, name=name)
