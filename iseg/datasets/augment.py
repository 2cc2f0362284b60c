"""Training augmentation on one decoded example, in TensorFlow ops.

Order (as in the reference TF stack): random scale -> brightness -> optional photometric
distortion -> pad bottom/right to the crop (image: mean, label: ignore) -> random crop ->
horizontal flip.

Scale, pad, crop and flip are fused into one sampling step: for every pixel of the output
crop we compute where it comes from in the source image under an align-corners resize to
the scaled size (bilinear for the image, nearest for the label), whether it falls into the
padding, and mirror the column plan for a flip. Only the crop's pixels are computed, so a
2x scale of a large image costs no more than the crop itself; the result equals resizing
the whole image, padding, cropping and flipping (up to float rounding of the bilinear
weights). Brightness and photometric changes are applied to the valid crop pixels;
the photometric contrast uses the mean of the valid crop pixels.

All randomness is drawn from stateless ops seeded per example, so a fixed seed gives the
same crops no matter how many parallel calls run.
"""

import tensorflow as tf


def axis_plan(in_len, scaled_len, offset, out_len):
    """Sampling plan along one axis.

    Output positions ``offset .. offset + out_len - 1`` of an align-corners resize
    ``in_len -> scaled_len``; positions ``>= scaled_len`` are padding. Returns
    (lo, hi, weight, nearest, valid) with indices into the source axis.
    """
    j = offset + tf.range(out_len)
    valid = j < scaled_len
    scale = tf.cast(in_len - 1, tf.float64) / tf.cast(tf.maximum(scaled_len - 1, 1), tf.float64)
    src = tf.minimum(tf.cast(j, tf.float64) * scale, tf.cast(in_len - 1, tf.float64))
    floor = tf.floor(src)
    lo = tf.cast(floor, tf.int32)
    hi = tf.minimum(lo + 1, in_len - 1)
    weight = tf.cast(src - floor, tf.float32)
    nearest = tf.minimum(tf.cast(tf.floor(src + 0.5), tf.int32), in_len - 1)
    return lo, hi, weight, nearest, valid


def sample_crop(image, label, scaled_size, offset, crop_size, flip):
    """Scale + pad + crop + flip in one pass.

    image: uint8 or float [H, W, 3]; label: integer [H, W, 1]. Returns (image float32
    [ch, cw, 3] with padding set to 0 -- callers fill it --, label [ch, cw, 1] with padding
    255, valid bool [ch, cw]).
    """
    shape = tf.shape(image)
    ch, cw = crop_size
    ly, hy, wy, ny, vy = axis_plan(shape[0], scaled_size[0], offset[0], ch)
    lx, hx, wx, nx, vx = axis_plan(shape[1], scaled_size[1], offset[1], cw)
    if flip is not None:
        lx, hx, wx, nx, vx = [
            tf.cond(flip, lambda t=t: tf.reverse(t, [0]), lambda t=t: t)
            for t in (lx, hx, wx, nx, vx)
        ]
    top = tf.cast(tf.gather(image, ly), tf.float32)
    bottom = tf.cast(tf.gather(image, hy), tf.float32)
    rows = top + (bottom - top) * wy[:, None, None]
    left = tf.gather(rows, lx, axis=1)
    right = tf.gather(rows, hx, axis=1)
    out = left + (right - left) * wx[None, :, None]
    valid = vy[:, None] & vx[None, :]
    lab = tf.gather(tf.gather(label, ny), nx, axis=1)
    lab = tf.where(valid[..., None], tf.cast(lab, tf.int32), 255)
    out = tf.where(valid[..., None], out, 0.0)
    return out, lab, valid


def choose_scale(u, scale_range, scale_step=None, scales=None):
    """A scale factor from uniform `u` in [0, 1): from `scales` (a list), from the grid
    ``min, min + step, ..., max``, or continuous in the range when `scale_step` is None."""
    if scales is not None:
        table = tf.constant(list(scales), tf.float32)
    elif scale_step:
        lo, hi = scale_range
        n = int(round((hi - lo) / scale_step)) + 1
        table = tf.constant([lo + i * scale_step for i in range(n)], tf.float32)
    else:
        lo, hi = scale_range
        return lo + u * (hi - lo)
    n = tf.shape(table)[0]
    idx = tf.minimum(tf.cast(u * tf.cast(n, tf.float32), tf.int32), n - 1)
    return table[idx]


def _random_int(u, n):
    """Uniform integer in [0, n] from u in [0, 1)."""
    return tf.minimum(tf.cast(u * tf.cast(n + 1, tf.float32), tf.int32), n)


def _masked_mean(x, valid):
    m = tf.cast(valid, tf.float32)[..., None]
    return tf.reduce_sum(x * m, axis=[0, 1]) / tf.maximum(tf.reduce_sum(m), 1.0)


def augment(
    image,
    label,
    seed,
    crop_size,
    scale_range=(0.5, 2.0),
    scale_step=0.25,
    scales=None,
    flip=True,
    brightness=True,
    photometric=False,
    max_brightness_delta=32.0,
):
    """Random training view of one example.

    Args:
      image: uint8 [H, W, 3]; label: integer [H, W, 1].
      seed: int [2] stateless seed for this example.
    Returns:
      (image float32 [ch, cw, 3] in 0..255, label int32 [ch, cw], valid bool [ch, cw]).
    """
    u = tf.random.stateless_uniform([10], seed=seed)
    shape = tf.shape(image)
    s = choose_scale(u[0], scale_range, scale_step, scales)
    scaled = tf.maximum(tf.cast(tf.round(tf.cast(shape[:2], tf.float32) * s), tf.int32), 1)
    ch, cw = crop_size
    oy = _random_int(u[1], tf.maximum(scaled[0] - ch, 0))
    ox = _random_int(u[2], tf.maximum(scaled[1] - cw, 0))
    do_flip = u[3] < 0.5 if flip else None
    out, lab, valid = sample_crop(image, label, scaled, (oy, ox), (ch, cw), do_flip)
    if brightness:
        delta = (u[5] * 2.0 - 1.0) * max_brightness_delta
        out = tf.where(u[4] < 0.5, tf.clip_by_value(out + delta, 0.0, 255.0), out)
    if photometric:
        factor = 0.5 + u[7]
        mean = _masked_mean(out, valid)
        contrasted = tf.clip_by_value((out - mean) * factor + mean, 0.0, 255.0)
        out = tf.where(u[6] < 0.5, contrasted, out)
        saturated = tf.clip_by_value(tf.image.adjust_saturation(out, 0.5 + u[9]), 0.0, 255.0)
        out = tf.where(u[8] < 0.5, saturated, out)
    return out, lab[..., 0], valid
