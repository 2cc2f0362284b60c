"""Feature pyramid network: lateral 1x1 convs, top-down upsample-and-add, 3x3 output convs."""

import keras

from iseg.layers.conv_bn_act import ConvBlock, ConvBNAct
from iseg.ops import resize, spatial_shape


@keras.saving.register_keras_serializable(package="iseg")
class FPN(ConvBlock):
    """Called on a list of feature maps ordered fine to coarse (e.g. [c2, c3, c4, c5]);
    returns the list of merged maps in the same order, each with `filters` channels.

    For every level: `lateral_i = ConvBNAct(filters, 1x1)(x_i)`; top-down, for i from the
    second-coarsest to the finest: `lateral_i += upsample(lateral_{i+1})`; then
    `out_i = ConvBNAct(filters, 3x3)(lateral_i)`.

    With `process_top=False` the coarsest input is used as its own lateral and output
    unchanged (it must already have `filters` channels): UPerNet, whose top level is the
    PPM bottleneck output (mmseg UPerHead, CAR TF code). With `output_convs=False` the merged
    laterals are returned without the 3x3 convs (the authors' iSeg `FeaturePyramidNetwork`,
    which feeds a `SemanticFPN`).
    """

    def __init__(
        self,
        filters=256,
        process_top=True,
        align_corners=False,
        output_convs=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = filters
        self.process_top = process_top
        self.output_convs_enabled = output_convs
        self.align_corners = align_corners

    def build(self, input_shape):
        shapes = list(input_shape)
        if len(shapes) < 2:
            raise ValueError(f"{self.name}: FPN needs at least 2 feature maps, got {len(shapes)}")
        if not self.process_top and int(shapes[-1][-1]) != self.filters:
            raise ValueError(
                f"{self.name}: with process_top=False the coarsest input must have "
                f"{self.filters} channels, got {shapes[-1][-1]}"
            )
        norm = self.conv_options
        num = len(shapes) if self.process_top else len(shapes) - 1
        self.lateral_convs = []
        self.output_convs = []
        for i in range(num):
            lateral = ConvBNAct(self.filters, 1, name=f"lateral_{i}", **norm)
            lateral.build(shapes[i])
            self.lateral_convs.append(lateral)
            if self.output_convs_enabled:
                out = ConvBNAct(self.filters, 3, name=f"output_{i}", **norm)
                out.build(tuple(shapes[i][:-1]) + (self.filters,))
                self.output_convs.append(out)
        self.built = True

    def call(self, features, training=None):
        features = list(features)
        laterals = [conv(f, training=training) for conv, f in zip(self.lateral_convs, features)]
        if not self.process_top:
            laterals.append(features[-1])
        for i in range(len(laterals) - 2, -1, -1):
            size = spatial_shape(laterals[i])
            laterals[i] = laterals[i] + resize(
                laterals[i + 1], size, "bilinear", self.align_corners
            )
        if not self.output_convs_enabled:
            return laterals
        outs = [conv(lat, training=training) for conv, lat in zip(self.output_convs, laterals)]
        if not self.process_top:
            outs.append(laterals[-1])
        return outs

    def compute_output_shape(self, input_shape):
        return [tuple(s[:-1]) + (self.filters,) for s in input_shape]

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            process_top=self.process_top,
            align_corners=self.align_corners,
            output_convs=self.output_convs_enabled,
        )
        return config


@keras.saving.register_keras_serializable(package="iseg")
class SemanticFPN(ConvBlock):
    """Semantic FPN fusion (the authors' iSeg `SemanticPyramidNetworkBlock_V2`, METHODS.md
    10.4 item 3), called on a list of maps ordered fine to coarse:

        level i (0 = finest): max(1, i) x [ConvBNAct(filters, 3x3), then for i > 0 a
        bilinear resize to the next finer level's size]; the levels are summed at the finest
        size, then ConvBNAct(filters, 1x1).
    """

    def __init__(self, filters=128, align_corners=False, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.align_corners = align_corners

    def build(self, input_shape):
        norm = self.conv_options
        self.level_convs = []
        for i, shape in enumerate(input_shape):
            convs = []
            for j in range(max(1, i)):
                conv = ConvBNAct(self.filters, 3, name=f"level{i}_conv{j}", **norm)
                conv.build(tuple(shape[:-1]) + ((shape[-1] if j == 0 else self.filters),))
                convs.append(conv)
            self.level_convs.append(convs)
        self.fuse = ConvBNAct(self.filters, 1, name="fuse", **norm)
        self.fuse.build(tuple(input_shape[0][:-1]) + (self.filters,))
        self.built = True

    def call(self, features, training=None):
        sizes = [spatial_shape(f) for f in features]
        total = None
        for i, (convs, x) in enumerate(zip(self.level_convs, features)):
            for j, conv in enumerate(convs):
                x = conv(x, training=training)
                if i > 0:
                    x = resize(x, sizes[i - 1 - j], "bilinear", self.align_corners)
            total = x if total is None else total + x
        return self.fuse(total, training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0][:-1]) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            align_corners=self.align_corners,
        )
        return config
