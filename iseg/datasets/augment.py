"""Training augmentation on one example, in TensorFlow ops.

Order (as in the reference TF stack): random scale -> brightness -> optional photometric
distortion -> pad bottom/right to the crop (image: mean, label: ignore) -> random crop ->
horizontal flip.

Scale, pad, crop and flip are fused: the crop window is chosen first (in the coordinates
of the scaled image), and only the output pixels that fall inside the scaled image are
computed, straight from the source pixels an align-corners resize would read:

- image: bilinear sampling with ``ScaleAndTranslate`` (triangle kernel, no antialias),
  which is exactly align-corners bilinear for the chosen scale and offset;
- label: nearest neighbour (``round(src)``, as align-corners nearest resize) by index
  gathers;
- a JPEG image is decoded only inside the source window the crop needs
  (``decode_and_crop_jpeg``), so a 2x scale decodes about a quarter of the image;
- the valid part is flipped and then padded (padding on the right, or on the left after
  a flip: the same as padding, cropping and flipping the whole image).

The result equals resizing the whole image, padding, cropping and flipping (up to float
rounding of the bilinear weights); see tests/test_datasets_pipeline.py for the oracle.
Brightness and photometric changes are applied to the valid pixels (the photometric
contrast uses the mean of the valid crop pixels, not of the whole image).

All randomness is drawn from stateless ops seeded per example, so a fixed seed gives the
same crops no matter how many parallel calls run.
"""

import tensorflow as tf


def axis_plan(in_len, scaled_len, offset, crop_len):
    """Sampling plan along one axis of an align-corners resize ``in_len -> scaled_len``,
    cropped at ``offset`` to at most ``crop_len`` positions.

    Returns a dict: ``valid`` (number of output positions inside the scaled image),
    ``start``/``size`` (source window the valid positions read), ``step`` (source pixels
    per output pixel), ``nearest`` (int32 [valid] nearest source index, window-relative).
    """
    valid = tf.clip_by_value(scaled_len - offset, 0, crop_len)
    step = tf.cast(in_len - 1, tf.float64) / tf.cast(tf.maximum(scaled_len - 1, 1), tf.float64)
    last = tf.cast(in_len - 1, tf.float64)
    first_src = tf.minimum(tf.cast(offset, tf.float64) * step, last)
    last_src = tf.minimum(tf.cast(offset + valid - 1, tf.float64) * step, last)
    start = tf.cast(tf.floor(first_src), tf.int32)
    end = tf.cast(tf.minimum(tf.math.ceil(last_src), last), tf.int32)
    src = tf.minimum(tf.cast(offset + tf.range(valid), tf.float64) * step, last)
    nearest = tf.minimum(tf.cast(tf.floor(src + 0.5), tf.int32), in_len - 1) - start
    return {"valid": valid, "start": start, "size": end - start + 1, "step": step,
            "offset": offset, "nearest": nearest}


def _bilinear(window, py, px):
    """Align-corners bilinear samples of the valid output block from a source window."""
    scale = tf.stack([1.0 / tf.maximum(py["step"], 1e-9), 1.0 / tf.maximum(px["step"], 1e-9)])
    start = tf.cast(tf.stack([py["start"], px["start"]]), tf.float64)
    offset = tf.cast(tf.stack([py["offset"], px["offset"]]), tf.float64)
    # ScaleAndTranslate samples input (edge) coordinate (i + 0.5 - t) / scale; we want the
    # pixel-centre coordinate (offset + i) * step - start.
    translation = 0.5 - offset + (start - 0.5) * scale
    out = tf.raw_ops.ScaleAndTranslate(
        images=window[None],
        size=tf.stack([py["valid"], px["valid"]]),
        scale=tf.cast(scale, tf.float32),
        translation=tf.cast(translation, tf.float32),
        kernel_type="triangle",
        antialias=False,
    )
    return out[0]


def _nearest(label, py, px):
    """label [h, w] (window) -> [valid_h, valid_w] by row then column gathers."""
    rows = tf.gather(label, py["nearest"])
    return tf.transpose(tf.gather(tf.transpose(rows), px["nearest"]))


def decode_window(encoded, py, px):
    """Decode only the source window of an encoded image (JPEG: partial decode)."""
    window = tf.stack([py["start"], px["start"], py["size"], px["size"]])

    def jpeg():
        return tf.io.decode_and_crop_jpeg(encoded, window, channels=3)

    def other():
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        return tf.slice(image, [py["start"], px["start"], 0], [py["size"], px["size"], 3])

    return tf.cond(tf.io.is_jpeg(encoded), jpeg, other)


def crop_block(image, label, scaled_size, offset, crop_size, encoded=None):
    """The valid block of a scaled + cropped view (before padding and flip).

    Args:
      image: uint8/float [H, W, 3], or None when `encoded` (image bytes) is given.
      label: integer [H, W] (its shape is the image's shape).
      scaled_size: (sh, sw) size of the scaled image; offset: (oy, ox) crop corner in it.
      crop_size: (ch, cw) Python ints.
    Returns:
      image float32 [vh, vw, 3], label int32 [vh, vw] (vh <= ch, vw <= cw).
    """
    shape = tf.shape(label)
    ch, cw = crop_size
    py = axis_plan(shape[0], scaled_size[0], offset[0], ch)
    px = axis_plan(shape[1], scaled_size[1], offset[1], cw)
    if encoded is not None:
        window = decode_window(encoded, py, px)
    else:
        window = tf.slice(image, [py["start"], px["start"], 0], [py["size"], px["size"], 3])
    lab_window = tf.slice(label, [py["start"], px["start"]], [py["size"], px["size"]])
    return _bilinear(window, py, px), tf.cast(_nearest(lab_window, py, px), tf.int32)


