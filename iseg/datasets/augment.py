"""Training augmentation on one example, in TensorFlow ops.

Order (as in the reference TF stack): random scale -> brightness -> optional photometric
distortion -> pad bottom/right to the crop (image: mean, label: ignore) -> random crop ->
horizontal flip. The steps are fused so that only the pixels of the output crop are
computed. Per axis, with the image length ``n``, crop ``c`` and scale ``s``
(``scaled = round(n * s)``):

- if ``scaled <= c`` the whole axis is resized to ``scaled`` (align corners) and padded:
  exactly the reference;
- otherwise a window of ``length = round((c - 1) * (n - 1) / (scaled - 1)) + 1`` source
  pixels starting at a random integer ``start`` is resized to ``c`` (align corners), i.e.
  the crop of the scaled image whose corner lies on a source pixel, with the scale
  rounded so that the window spans whole pixels (relative scale error below
  ``0.5 / (length - 1)``).

The image is resampled bilinearly (``ResizeBilinear`` with align corners, on the uint8
window), the label by nearest neighbour at the same positions (``round``), a JPEG is
decoded only inside the window (``decode_and_crop_jpeg``), a flip reverses the window
before resampling (align-corners sampling is symmetric, so this equals flipping the
output), and the valid block is padded to the crop afterwards (right, or left after a
flip: the same as padding, cropping and flipping). Brightness and the optional
photometric distortion act on the valid pixels; the photometric contrast uses their mean.
With ``normalization`` the brightness change and normalisation are one multiply-add,
applied before the resize when the window has fewer pixels than the output (bilinear
weights sum to one, so it commutes with the resize), then one clip (only when a
brightness change was drawn); the padding is 0 (the mean pixel).

All randomness is drawn from stateless ops seeded per example, so a fixed seed gives the
same crops no matter how many parallel calls run. `random_view` draws a view's geometry and
colour changes once; `augment` (host) and `augment_views` + `resample_views` (device)
both apply that one draw.
"""

import tensorflow as tf

from iseg.datasets.np_augment import IMAGENET_MEAN, IMAGENET_STD, AugmentOptions  # noqa: F401
from iseg.datasets.tfrecord import decode_rgb


def axis_view(in_len, crop_len, scale, u):
    """(start, length, out): the source window and the number of output pixels along one
    axis of a random view (see the module docstring). `u` is uniform in [0, 1)."""
    scaled = tf.maximum(tf.cast(tf.round(tf.cast(in_len, tf.float32) * scale), tf.int32), 1)
    fits = scaled <= crop_len
    step = tf.cast(in_len - 1, tf.float64) / tf.cast(tf.maximum(scaled - 1, 1), tf.float64)
    length = tf.cast(tf.round(tf.cast(crop_len - 1, tf.float64) * step), tf.int32) + 1
    length = tf.where(fits, in_len, tf.clip_by_value(length, 1, in_len))
    start = tf.where(fits, 0, _random_int(u, in_len - length))
    return start, length, tf.where(fits, scaled, crop_len)


def nearest_index(length, out):
    """Nearest source index of each of `out` align-corners samples over `length` pixels."""
    step = tf.cast(length - 1, tf.float64) / tf.cast(tf.maximum(out - 1, 1), tf.float64)
    pos = tf.cast(tf.range(out), tf.float64) * step
    return tf.minimum(tf.cast(tf.floor(pos + 0.5), tf.int32), length - 1)


def decode_window(encoded, start, size):
    """Decode only the window ``start`` (y, x) + ``size`` (h, w) of an encoded image
    (JPEG: partial decode; other formats: full decode, then slice)."""
    window = tf.stack([start[0], start[1], size[0], size[1]])

    def jpeg():
        return tf.io.decode_and_crop_jpeg(encoded, window, channels=3)

    def other():
        image = decode_rgb(encoded)
        return tf.slice(image, [start[0], start[1], 0], [size[0], size[1], 3])

    return tf.cond(tf.io.is_jpeg(encoded), jpeg, other)


