"""CorrMatch's correlation head: propagates the main logits along learned pixel affinities.

On the deepest feature x (C5) of a batch with main logits `logits`:

    p   = Dropout2d(ReLU(BN(Conv3x3(x))))          (`channels` wide, conv with bias)
    f1  = Conv1x1(p), f2 = Conv1x1(p)               (K channels each, flattened to N = h*w)
    A   = softmax_j(f1_i . f2_j / sqrt(K))          ([B, N, N], each row sums to 1)
    out[:, j] = sum_i det[:, i] A_ij                (det: the logits resized to h x w, no gradient)

The layer returns `(out [B, h, w, K], A [B, N, N])`; the caller upsamples `out` to the
image size. CorrMatch (official code, SEMI.md §5) trains it with CE on labeled images and
the masked CE on unlabeled ones, and reads rows of A for its region propagation.
"""

import keras
from keras import ops

from iseg.layers.conv_bn_act import ConvBlock, ConvBNAct
from iseg.ops import resize, spatial_shape


@keras.saving.register_keras_serializable(package="iseg")
class CorrelationHead(ConvBlock):
    """Args:
      num_classes: K (width of f1, f2 and of the propagated logits).
      channels: width of the projection (256).
      dropout: Dropout2d rate after the projection (0.1).
      align_corners: resize convention of the logits to the feature size.
    """

    def __init__(self, num_classes, channels=256, dropout=0.1, align_corners=True, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.channels = int(channels)
        self.dropout_rate = float(dropout)
        self.align_corners = bool(align_corners)
        self.proj = ConvBNAct(channels, 3, use_bias=True, name="proj", **self.conv_options)
        self.drop = keras.layers.SpatialDropout2D(dropout, dtype=self.dtype_policy, name="drop")
        self.f1 = keras.layers.Conv2D(num_classes, 1, dtype=self.dtype_policy, name="f1")
        self.f2 = keras.layers.Conv2D(num_classes, 1, dtype=self.dtype_policy, name="f2")

    def build(self, feature_shape, logits_shape=None):
        self.proj.build(feature_shape)
        projected = tuple(feature_shape[:-1]) + (self.channels,)
        self.f1.build(projected)
        self.f2.build(projected)
        self.built = True

    def call(self, feature, logits, training=None):
        p = self.drop(self.proj(feature, training=training), training=training)
        h, w = spatial_shape(p)
        k = self.num_classes
        f1 = ops.reshape(self.f1(p), (-1, h * w, k))
        f2 = ops.reshape(self.f2(p), (-1, h * w, k))
        scores = ops.matmul(f1, ops.transpose(f2, (0, 2, 1))) / ops.sqrt(float(k))
        affinity = ops.softmax(ops.cast(scores, "float32"), axis=-1)
        det = resize(ops.cast(ops.stop_gradient(logits), "float32"), (h, w),
                     align_corners=self.align_corners)
        # out[:, j] = sum_i det[:, i] A_ij  ->  [B, N, K] = A^T @ det
        out = ops.matmul(ops.transpose(affinity, (0, 2, 1)), ops.reshape(det, (-1, h * w, k)))
        return ops.reshape(out, (-1, h, w, k)), affinity

    def compute_output_spec(self, feature, logits, training=None):
        b, h, w = feature.shape[:3]
        n = None if h is None or w is None else h * w
        return (keras.KerasTensor((b, h, w, self.num_classes), dtype="float32"),
                keras.KerasTensor((b, n, n), dtype="float32"))

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, channels=self.channels,
                      dropout=self.dropout_rate, align_corners=self.align_corners)
        return config