def place(block, lab_block, crop_size, flip):
    """Flip the valid block (if `flip`) and pad it to the crop: image 0, label 255.

    Padding goes bottom/right, or bottom/left after a flip -- the same as padding the
    whole scaled image bottom/right, cropping, and flipping the crop.
    Returns (image [ch, cw, 3], label int32 [ch, cw], valid bool [ch, cw]).
    """
    ch, cw = crop_size
    shape = tf.shape(lab_block)
    pad_left = tf.constant(0)
    if flip is not None:
        block = tf.cond(flip, lambda: tf.reverse(block, [1]), lambda: block)
        lab_block = tf.cond(flip, lambda: tf.reverse(lab_block, [1]), lambda: lab_block)
        pad_left = tf.where(flip, cw - shape[1], 0)
    pads = [[0, ch - shape[0]], [pad_left, cw - shape[1] - pad_left]]
    valid = tf.pad(tf.ones_like(lab_block, tf.bool), pads, constant_values=False)
    out = tf.pad(block, pads + [[0, 0]])
    lab = tf.pad(lab_block, pads, constant_values=255)
    return tf.ensure_shape(out, [ch, cw, 3]), tf.ensure_shape(lab, [ch, cw]), valid


def sample_crop(image, label, scaled_size, offset, crop_size, flip, encoded=None):
    """Scale + pad + crop + flip in one pass (see `crop_block` and `place`).

    Returns image float32 [ch, cw, 3] (0 in padding), label int32 [ch, cw] (255 in
    padding), valid bool [ch, cw].
    """
    if label.shape.rank == 3:
        label = label[..., 0]
    block, lab = crop_block(image, label, scaled_size, offset, crop_size, encoded)
    return place(block, lab, crop_size, flip)


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


def random_view(shape, seed, crop_size, scale_range=(0.5, 2.0), scale_step=0.25, scales=None,
                flip=True):
    """(scaled_size, offset, flip, uniforms) of a random view of an image of `shape`."""
    u = tf.random.stateless_uniform([10], seed=seed)
    s = choose_scale(u[0], scale_range, scale_step, scales)
    scaled = tf.maximum(tf.cast(tf.round(tf.cast(shape, tf.float32) * s), tf.int32), 1)
    ch, cw = crop_size
    oy = _random_int(u[1], tf.maximum(scaled[0] - ch, 0))
    ox = _random_int(u[2], tf.maximum(scaled[1] - cw, 0))
    do_flip = u[3] < 0.5 if flip else None
    return scaled, (oy, ox), do_flip, u


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
    encoded=None,
    postprocess=None,
):
    """Random training view of one example.

    Args:
      image: uint8 [H, W, 3] (or None with `encoded` image bytes); label: integer
        [H, W] or [H, W, 1]; seed: int [2] stateless seed for this example.
      postprocess: optional function applied to the valid 0..255 pixels before padding
        (the pipeline normalises there, so padding is exactly 0 after normalisation).
    Returns:
      (image float32 [ch, cw, 3] with 0 in padding, label int32 [ch, cw] with 255 in
      padding, valid bool [ch, cw]).
    """
    if label.shape.rank == 3:
        label = label[..., 0]
    scaled, offset, do_flip, u = random_view(
        tf.shape(label), seed, crop_size, scale_range, scale_step, scales, flip)
    block, lab = crop_block(image, label, scaled, offset, crop_size, encoded)
    block = color_jitter(block, u, brightness, photometric, max_brightness_delta)
    if postprocess is not None:
        block = postprocess(block)
    return place(block, lab, crop_size, do_flip)


def brightness_delta(u, brightness, max_delta=32.0):
    """The additive brightness change (0 when not applied) from the view's uniforms."""
    if not brightness:
        return tf.constant(0.0)
    return tf.where(u[4] < 0.5, (u[5] * 2.0 - 1.0) * max_delta, 0.0)


def color_jitter(block, u, brightness, photometric, max_delta=32.0):
    """Brightness (p 0.5, +-max_delta) then photometric contrast / saturation (each p 0.5,
    factor 0.5..1.5) on valid pixels, clipped to 0..255."""
    if brightness:
        block = tf.clip_by_value(block + brightness_delta(u, True, max_delta), 0.0, 255.0)
    if photometric:
        mean = tf.reduce_mean(block, axis=[0, 1])
        contrasted = tf.clip_by_value((block - mean) * (0.5 + u[7]) + mean, 0.0, 255.0)
        block = tf.where(u[6] < 0.5, contrasted, block)
        saturated = tf.clip_by_value(tf.image.adjust_saturation(block, 0.5 + u[9]), 0.0, 255.0)
        block = tf.where(u[8] < 0.5, saturated, block)
    return block
