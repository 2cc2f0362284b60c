"""Strong augmentation of unlabeled batches for semi-supervised training (TensorFlow ops).

The methods' official code augments PIL uint8 images; these ops reproduce PIL's integer
arithmetic on float32 images that hold integers in ``[0, 255]`` (the batch is rounded to
integers first, as the official loaders hand uint8 images to PIL):

- `brightness`, `contrast`, `saturation` (PIL ``ImageEnhance.Color``) and `sharpness` blend
  with a degenerate image (black; the rounded mean grey level; the grey image; the 3x3
  ``SMOOTH`` filter with the border kept) as ``ImageEnhance`` does: ``d + f * (x - d)`` in
  float32, truncated and clipped to ``[0, 255]``;
- `grayscale`: PIL's ``convert("L")``, ``(19595 R + 38470 G + 7471 B + 2**15) >> 16``;
- `hue`: PIL's RGB -> HSV conversion, ``H += shift`` with uint8 wrap-around, HSV -> RGB
  (torchvision's ``adjust_hue`` on PIL images and AugSeg's ``img_aug_hue``);
- `gaussian_blur`: PIL's ``GaussianBlur(radius=sigma)``, which is three passes of an
  extended box blur per axis (radius from sigma as Gwosdek et al.), 24-bit fixed-point
  weights, edges replicated, each pass rounded to uint8 -- not a sampled Gaussian kernel;
- `autocontrast`, `equalize`, `posterize`, `solarize`, `invert`: ``ImageOps``' lookup tables.

Views on a batch (every image draws its own parameters from a stateless seed):

- `simclr_strong` (UniMatch, CorrMatch): torchvision's
  ``RandomApply([ColorJitter(0.5, 0.5, 0.5, 0.25)], p=0.8)``, ``RandomGrayscale(0.2)``,
  then a blur with p 0.5 and sigma ~ U(0.1, 2.0). ColorJitter draws brightness, contrast
  and saturation factors from U(0.5, 1.5) and a hue factor from U(-0.25, 0.25) and applies
  the four in a random order (a random permutation per image), as torchvision does.
- `random_intensity` (AugSeg, iMAS): k operations drawn with replacement from a list
  (`IntensityOps`), k ~ U_int{1..N} (AugSeg, N = 3) or k = N (iMAS, N = 2); each draws its
  strength u ~ U(0, 1) scaled by the `modifier` (iMAS: 0.999), see `intensity_params`.
- `hardness_mix` (iMAS): ``h_i * x_strong + (1 - h_i) * x_weak`` per image.
"""

import dataclasses

import tensorflow as tf

_ENHANCE = ("contrast", "brightness", "color", "sharpness")


# ----------------------------------------------------------------- pixel ops (one image)
def quantize(image):
    """Round to integers in [0, 255] (the uint8 image PIL works on)."""
    return tf.clip_by_value(tf.round(image), 0.0, 255.0)


def _to_u8(x):
    """C's cast of a float in a blend to uint8: truncate, clip."""
    return tf.clip_by_value(tf.floor(x), 0.0, 255.0)


def grayscale(image):
    """PIL ``convert("L")`` of an integer RGB image [..., 3] -> [..., 1] (exact in float32)."""
    weights = tf.constant([19595.0, 38470.0, 7471.0])
    total = tf.reduce_sum(image * weights, axis=-1, keepdims=True) + 32768.0
    return tf.floor(total / 65536.0)


def blend(degenerate, image, factor):
    """PIL ``Image.blend(degenerate, image, factor)`` on uint8 values."""
    return _to_u8(degenerate + tf.cast(factor, tf.float32) * (image - degenerate))


def brightness(image, factor):
    return blend(tf.zeros_like(image), image, factor)


def contrast(image, factor):
    mean = tf.floor(tf.reduce_mean(tf.cast(grayscale(image), tf.float64)) + 0.5)
    return blend(tf.cast(mean, tf.float32), image, factor)