def source_window(image, label, start, size, encoded=None):
    """The window ``start`` (y, x) + ``size`` (h, w) of the image (or of the encoded image
    bytes, decoded only there) and of the label."""
    if encoded is not None:
        window = decode_window(encoded, start, size)
    else:
        window = tf.slice(image, [start[0], start[1], 0], [size[0], size[1], 3])
    return window, tf.slice(label, [start[0], start[1]], [size[0], size[1]])


def crop_block(image, label, start, size, out_size, flip=None, encoded=None, affine=None):
    """Resample the source window ``start`` + ``size`` to ``out_size`` (align corners).

    Args:
      image: uint8/float [H, W, 3], or None when `encoded` (image bytes) is given.
      label: integer [H, W]; flip: bool tensor or None (mirror the window first).
      affine: optional (scale, shift) applied to the image values, ``x * scale + shift``.
        Bilinear weights sum to one, so it commutes with the resize: it is applied on
        whichever of window and output has fewer pixels.
    Returns:
      image float32 [oh, ow, 3] (0..255, or affine-mapped), label [oh, ow] (the label's
      dtype).
    """
    window, lab = source_window(image, label, start, size, encoded)
    cols = nearest_index(size[1], out_size[1])
    if flip is not None:
        window = tf.cond(flip, lambda: tf.reverse(window, [1]), lambda: window)
        # mirror the output order, not the window: ties (x.5) round the same way as
        # flipping a resized image
        cols = tf.cond(flip, lambda: tf.reverse(cols, [0]), lambda: cols)
    same = tf.logical_and(tf.equal(size[0], out_size[0]), tf.equal(size[1], out_size[1]))
    # ResizeBilinear is faster on float32 than on uint8 input, with the same result
    window = tf.cast(window, tf.float32)
    if affine is not None:
        scale, shift = affine
        early = size[0] * size[1] < out_size[0] * out_size[1]
        window = tf.cond(early, lambda: window * scale + shift, lambda: window)
    block = tf.cond(  # scale 1 (or a crop at scale 1): the resize is the identity
        same,
        lambda: window,
        lambda: tf.raw_ops.ResizeBilinear(
            images=window[None], size=tf.stack(out_size), align_corners=True,
            half_pixel_centers=False)[0],
    )
    if affine is not None:
        block = tf.cond(early, lambda: block, lambda: block * scale + shift)
    lab = tf.gather(lab, nearest_index(size[0], out_size[0]))
    lab = tf.transpose(tf.gather(tf.transpose(lab), cols))
    return block, lab


def place(block, lab_block, crop_size, flip=None, with_valid=True, pad=True):
    """Pad a (possibly already mirrored) valid block to the crop: image 0, label 255.

    Padding goes bottom/right, or bottom/left when `flip` -- the same as padding the whole
    scaled image bottom/right, cropping, and flipping the crop.
    Returns (image [ch, cw, 3], label int32 [ch, cw], valid bool [ch, cw] or None).
    With ``pad=False`` only the left padding of a mirrored block is added: the block is at
    its place in the crop's top-left corner, and the caller pads it bottom/right (e.g.
    `padded_batch`, which pads while batching, with 0 / 255); the label keeps its dtype.
    """
    ch, cw = crop_size
    shape = tf.shape(lab_block)
    pad_left = tf.constant(0)
    if flip is not None:
        pad_left = tf.where(flip, cw - shape[1], 0)
    if not pad:
        return (_pad_concat(block, 0, pad_left, 0, 0.0),
                _pad_concat(lab_block, 0, pad_left, 0, 255), None)
    pad_right = cw - shape[1] - pad_left
    out = _pad_concat(block, ch, pad_left, pad_right, 0.0)
    lab = tf.cast(_pad_concat(lab_block, ch, pad_left, pad_right, 255), tf.int32)
    valid = None
    if with_valid:
        valid = _pad_concat(tf.ones_like(lab_block, tf.bool), ch, pad_left, pad_right, False)
    return tf.ensure_shape(out, [ch, cw, 3]), tf.ensure_shape(lab, [ch, cw]), valid


