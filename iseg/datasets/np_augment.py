"""Training augmentation on one example in NumPy (no TensorFlow): the random views of
`iseg.datasets.augment` for the input path of the JAX and PyTorch backends.

A view is computed from ten uniforms ``u`` in [0, 1) exactly as `augment.random_view`
computes it from ``tf.random.stateless_uniform([10], seed)``: ``u[0]`` the scale,
``u[1]``/``u[2]`` the window start (rows / columns), ``u[3]`` the flip, ``u[4]``/``u[5]``
the brightness change, ``u[6]``..``u[9]`` contrast and saturation. The arithmetic follows
the TF graph (float32 scale and start draws, float64 window length and nearest
positions, round half to even), so the same uniforms give the same window, flip and
colour changes; the pixels agree up to float32 rounding (`tests/test_fit_input.py`).
Order: scale -> brightness -> photometric distortion -> normalisation, the valid block
padded to the crop (image 0, the mean pixel after normalisation; label 255), on the left
after a flip.
"""

import dataclasses

import numpy as np

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
NORMALIZATIONS = ("minus_one_to_one", "imagenet")
DEFAULT_NORMALIZATION = "minus_one_to_one"


@dataclasses.dataclass(frozen=True)
class AugmentOptions:
    """What a random training view may change.

    scale_range, scale_step: scale factors ``min, min + step, ..., max`` (continuous in
      the range when `scale_step` is None or 0); `scales`: an explicit list instead.
    flip: horizontal flip with p 0.5.
    brightness: an additive change with p 0.5, uniform in +-`max_brightness_delta`.
    photometric: contrast, then saturation, each with p 0.5 and a factor in 0.5..1.5.
    """

    scale_range: tuple = (0.5, 2.0)
    scale_step: float = 0.25
    scales: tuple = None
    flip: bool = True
    brightness: bool = True
    max_brightness_delta: float = 32.0
    photometric: bool = False


def input_normalization(model):
    """The input normalisation `model` expects: its `normalization` (SegmentationModel
    stores the one its backbone's weights were trained with), else the default."""
    return getattr(model, "normalization", DEFAULT_NORMALIZATION)


def normalize(images, mode=DEFAULT_NORMALIZATION):
    """float 0..255 -> network input (float32)."""
    images = np.asarray(images, np.float32)
    if mode == "minus_one_to_one":
        return images / np.float32(127.5) - np.float32(1.0)
    if mode == "imagenet":
        return ((images - np.asarray(IMAGENET_MEAN, np.float32)) /
                np.asarray(IMAGENET_STD, np.float32))
    raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {mode!r}")


def choose_scale(u, scale_range, scale_step=None, scales=None):
    """The scale factor of uniform `u` (see `augment.choose_scale`)."""
    u = np.float32(u)
    if scales is None and not scale_step:
        lo, hi = scale_range
        return np.float32(lo) + u * np.float32(hi - lo)
    if scales is not None:
        table = np.asarray(list(scales), np.float32)
    else:
        lo, hi = scale_range
        n = int(round((hi - lo) / scale_step)) + 1
        table = np.asarray([lo + i * scale_step for i in range(n)], np.float32)
    return table[min(int(u * np.float32(len(table))), len(table) - 1)]


def _random_int(u, n):
    """Uniform integer in [0, n] from u in [0, 1) (float32, as the TF graph)."""
    return min(int(np.float32(u) * np.float32(n + 1)), n)


def axis_view(in_len, crop_len, scale, u):
    """(start, length, out) of one axis (see `augment.axis_view`)."""
    scaled = max(int(np.round(np.float32(in_len) * np.float32(scale))), 1)
    if scaled <= crop_len:
        return 0, in_len, scaled
    step = np.float64(in_len - 1) / np.float64(max(scaled - 1, 1))
    length = int(np.round(np.float64(crop_len - 1) * step)) + 1
    length = min(max(length, 1), in_len)
    return _random_int(u, in_len - length), length, crop_len


def nearest_index(length, out):
    """Nearest source index of each of `out` align-corners samples over `length` pixels."""
    step = np.float64(length - 1) / np.float64(max(out - 1, 1))
    pos = np.arange(out, dtype=np.float64) * step
    return np.minimum(np.floor(pos + 0.5).astype(np.int64), length - 1)