def saturation(image, factor):
    """PIL ``ImageEnhance.Color`` (torchvision's ``adjust_saturation``)."""
    return blend(grayscale(image), image, factor)


def smooth(image):
    """PIL's ``ImageFilter.SMOOTH`` (3x3 kernel 1,1,1/1,5,1/1,1,1 over 13), rounded; the
    one-pixel border is copied unchanged, as PIL's filter does."""
    padded = tf.pad(image, [[1, 1], [1, 1], [0, 0]])
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    total = 4.0 * image
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            total += padded[dy:dy + height, dx:dx + width]
    inner = tf.clip_by_value(tf.floor(total / 13.0 + 0.5), 0.0, 255.0)
    rows = tf.range(height)[:, None, None]
    cols = tf.range(width)[None, :, None]
    border = (rows == 0) | (rows == height - 1) | (cols == 0) | (cols == width - 1)
    return tf.where(border, image, inner)


def sharpness(image, factor):
    return blend(smooth(image), image, factor)


def _rgb_to_hsv(image):
    """PIL's integer RGB -> HSV (float32 arithmetic as in PIL's C code)."""
    r, g, b = tf.unstack(image, axis=-1)
    maxc = tf.maximum(r, tf.maximum(g, b))
    minc = tf.minimum(r, tf.minimum(g, b))
    span = tf.maximum(maxc - minc, 1.0)
    rc, gc, bc = ((tf.cast((maxc - c) / span, tf.float64)) for c in (r, g, b))
    # float32 variables, double constants: the rounding points of the C code
    h = tf.where(r == maxc, tf.cast(tf.cast(bc, tf.float32) - tf.cast(gc, tf.float32),
                                    tf.float64),
                 tf.where(g == maxc, 2.0 + rc - bc, 4.0 + gc - rc))
    h = tf.cast(tf.cast(h, tf.float32), tf.float64)
    h = tf.math.floormod(h / 6.0 + 1.0, 1.0)
    h = tf.cast(tf.cast(h, tf.float32), tf.float64)
    s = tf.cast((maxc - minc) / tf.maximum(maxc, 1.0), tf.float64)
    grey = maxc == minc
    hue = tf.cast(tf.clip_by_value(tf.floor(h * 255.0), 0.0, 255.0), tf.float32)
    sat = tf.cast(tf.clip_by_value(tf.floor(s * 255.0), 0.0, 255.0), tf.float32)
    return tf.where(grey, 0.0, hue), tf.where(grey, 0.0, sat), maxc


def _hsv_to_rgb(h, s, v):
    """PIL's integer HSV -> RGB."""
    sector_pos = h * 6.0 / 255.0
    sector = tf.floor(sector_pos)
    fs = (sector_pos - sector) * s
    rnd = lambda x: tf.clip_by_value(tf.floor(v * x / 255.0 + 0.5), 0.0, 255.0)  # noqa: E731
    p, q, t = rnd(255.0 - s), rnd(255.0 - fs), rnd(255.0 - s + fs)
    table = tf.stack([  # sector -> (r, g, b)
        tf.stack([v, t, p], -1), tf.stack([q, v, p], -1), tf.stack([p, v, t], -1),
        tf.stack([p, q, v], -1), tf.stack([t, p, v], -1), tf.stack([v, p, q], -1),
    ], axis=-2)
    index = tf.cast(tf.math.floormod(sector, 6.0), tf.int32)
    rgb = tf.gather(table, index[..., None], axis=-2, batch_dims=index.shape.rank)[..., 0, :]
    return tf.where((s == 0.0)[..., None], tf.stack([v, v, v], -1), rgb)


def hue_shift(factor):
    """The uint8 shift ``np.uint8(factor * 255)`` of a hue factor (wraps for negatives)."""
    return tf.math.floormod(tf.cast(factor * 255.0, tf.int32), 256)


def hue(image, factor):
    """Rotate the PIL HSV hue of an integer RGB image by `factor` (in [-0.5, 0.5])."""
    h, s, v = _rgb_to_hsv(image)
    h = tf.math.floormod(h + tf.cast(hue_shift(factor), tf.float32), 256.0)
    return _hsv_to_rgb(h, s, v)