def _pad_concat(x, height, left, right, value):
    """Pad bottom to `height` and left/right with constants (concat: faster than tf.pad;
    skipped when there is nothing to pad, the common case for large scales)."""
    shape = tf.shape(x)
    tail = [] if x.shape.rank == 2 else [shape[2]]
    fill = lambda h, w: tf.fill(tf.stack([h, w] + tail), tf.cast(value, x.dtype))  # noqa: E731
    x = tf.cond(
        left + right > 0,
        lambda: tf.concat([fill(shape[0], left), x, fill(shape[0], right)], axis=1),
        lambda: x,
    )
    width = shape[1] + left + right
    return tf.cond(
        height > shape[0],
        lambda: tf.concat([x, fill(height - shape[0], width)], axis=0),
        lambda: x,
    )


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


def random_view(shape, seed, crop_size, options=AugmentOptions()):
    """(start, size, out_size, flip, colour) of a random view of an image of `shape`:
    the source window, the output block size, the flip (None when `options.flip` is off)
    and the colour changes (`colour_changes`)."""
    u = tf.random.stateless_uniform([10], seed=seed)
    s = choose_scale(u[0], options.scale_range, options.scale_step, options.scales)
    y0, ly, oy = axis_view(shape[0], crop_size[0], s, u[1])
    x0, lx, ox = axis_view(shape[1], crop_size[1], s, u[2])
    do_flip = u[3] < 0.5 if options.flip else None
    return (y0, x0), (ly, lx), (oy, ox), do_flip, colour_changes(u, options)


def colour_changes(u, options):
    """The view's colour changes from its uniforms `u`: ``brightness`` (additive delta, 0
    when not drawn or off), ``contrast`` and ``saturation`` (factors, 1 when not drawn or
    off)."""
    def factor(p, f):
        return tf.where(p < 0.5, 0.5 + f, 1.0) if options.photometric else tf.constant(1.0)

    delta = tf.constant(0.0)
    if options.brightness:
        delta = tf.where(u[4] < 0.5, (u[5] * 2.0 - 1.0) * options.max_brightness_delta, 0.0)
    return {"brightness": delta, "contrast": factor(u[6], u[7]),
            "saturation": factor(u[8], u[9])}


def augment(image, label, seed, crop_size, options=AugmentOptions(), *, encoded=None,
            normalization=None, with_valid=True, pad=True):
    """Random training view of one example.

    Args:
      image: uint8 [H, W, 3] (or None with `encoded` image bytes); label: integer
        [H, W] or [H, W, 1]; seed: int [2] stateless seed for this example.
      options: an `AugmentOptions`.
      normalization: None (output 0..255) or a mode of `iseg.datasets.pipeline.normalize`.
      with_valid: also return the valid-pixel mask (else None).
      pad: False leaves the bottom/right padding to the caller (see `place`).
    Returns:
      (image float32 [ch, cw, 3] with 0 in padding, label int32 [ch, cw] with 255 in
      padding, valid bool [ch, cw] or None).
    """
    if label.shape.rank == 3:
        label = label[..., 0]
    start, size, out_size, do_flip, colour = random_view(
        tf.shape(label), seed, crop_size, options)
    delta = colour["brightness"]
    affine = None
    if normalization is not None and not options.photometric:
        # brightness + normalisation as one multiply-add, done inside the resampling
        scale, shift, lo, hi = _affine_params(delta, normalization)
        affine = (scale, shift)
    block, lab = crop_block(image, label, start, size, out_size, do_flip, encoded, affine)
    if affine is not None:
        if options.brightness:  # values only leave [lo, hi] after a brightness change
            block = tf.cond(tf.not_equal(delta, 0.0),
                            lambda: tf.clip_by_value(block, lo, hi), lambda: block)
        return place(block, lab, crop_size, do_flip, with_valid, pad)
    if options.brightness:
        block = tf.clip_by_value(block + delta, 0.0, 255.0)
    if options.photometric:
        block = photometric_distortion(block, colour["contrast"], colour["saturation"])
    if normalization is not None:
        scale, shift, _, _ = _affine_params(0.0, normalization)
        block = block * scale + shift
    return place(block, lab, crop_size, do_flip, with_valid, pad)


