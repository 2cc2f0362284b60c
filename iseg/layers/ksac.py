"""KSAC: kernel-sharing atrous convolution (METHODS.md 6(b)), keras.ops only.

An ASPP whose 3x3 atrous branches all use ONE kernel `W [3, 3, Cin, filters]` (no bias),
each rate with its own BatchNorm + ReLU: `b_r = ReLU(BN_r(conv(x, W, dilation=r)))`. With
the 1x1 branch and the image-pooling branch, the branches are fused (concatenation, or the
atrous branches summed first), projected by a ConvBNReLU 1x1 and dropped out. Weight tying
makes the gradient of `W` the sum of the branch gradients. Fusion details are INFERRED in
the spec (two third-party implementations disagree): `fusion="concat"` (default) or "sum".
"""

import keras
from keras import ops

import iseg.ops

from iseg.layers.conv_bn_act import BatchNormalization, ConvBlock, ConvBNAct, ImageLevel

FUSIONS = ("concat", "sum")


@keras.saving.register_keras_serializable(package="iseg")
class KernelSharingASPP(ConvBlock):
    """Kernel-sharing ASPP: `[N, H, W, Cin] -> [N, H, W, projection_filters]`.

    Args:
        filters: channels of every branch (256).
        rates: dilation rates sharing the kernel (OS16: 6, 12, 18; OS8: double them).
        fusion: "concat": concat[image pooling, 1x1, b_r...]; "sum": concat[image pooling,
            1x1, sum_r b_r].
        dropout: rate of the dropout after the projection (0.1).
        image_pooling, pixel_level: include the image-level / 1x1 branches.
        projection_filters: channels of the 1x1 projection (None: `filters`).
    """

    def __init__(
        self,
        filters=256,
        rates=(6, 12, 18),
        fusion="concat",
        dropout=0.1,
        image_pooling=True,
        pixel_level=True,
        projection_filters=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if fusion not in FUSIONS:
            raise ValueError(f"KernelSharingASPP fusion must be one of {FUSIONS}, got {fusion!r}")
        self.filters = filters
        self.rates = tuple(int(r) for r in rates)
        if not self.rates or any(r < 1 for r in self.rates):
            raise ValueError(f"KernelSharingASPP rates must be positive integers, got {rates!r}")
        self.fusion = fusion
        self.dropout_rate = dropout
        self.image_pooling = image_pooling
        self.pixel_level = pixel_level
        self.projection_filters = projection_filters
        norm = self.conv_options
        self.image_branch = (ImageLevel(filters, name="image_pooling", **norm)
                             if image_pooling else None)
        self.pixel_branch = ConvBNAct(filters, 1, name="conv_1x1", **norm) if pixel_level else None
        self.rate_bns = [
            BatchNormalization(
                momentum=self.bn_momentum, epsilon=self.bn_epsilon, dtype=self.dtype_policy,
                name=f"bn_rate_{r}",
            )
            for r in self.rates
        ]
        self.projection = ConvBNAct(projection_filters or filters, 1, name="projection", **norm)
        self.dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy, name="dropout")

    @property
    def num_fused(self):
        atrous = len(self.rates) if self.fusion == "concat" else 1
        return int(self.image_pooling) + int(self.pixel_level) + atrous

    def build(self, input_shape):
        self.shared_kernel = self.add_weight(
            shape=(3, 3, int(input_shape[-1]), self.filters),
            initializer=self.kernel_initializer,
            name="shared_kernel",
        )
        out_shape = tuple(input_shape[:-1]) + (self.filters,)
        for bn in self.rate_bns:
            bn.build(out_shape)
        for branch in (self.image_branch, self.pixel_branch):
            if branch is not None:
                branch.build(input_shape)
        self.projection.build(tuple(input_shape[:-1]) + (self.filters * self.num_fused,))
        self.built = True

    def atrous_branches(self, x, training=None):
        """The per-rate outputs `ReLU(BN_r(conv(x, W, dilation=r)))`."""
        kernel = ops.cast(self.shared_kernel, x.dtype)
        convs = [iseg.ops.atrous_conv(x, kernel, r) for r in self.rates]
        return [ops.relu(bn(c, training=training)) for c, bn in zip(convs, self.rate_bns)]

    def call(self, x, training=None):
        branches = (self.image_branch, self.pixel_branch)
        outs = [b(x, training=training) for b in branches if b is not None]
        atrous = self.atrous_branches(x, training=training)
        if self.fusion == "sum":
            total = atrous[0]
            for branch in atrous[1:]:
                total = total + branch
            atrous = [total]
        y = ops.concatenate(outs + atrous, axis=-1)
        y = self.projection(y, training=training)
        return self.dropout(y, training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.projection_filters or self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            rates=list(self.rates),
            fusion=self.fusion,
            dropout=self.dropout_rate,
            image_pooling=self.image_pooling,
            pixel_level=self.pixel_level,
            projection_filters=self.projection_filters,
        )
        return config