def _box_radius(sigma):
    """PIL's box radius for a three-pass extended box approximating a Gaussian of sigma."""
    sigma2 = sigma * sigma / 3.0
    length = tf.sqrt(12.0 * sigma2 + 1.0)
    lo = tf.floor((length - 1.0) / 2.0)
    frac = (2.0 * lo + 1.0) * (lo * (lo + 1.0) - 3.0 * sigma2)
    frac /= 6.0 * (sigma2 - (lo + 1.0) * (lo + 1.0))
    return lo + frac


def _box_pass(image, radius, axis):
    """One PIL extended box-blur pass (fixed point, edges replicated, rounded)."""
    whole = tf.cast(tf.floor(radius), tf.int32)
    ww = tf.floor(16777216.0 / (radius * 2.0 + 1.0))
    fw = tf.floor((16777216.0 - tf.cast(2 * whole + 1, tf.float32) * ww) / 2.0)
    taps = tf.range(-whole - 1, whole + 2)
    weights = tf.concat([[fw], tf.fill([2 * whole + 1], ww), [fw]], 0)
    n = tf.shape(image)[axis]
    index = tf.clip_by_value(tf.range(n)[:, None] + taps[None, :], 0, n - 1)
    window = tf.cast(tf.gather(image, index, axis=axis), tf.float64)  # [.., n, taps, ..]
    shape = [1] * (image.shape.rank + 1)
    shape[axis + 1] = -1
    acc = tf.reduce_sum(window * tf.reshape(tf.cast(weights, tf.float64), shape), axis + 1)
    return tf.cast(tf.floor((acc + 8388608.0) / 16777216.0), tf.float32)


def gaussian_blur(image, sigma):
    """PIL ``ImageFilter.GaussianBlur(radius=sigma)`` of an integer image [H, W, C]."""
    radius = _box_radius(tf.cast(sigma, tf.float32))
    for axis in (1, 0):
        for _ in range(3):
            image = _box_pass(image, radius, axis)
    return image


def _channel_histograms(image):
    """[3, 256] pixel counts per channel of an integer image [H, W, 3]."""
    values = tf.reshape(tf.cast(image, tf.int32), [-1, 3]) + tf.range(3) * 256
    ones = tf.ones_like(values, tf.float64)
    return tf.reshape(tf.math.unsorted_segment_sum(ones, values, 768), [3, 256])


def _apply_luts(image, luts):
    """Map each channel of an integer image through its [3, 256] lookup table."""
    flat = tf.cast(image, tf.int32) + tf.range(3) * 256
    return tf.cast(tf.gather(tf.reshape(luts, [-1]), flat), tf.float32)


def autocontrast(image):
    """PIL ``ImageOps.autocontrast`` (cutoff 0): each channel's [min, max] to [0, 255]."""
    lo = tf.cast(tf.reduce_min(image, axis=[0, 1]), tf.float64)
    hi = tf.cast(tf.reduce_max(image, axis=[0, 1]), tf.float64)
    scale = 255.0 / tf.maximum(hi - lo, 1.0)
    offset = -lo * scale
    out = tf.clip_by_value(tf.cast(tf.cast(image, tf.float64) * scale + offset, tf.int32), 0, 255)
    return tf.where(hi > lo, tf.cast(out, tf.float32), image)


def equalize(image):
    """PIL ``ImageOps.equalize``: per-channel histogram equalisation."""
    hist = _channel_histograms(image)
    bins = tf.range(256, dtype=tf.float64)
    last = tf.reduce_max(tf.where(hist > 0, bins, -1.0), axis=1, keepdims=True)
    last_count = tf.reduce_sum(tf.where(bins == last, hist, 0.0), axis=1, keepdims=True)
    step = tf.floor((tf.reduce_sum(hist, axis=1, keepdims=True) - last_count) / 255.0)
    before = tf.cumsum(hist, axis=1, exclusive=True)
    lut = tf.floor((tf.floor(step / 2.0) + before) / tf.maximum(step, 1.0))
    lut = tf.clip_by_value(lut, 0.0, 255.0)
    nonzero = tf.reduce_sum(tf.cast(hist > 0, tf.int32), axis=1, keepdims=True)
    lut = tf.where((step > 0) & (nonzero > 1), lut, bins)
    return _apply_luts(image, lut)