def axis_samples(length, out, crop_len, mirror=None):
    """Where each of the `crop_len` output positions along one axis samples the window.

    The view's block (`out` align-corners samples over `length` window pixels) sits at
    the start of the axis, or at its end when `mirror` (a flipped view is padded on the
    left). Returns ``indices`` int32 [3, crop_len] -- the two bilinear source pixels and
    the nearest one (for labels; -1 marks padding) -- and ``weight`` float32 [crop_len],
    the weight of the second source pixel. The positions are computed as `ResizeBilinear`
    (align corners) and `nearest_index` compute them.
    """
    pad = tf.where(mirror, crop_len - out, 0) if mirror is not None else tf.constant(0)
    j = tf.range(crop_len) - pad
    valid = (j >= 0) & (j < out)
    j = tf.clip_by_value(j, 0, out - 1)
    step = tf.cast(length - 1, tf.float32) / tf.cast(tf.maximum(out - 1, 1), tf.float32)
    pos = tf.cast(j, tf.float32) * step
    lo = tf.minimum(tf.cast(tf.floor(pos), tf.int32), length - 1)
    hi = tf.minimum(lo + 1, length - 1)
    weight = pos - tf.floor(pos)
    near = nearest_index(length, out)
    if mirror is not None:  # the block of a mirrored window, in original window columns
        lo = tf.where(mirror, length - 1 - lo, lo)
        hi = tf.where(mirror, length - 1 - hi, hi)
        near = tf.where(mirror, tf.reverse(near, [0]), near)
    near = tf.where(valid, tf.gather(near, j), -1)
    indices = tf.stack([tf.where(valid, lo, 0), tf.where(valid, hi, 0), near])
    return indices, tf.where(valid, weight, 0.0)


def augment_views(image, label, seed, crop_size, options=AugmentOptions(), *, encoded=None):
    """The random view of `augment` without its pixel work: the source window (uint8) and
    the sampling positions and colour changes that `resample_views` applies later, on a
    whole batch, on the accelerator. Same arguments and the same view as `augment`.

    Returns a dict: ``image`` uint8 [h, w, 3] and ``label`` [h, w] (the window),
    ``rows`` int32 [3, ch] + ``row_weight`` float32 [ch] and ``cols`` / ``col_weight``
    (see `axis_samples`), and the colour parameters: ``brightness`` (additive delta, 0 when
    not drawn; only with `brightness`), ``contrast`` and ``saturation`` (factors, 1 when not
    drawn; only with `photometric`).
    """
    if label.shape.rank == 3:
        label = label[..., 0]
    start, size, out_size, do_flip, colour = random_view(
        tf.shape(label), seed, crop_size, options)
    window, lab = source_window(image, label, start, size, encoded)
    rows, row_weight = axis_samples(size[0], out_size[0], crop_size[0])
    cols, col_weight = axis_samples(size[1], out_size[1], crop_size[1], do_flip)
    views = {
        "image": window, "label": lab, "rows": rows, "row_weight": row_weight,
        "cols": cols, "col_weight": col_weight,
    }
    if options.brightness:
        views["brightness"] = colour["brightness"]
    if options.photometric:
        views["contrast"] = colour["contrast"]
        views["saturation"] = colour["saturation"]
    return views


