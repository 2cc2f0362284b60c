"""CorrMatch's region propagation (SEMI.md section 5; docs/semi_supervised.md).

The correlation head (`iseg.layers.correlation.CorrelationHead`) gives a pixel affinity
A [B, N, N] (rows sum to 1, N = h*w feature pixels). As the official code does:

1. `query_rows`: M = 128 random rows of A (indices uniform in [0, N - 1), the same for
   every image of the batch), no gradient;
2. `row_regions`: each row reshaped to h x w, upsampled bilinearly (align corners) to the
   image size, min-max normalised over its pixels and thresholded at > 0.5: M binary
   regions per image (a constant row gives an empty region);
3. `propagate`: for each image and region R (outside the CutMix box, not ignored), with
   S = R and conf >= tau: if |S| > 0, |S| / |R| >= tau and the majority class of the
   targets in S holds more than a fraction tau of S, every target in R becomes that class
   and R joins the loss mask. Regions are visited in order and each sees the targets the
   previous ones wrote (the code updates them in place). The mask returned is the union of
   the propagated regions and the thresholded mask.

TensorFlow code (a `tf.while_loop` over the regions), usable inside `tf.function`.
"""

import tensorflow as tf

from iseg.ops import resize


def query_rows(affinity, seed, num_regions=128):
    """(rows [B, M, N], index int32 [M]): `num_regions` rows of `affinity` [B, N, N] drawn
    uniformly from [0, N - 1) with the stateless `seed`; no gradient."""
    n = tf.shape(affinity)[1]
    index = tf.random.stateless_uniform([num_regions], seed, minval=0, maxval=n - 1,
                                        dtype=tf.int32)
    return tf.gather(tf.stop_gradient(affinity), index, axis=1), index


def row_regions(rows, feature_size, size):
    """bool [B, M, H, W]: each row of `rows` [B, M, h*w] (`feature_size` = (h, w)) resized
    to `size` = (H, W) (bilinear, align corners), min-max normalised, > 0.5."""
    b, m = tf.shape(rows)[0], tf.shape(rows)[1]
    h, w = feature_size
    maps = resize(tf.reshape(tf.cast(rows, tf.float32), [-1, h, w, 1]), size,
                  align_corners=True)
    maps = tf.reshape(maps, [b, m, -1])
    low = tf.reduce_min(maps, axis=-1, keepdims=True)
    high = tf.reduce_max(maps, axis=-1, keepdims=True)
    regions = (maps - low) / (high - low) > 0.5  # 0 / 0 = NaN: an empty region
    return tf.reshape(regions, [b, m, size[0], size[1]])


def propagate(regions, label, conf, ignore, tau, num_classes, box=None):
    """(label int32 [B, H, W], mask bool [B, H, W]) after CorrMatch's propagation (module
    docstring) of the targets `label` with confidences `conf` over `regions` [B, M, H, W];
    `ignore` True for ignored pixels, `box` True inside the CutMix box (None: no box)."""
    tau = tf.cast(tau, tf.float32)
    outside = tf.logical_not(ignore)
    if box is not None:
        outside = tf.logical_and(outside, tf.logical_not(box))
    keep = tf.logical_and(conf >= tau, tf.logical_not(ignore))
    region = tf.logical_and(regions, outside[:, None])
    sure = tf.logical_and(region, keep[:, None])
    n_sure = tf.reduce_sum(tf.cast(sure, tf.float32), axis=[2, 3])
    n_region = tf.reduce_sum(tf.cast(region, tf.float32), axis=[2, 3])
    candidate = tf.logical_and(n_sure > 0, tf.math.divide_no_nan(n_sure, n_region) >= tau)

    def body(m, label, mask):
        counts = tf.reduce_sum(tf.one_hot(label, num_classes)
                               * tf.cast(sure[:, m], tf.float32)[..., None], axis=[1, 2])
        top = tf.argmax(counts, axis=-1, output_type=tf.int32)
        share = tf.math.divide_no_nan(tf.reduce_max(counts, axis=-1), n_sure[:, m])
        apply = tf.logical_and(candidate[:, m], share > tau)
        update = tf.logical_and(region[:, m], apply[:, None, None])
        return m + 1, tf.where(update, top[:, None, None], label), tf.logical_or(mask, update)

    _, label, mask = tf.while_loop(
        lambda m, *_: m < tf.shape(regions)[1], body,
        (tf.constant(0), tf.cast(label, tf.int32), keep))
    return label, mask