def posterize(image, bits):
    """Keep the top `bits` bits of each value."""
    level = tf.pow(2.0, 8.0 - tf.cast(bits, tf.float32))
    return tf.floor(image / level) * level


def solarize(image, threshold):
    """Invert the values at or above `threshold`."""
    return tf.where(image < tf.cast(threshold, tf.float32), image, 255.0 - image)


def invert(image):
    return 255.0 - image


# ------------------------------------------------------------- UniMatch's strong view
@dataclasses.dataclass(frozen=True)
class SimclrOptions:
    """torchvision ColorJitter(brightness, contrast, saturation, hue) with p `jitter_p`,
    RandomGrayscale(`gray_p`), Gaussian blur with p `blur_p` and sigma in `blur_sigma`."""

    brightness: float = 0.5
    contrast: float = 0.5
    saturation: float = 0.5
    hue: float = 0.25
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple = (0.1, 2.0)


def simclr_params(seed, batch, options=SimclrOptions()):
    """Per-image draws of `simclr_strong` as a dict of [B] / [B, 4] tensors."""
    u = tf.random.stateless_uniform([batch, 12], seed=seed)
    o = options

    def factor(col, width):
        return 1.0 - width + 2.0 * width * u[:, col]

    return {
        "jitter": u[:, 0] < o.jitter_p,
        "factors": tf.stack([factor(1, o.brightness), factor(2, o.contrast),
                             factor(3, o.saturation), -o.hue + 2.0 * o.hue * u[:, 4]], 1),
        "order": tf.argsort(u[:, 5:9], axis=1, stable=True),
        "gray": u[:, 9] < o.gray_p,
        "blur": u[:, 10] < o.blur_p,
        "sigma": o.blur_sigma[0] + (o.blur_sigma[1] - o.blur_sigma[0]) * u[:, 11],
    }


def _jitter(image, factors, order):
    ops = (brightness, contrast, saturation, hue)
    for slot in range(4):
        image = tf.switch_case(order[slot], [
            (lambda op=op, k=k, x=image: op(x, factors[k])) for k, op in enumerate(ops)])
    return image


def _simclr_one(args):
    image, p = args
    image = tf.cond(p["jitter"], lambda: _jitter(image, p["factors"], p["order"]),
                    lambda: image)
    image = tf.cond(p["gray"], lambda: tf.tile(grayscale(image), [1, 1, 3]), lambda: image)
    return tf.cond(p["blur"], lambda: gaussian_blur(image, p["sigma"]), lambda: image)


def simclr_strong(images, seed, options=SimclrOptions()):
    """UniMatch's strong colour view of a batch [B, H, W, 3] in [0, 255] (see module doc)."""
    params = simclr_params(seed, tf.shape(images)[0], options)
    return tf.map_fn(_simclr_one, (quantize(images), params),
                     fn_output_signature=tf.float32)


# ----------------------------------------------------- AugSeg / iMAS random intensity
AUGSEG_OPS = ("identity", "autocontrast", "equalize", "blur", "contrast", "brightness",
              "color", "sharpness", "posterize", "solarize", "hue")
IMAS_OPS = ("identity", "autocontrast", "equalize", "invert", "blur", "contrast",
            "brightness", "color", "sharpness", "posterize", "solarize", "hue")