def resample_views(views, normalization="minus_one_to_one", ignore_label=255):
    """A batch of views (from `augment_views`, batched) -> the training batch that
    `augment` would have produced: (images float32 [B, ch, cw, 3], normalised, 0 in
    padding; labels int32 [B, ch, cw], `ignore_label` in padding).

    Separable bilinear resampling as two batched gathers and lerps (rows, then columns),
    nearest-neighbour labels, then brightness (clipped to 0..255),
    the photometric distortion and the normalisation. Meant to run inside the training
    step, on the accelerator; `normalization` None leaves the values on the 0..255 scale.
    """
    rows, cols = views["rows"], views["cols"]
    # float32 before gathering: GPUs have no uint8 gather kernel (labels < 256 are exact)
    image = tf.cast(views["image"], tf.float32)

    def lerp(x, idx, weight, axis):
        a = tf.gather(x, idx[:, 0], axis=axis, batch_dims=1)
        b = tf.gather(x, idx[:, 1], axis=axis, batch_dims=1)
        return a + (b - a) * weight

    image = lerp(image, rows, views["row_weight"][:, :, None, None], 1)
    image = lerp(image, cols, views["col_weight"][:, None, :, None], 2)
    label = tf.cast(views["label"], tf.float32)
    label = tf.gather(label, tf.maximum(rows[:, 2], 0), axis=1, batch_dims=1)
    label = tf.gather(label, tf.maximum(cols[:, 2], 0), axis=2, batch_dims=1)
    valid = (rows[:, 2] >= 0)[:, :, None] & (cols[:, 2] >= 0)[:, None, :]
    label = tf.where(valid, tf.cast(label, tf.int32), ignore_label)

    def per_image(name):
        return tf.reshape(tf.cast(views[name], tf.float32), [-1, 1, 1, 1])

    if "brightness" in views:
        image = tf.clip_by_value(image + per_image("brightness"), 0.0, 255.0)
    if "contrast" in views:  # the contrast mean is over each image's valid pixels
        mask = tf.cast(valid, tf.float32)[..., None]
        count = tf.maximum(tf.reduce_sum(mask, axis=[1, 2], keepdims=True), 1.0)
        mean = tf.reduce_sum(image * mask, axis=[1, 2], keepdims=True) / count
        image = tf.clip_by_value((image - mean) * per_image("contrast") + mean, 0.0, 255.0)
    if "saturation" in views:
        image = tf.clip_by_value(_scale_saturation(image, per_image("saturation")), 0.0, 255.0)
    if normalization is not None:
        scale, shift, _, _ = _affine_params(0.0, normalization)
        image = image * scale + shift
    return tf.where(valid[..., None], image, 0.0), label


def _scale_saturation(image, factor):
    """HSV saturation times `factor` (clipped to 1) with hue and value kept, in RGB: each
    channel moves away from (or towards) the maximum, ``v - (v - c) * s' / s``, as
    `tf.image.adjust_saturation` (which converts to HSV and back) does."""
    v = tf.reduce_max(image, axis=-1, keepdims=True)
    spread = v - tf.reduce_min(image, axis=-1, keepdims=True)  # v * s
    # s' / s = min(factor, 1 / s); grey pixels (spread 0) stay as they are
    ratio = tf.minimum(factor, v / tf.maximum(spread, 1e-12))
    return tf.where(spread > 0, v - (v - image) * ratio, image)


def _affine_params(delta, mode):
    """(scale, shift, lo, hi): normalize(clip(x + delta, 0, 255)) is
    clip(x * scale + shift, lo, hi)."""
    if mode == "minus_one_to_one":
        scale, shift = 1.0 / 127.5, (delta - 127.5) / 127.5
        lo, hi = -1.0, 1.0
    elif mode == "imagenet":
        std = tf.constant(IMAGENET_STD)
        scale, shift = 1.0 / std, (delta - tf.constant(IMAGENET_MEAN)) / std
        lo, hi = -tf.constant(IMAGENET_MEAN) / std, (255.0 - tf.constant(IMAGENET_MEAN)) / std
    else:
        raise ValueError(f"normalization must be 'minus_one_to_one' or 'imagenet', got {mode!r}")
    return scale, shift, lo, hi


def photometric_distortion(block, contrast, saturation):
    """Contrast then saturation by the given factors (each skipped when 1), clipped to
    0..255 (the contrast mean is taken over the block: the valid pixels)."""
    def adjust_contrast():
        mean = tf.reduce_mean(block, axis=[0, 1])
        return tf.clip_by_value((block - mean) * contrast + mean, 0.0, 255.0)

    block = tf.cond(tf.not_equal(contrast, 1.0), adjust_contrast, lambda: block)
    return tf.cond(
        tf.not_equal(saturation, 1.0),
        lambda: tf.clip_by_value(_scale_saturation(block, saturation), 0.0, 255.0),
        lambda: block)