def random_view(shape, u, crop_size, options=AugmentOptions()):
    """(start, size, out_size, flip, colour) of the view of uniforms `u` (see
    `augment.random_view`); flip is None when `options.flip` is off."""
    u = np.asarray(u, np.float32)
    s = choose_scale(u[0], options.scale_range, options.scale_step, options.scales)
    y0, ly, oy = axis_view(int(shape[0]), crop_size[0], s, u[1])
    x0, lx, ox = axis_view(int(shape[1]), crop_size[1], s, u[2])
    flip = bool(u[3] < 0.5) if options.flip else None
    return (y0, x0), (ly, lx), (oy, ox), flip, colour_changes(u, options)


def colour_changes(u, options):
    """``brightness`` (additive delta), ``contrast``, ``saturation`` (factors) of `u`."""
    def factor(p, f):
        return np.float32(0.5) + f if options.photometric and p < 0.5 else np.float32(1.0)

    delta = np.float32(0.0)
    if options.brightness and u[4] < 0.5:
        delta = (u[5] * np.float32(2.0) - np.float32(1.0)) * np.float32(
            options.max_brightness_delta)
    return {"brightness": delta, "contrast": factor(u[6], u[7]),
            "saturation": factor(u[8], u[9])}


def _lerp_positions(in_len, out_len):
    """Lower / upper source index and weight of each align-corners output position,
    computed as TensorFlow's ResizeBilinear computes them (float32)."""
    scale = np.float32(in_len - 1) / np.float32(out_len - 1) if out_len > 1 else np.float32(0)
    pos = np.arange(out_len, dtype=np.float32) * scale
    lower = np.floor(pos)
    upper = np.minimum(np.ceil(pos).astype(np.int64), in_len - 1)
    return lower.astype(np.int64), upper, (pos - lower).astype(np.float32)


def resize_bilinear(image, out_h, out_w):
    """Align-corners bilinear resize of a float32 ``[h, w, c]`` image."""
    y0, y1, wy = _lerp_positions(image.shape[0], out_h)
    x0, x1, wx = _lerp_positions(image.shape[1], out_w)
    wx = wx[None, :, None]
    top, bottom = image[y0], image[y1]
    top = top[:, x0] + (top[:, x1] - top[:, x0]) * wx
    bottom = bottom[:, x0] + (bottom[:, x1] - bottom[:, x0]) * wx
    return top + (bottom - top) * wy[:, None, None]


def scale_saturation(image, factor):
    """HSV saturation times `factor` with hue and value kept (see
    `augment._scale_saturation`)."""
    v = image.max(axis=-1, keepdims=True)
    spread = v - image.min(axis=-1, keepdims=True)
    ratio = np.minimum(factor, v / np.maximum(spread, np.float32(1e-12)))
    return np.where(spread > 0, v - (v - image) * ratio, image).astype(np.float32)


def augment(image, label, u, crop_size, options=AugmentOptions(),
            normalization=DEFAULT_NORMALIZATION):
    """The random view of uniforms `u` of one example.

    image: uint8 ``[H, W, 3]``; label: integer ``[H, W]``; `normalization` None keeps the
    0..255 scale. Returns (image float32 ``[ch, cw, 3]`` with 0 in padding, label int32
    ``[ch, cw]`` with 255 in padding).
    """
    (y0, x0), (ly, lx), (oy, ox), flip, colour = random_view(label.shape, u, crop_size,
                                                             options)
    window = image[y0:y0 + ly, x0:x0 + lx].astype(np.float32)
    lab = label[y0:y0 + ly, x0:x0 + lx]
    cols = nearest_index(lx, ox)
    if flip:
        window, cols = window[:, ::-1], cols[::-1]
    block = window if (ly, lx) == (oy, ox) else resize_bilinear(window, oy, ox)
    lab = lab[nearest_index(ly, oy)][:, cols]
    if options.brightness:
        block = np.clip(block + colour["brightness"], 0.0, 255.0)
    if colour["contrast"] != 1.0:
        mean = block.mean(axis=(0, 1), dtype=np.float32)
        block = np.clip((block - mean) * colour["contrast"] + mean, 0.0, 255.0)
    if colour["saturation"] != 1.0:
        block = np.clip(scale_saturation(block, colour["saturation"]), 0.0, 255.0)
    if normalization is not None:
        block = normalize(block, normalization)
    out = np.zeros((*crop_size, 3), np.float32)
    out_label = np.full(crop_size, 255, np.int32)
    left = crop_size[1] - ox if flip else 0
    out[:oy, left:left + ox] = block
    out_label[:oy, left:left + ox] = lab
    return out, out_label