@dataclasses.dataclass(frozen=True)
class IntensityOps:
    """A random-intensity augmentation: `max_ops` draws (with replacement) from `ops`, a
    random count in 1..max_ops when `random_count`; enhance factors in `factor_range`,
    every strength u ~ U(0, 1) multiplied by `modifier`."""

    ops: tuple = AUGSEG_OPS
    max_ops: int = 3
    random_count: bool = True
    factor_range: tuple = (0.05, 0.95)
    modifier: float = 1.0


AUGSEG = IntensityOps()
IMAS = IntensityOps(ops=IMAS_OPS, max_ops=2, random_count=False, factor_range=(0.1, 0.95),
                    modifier=0.999)


def _magnitude(name, u, sign, spec):
    """The parameter of op `name` for strength u (AugSeg/iMAS ``img_aug_*`` formulas)."""
    v = u * spec.modifier
    lo, hi = spec.factor_range
    if name == "blur":
        return 0.1 + 1.9 * v
    if name in _ENHANCE:
        return hi - (hi - lo) * v
    if name == "posterize":
        return 8.0 - tf.maximum(1.0, tf.math.ceil(4.0 * v))
    if name == "solarize":
        return 256.0 - tf.maximum(1.0, tf.math.ceil(255.0 * v))
    if name == "hue":
        return sign * 0.5 * v
    return tf.zeros_like(u)


def intensity_params(seed, batch, spec=AUGSEG):
    """Per-image draws: ``count`` [B] (ops applied), ``ops`` [B, N] (indices into
    ``spec.ops``), ``magnitude`` [B, N] (blur sigma, enhance factor, posterize bits,
    solarize threshold or hue factor; 0 for ops without a parameter)."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    n = spec.max_ops
    if spec.random_count:
        count = tf.random.stateless_uniform([batch], seeds[0], 1, n + 1, dtype=tf.int32)
    else:
        count = tf.fill([batch], n)
    ops = tf.random.stateless_uniform([batch, n], seeds[1], 0, len(spec.ops), dtype=tf.int32)
    u = tf.random.stateless_uniform([batch, n], seeds[2])
    sign = tf.where(tf.random.stateless_uniform([batch, n], seeds[3]) < 0.5, -1.0, 1.0)
    table = tf.stack([_magnitude(name, u, sign, spec) for name in spec.ops], -1)
    magnitude = tf.gather(table, ops[..., None], batch_dims=2)[..., 0]
    return {"count": count, "ops": ops, "magnitude": magnitude}


OPS = {
    "identity": lambda x, m: x,
    "autocontrast": lambda x, m: autocontrast(x),
    "equalize": lambda x, m: equalize(x),
    "invert": lambda x, m: invert(x),
    "blur": gaussian_blur,
    "contrast": contrast,
    "brightness": brightness,
    "color": saturation,
    "sharpness": sharpness,
    "posterize": posterize,
    "solarize": solarize,
    "hue": hue,
}


def _apply_op(image, index, magnitude, names):
    """``OPS[names[index]](image, magnitude)`` for a tensor `index`."""
    return tf.switch_case(index, [(lambda f=OPS[name]: f(image, magnitude)) for name in names])


def _intensity_one(spec):
    def apply(args):
        image, p = args
        for slot in range(spec.max_ops):
            image = tf.cond(
                slot < p["count"],
                lambda s=slot, x=image: _apply_op(x, p["ops"][s], p["magnitude"][s], spec.ops),
                lambda x=image: x)
        return image

    return apply


def random_intensity(images, seed, spec=AUGSEG):
    """AugSeg's (`AUGSEG`) or iMAS's (`IMAS`) random-intensity view of a batch in [0, 255]."""
    params = intensity_params(seed, tf.shape(images)[0], spec)
    return tf.map_fn(_intensity_one(spec), (quantize(images), params),
                     fn_output_signature=tf.float32)


def hardness_mix(strong, weak, hardness):
    """iMAS: ``h_i * strong_i + (1 - h_i) * weak_i`` with the per-image hardness [B]."""
    h = tf.reshape(tf.cast(hardness, strong.dtype), [-1, 1, 1, 1])
    return h * strong + (1.0 - h) * weak
