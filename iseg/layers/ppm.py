"""Adaptive average pooling and the pyramid pooling module (PSPNet / UPerNet).

`adaptive_avg_pool2d` follows PyTorch's `AdaptiveAvgPool2d` bin boundaries: output bin `i`
of `b` along an axis of length `L` averages `[floor(i L / b), ceil((i + 1) L / b))`, so bins
overlap when `L` is not a multiple of `b`. It is computed as two small averaging matrices
(`b x L`) applied with einsum, which works for sizes unknown at trace time.
"""

import keras
import numpy as np
from keras import ops

from iseg.layers.conv_bn_act import ConvBlock, ConvBNAct
from iseg.ops import resize, spatial_shape


def _bin_matrix(length, bins, dtype):
    """[bins, length] matrix whose row i averages the positions of adaptive bin i."""
    if isinstance(length, int):  # static size: a constant
        weights = np.zeros((bins, length), "float32")
        for i in range(bins):
            start, end = (i * length) // bins, -((-(i + 1) * length) // bins)
            weights[i, start:end] = 1.0 / (end - start)
        return ops.convert_to_tensor(weights, dtype)
    idx = ops.arange(bins)
    start = (idx * length) // bins
    end = ((idx + 1) * length + bins - 1) // bins
    pos = ops.arange(length)
    inside = ops.logical_and(pos[None, :] >= start[:, None], pos[None, :] < end[:, None])
    weights = ops.cast(inside, "float32") / ops.cast(end - start, "float32")[:, None]
    return ops.cast(weights, dtype)


def adaptive_avg_pool2d(x, output_size):
    """Adaptive average pooling of NHWC `x` to `output_size` (int or (bins_h, bins_w))."""
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    bins_h, bins_w = (int(b) for b in output_size)
    if bins_h < 1 or bins_w < 1:
        raise ValueError(f"adaptive_avg_pool2d: output_size must be >= 1, got {output_size}")
    h, w = spatial_shape(x)
    in_dtype = keras.backend.standardize_dtype(x.dtype)
    dtype = "float32" if in_dtype in ("float16", "bfloat16") else in_dtype
    ph = _bin_matrix(h, bins_h, dtype)
    pw = _bin_matrix(w, bins_w, dtype)
    y = ops.einsum("ih,jw,nhwc->nijc", ph, pw, ops.cast(x, dtype))
    return ops.cast(y, in_dtype)


@keras.saving.register_keras_serializable(package="iseg")
class PPM(ConvBlock):
    """Pyramid pooling: for each bin size, adaptive-avg-pool -> ConvBNAct -> upsample.

    Returns `concat[x, branch_1, ..., branch_n]` (`include_input=True`, the UPerNet usage)
    or `concat[branches]`.

    Args:
        filters: channels of each branch ConvBNAct (512 in UPerNet).
        bins: pooled sizes (1, 2, 3, 6).
        kernel_size: 1 (mmseg / PSPNet) or 3 (CAR TF code's UPerNet).
        align_corners: of the bilinear upsampling (mmseg UPerNet: False).
    """

    def __init__(
        self,
        filters=512,
        bins=(1, 2, 3, 6),
        kernel_size=1,
        include_input=True,
        align_corners=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = filters
        self.bins = tuple(int(b) for b in bins)
        self.kernel_size = kernel_size
        self.include_input = include_input
        self.align_corners = align_corners
        self.branch_convs = [
            ConvBNAct(
                filters, kernel_size, name=f"conv_bin_{b}", **self.conv_options
            )
            for b in self.bins
        ]

    def build(self, input_shape):
        for b, conv in zip(self.bins, self.branch_convs):
            conv.build((input_shape[0], b, b, input_shape[-1]))
        self.built = True

    def call(self, x, training=None):
        size = spatial_shape(x)
        outs = [x] if self.include_input else []
        for b, conv in zip(self.bins, self.branch_convs):
            y = conv(adaptive_avg_pool2d(x, b), training=training)
            if b == 1:  # bilinear upsampling of a 1x1 map is a broadcast
                outs.append(y * ops.ones_like(x[..., :1]))
            else:
                outs.append(resize(y, size, "bilinear", self.align_corners))
        return ops.concatenate(outs, axis=-1)

    def compute_output_shape(self, input_shape):
        channels = self.filters * len(self.bins) + (input_shape[-1] if self.include_input else 0)
        return tuple(input_shape[:-1]) + (channels,)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            bins=list(self.bins),
            kernel_size=self.kernel_size,
            include_input=self.include_input,
            align_corners=self.align_corners,
        )
        return config
