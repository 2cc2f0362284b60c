"""Box masks and mixers of semi-supervised training (TensorFlow ops, stateless seeds).

A mixer moves boxes between the images of an unlabeled batch (or from a second batch, or
from labeled images) and moves the targets with them: the batch is a dict of tensors with
the batch axis first (``image`` [B, H, W, 3], ``label`` [B, H, W], ``conf`` [B, H, W],
``ignore`` [B, H, W], any subset); one mask [B, H, W] is applied to every entry (`paste`).

- `unimatch_box` (UniMatch, CorrMatch): with p 0.5 one box of area U(0.02, 0.4) H W and
  aspect ratio U(0.3, 1/0.3), ``w = int(sqrt(area / r))``, ``h = int(sqrt(area r))``, top-left
  corner uniform over the image, redrawn (ratio and corner) until the box lies inside.
  The redraws are `tries` parallel candidates; the first inside one is taken (none inside,
  probability below 1e-6 for 256 tries: no box).
- `cps_box_mask` (CPS + CutMix, ``BoxMaskGenerator``): 3 boxes of area fraction
  U(0.25, 0.5) / 3, aspect ``y = exp(U ln a)``, ``x = a / y`` (both times sqrt(1/3)), sizes
  and corners rounded (half to even, as NumPy), inside the image; overlaps toggle (XOR);
  the mask starts at 0 (``invert``). ``x_mix = u0 (1 - M) + u1 M``.
- `augseg_mix` (AugSeg ``cut_mix_label_adaptive``): see its docstring.
- `imas_mix` (iMAS ``cut_mix_by_hardness``): see its docstring.
"""

import tensorflow as tf


def box_mask(boxes, height, width):
    """bool [B, H, W]: True inside ``boxes`` [B, 4] = (y0, x0, y1, x1), end exclusive."""
    boxes = tf.cast(boxes, tf.int32)
    rows = tf.range(height)[None, :, None]
    cols = tf.range(width)[None, None, :]
    y0, x0, y1, x1 = tf.unstack(tf.reshape(boxes, [-1, 4, 1, 1]), axis=1)
    return (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)


def paste(mask, base, source):
    """Each entry of dict `base` with the pixels of `mask` [B, H, W] taken from `source`
    (same keys and shapes)."""
    out = {}
    for key, value in base.items():
        m = tf.reshape(mask, tf.concat([tf.shape(mask), tf.ones([value.shape.rank - 3],
                                                                tf.int32)], 0))
        out[key] = tf.where(m, source[key], value)
    return out


def gather_batch(batch, index):
    """Every entry of dict `batch` reordered along the batch axis by `index` [B]."""
    return {key: tf.gather(value, index) for key, value in batch.items()}


def permutation(seed, n):
    """A uniformly random permutation of range(n)."""
    return tf.argsort(tf.random.stateless_uniform([n], seed), stable=True)


# ---------------------------------------------------------------------- UniMatch
def unimatch_params(seed, batch, height, width, p=0.5, area=(0.02, 0.4),
                    ratio=(0.3, 1.0 / 0.3), tries=256):
    """The draws of `unimatch_box`: ``apply`` [B], ``size`` [B, 1] (box area in pixels),
    ``ratio``, ``x``, ``y`` [B, tries] (the candidates)."""
    seeds = tf.random.experimental.stateless_split(seed, 5)
    pixels = tf.cast(height * width, tf.float32)
    return {
        "apply": tf.random.stateless_uniform([batch], seeds[0]) < p,
        "size": tf.random.stateless_uniform([batch, 1], seeds[1], area[0], area[1]) * pixels,
        "ratio": tf.random.stateless_uniform([batch, tries], seeds[2], ratio[0], ratio[1]),
        "x": tf.random.stateless_uniform([batch, tries], seeds[3], 0, width, dtype=tf.int32),
        "y": tf.random.stateless_uniform([batch, tries], seeds[4], 0, height, dtype=tf.int32),
    }


def unimatch_box(seed, batch, height, width, **options):
    """UniMatch's CutMix box masks bool [B, H, W] (module docstring); `options` as
    `unimatch_params`."""
    p = unimatch_params(seed, batch, height, width, **options)
    box_w = tf.cast(tf.sqrt(p["size"] / p["ratio"]), tf.int32)
    box_h = tf.cast(tf.sqrt(p["size"] * p["ratio"]), tf.int32)
    inside = (p["x"] + box_w <= width) & (p["y"] + box_h <= height)
    first = tf.argmax(tf.cast(inside, tf.int32), axis=1, output_type=tf.int32)
    pick = lambda t: tf.gather(t, first, batch_dims=1)  # noqa: E731
    y0, x0 = pick(p["y"]), pick(p["x"])
    boxes = tf.stack([y0, x0, y0 + pick(box_h), x0 + pick(box_w)], 1)
    keep = p["apply"] & tf.reduce_any(inside, axis=1)
    return box_mask(boxes, height, width) & keep[:, None, None]


# --------------------------------------------------------------------------- CPS
def cps_params(seed, batch, n_boxes=3, area=(0.25, 0.5)):
    """The draws of `cps_box_mask` (float64, as NumPy): ``props`` [B, n] (area fractions),
    ``aspect`` [B, n] and ``position`` [B, n, 2] (uniform in [0, 1))."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    uniform = lambda shape, s, lo=0.0, hi=1.0: tf.random.stateless_uniform(  # noqa: E731
        shape, s, lo, hi, dtype=tf.float64)
    return {"props": uniform([batch, n_boxes], seeds[0], area[0], area[1]),
            "aspect": uniform([batch, n_boxes], seeds[1]),
            "position": uniform([batch, n_boxes, 2], seeds[2])}


def cps_boxes(params, height, width):
    """[B, n, 4] boxes (y0, x0, y1, x1) of CPS's ``BoxMaskGenerator`` from `cps_params`."""
    props = params["props"]
    y_props = tf.exp(params["aspect"] * tf.math.log(props))
    x_props = props / y_props
    fac = tf.sqrt(1.0 / tf.cast(tf.shape(props)[1], tf.float64))
    shape = tf.cast(tf.stack([height, width]), tf.float64)
    sizes = tf.round(tf.stack([y_props * fac, x_props * fac], -1) * shape)
    corners = tf.round((shape - sizes) * params["position"])
    return tf.cast(tf.concat([corners, corners + sizes], -1), tf.int32)


def cps_box_mask(seed, batch, height, width, n_boxes=3, area=(0.25, 0.5)):
    """bool [B, H, W]: CPS's XOR of `n_boxes` boxes, starting from 0 (module docstring)."""
    boxes = cps_boxes(cps_params(seed, batch, n_boxes, area), height, width)
    mask = tf.zeros([batch, height, width], tf.bool)
    for k in range(n_boxes):
        mask = tf.math.logical_xor(mask, box_mask(boxes[:, k], height, width))
    return mask


# ------------------------------------------------------------------ AugSeg / iMAS
def centre_boxes(seed, batch, height, width, cut_h, cut_w, low):
    """[B, 4] boxes of the AugSeg/iMAS ``rand_bbox``: centre ``c ~ U_int[int(n * low), n)``
    per axis, box ``[clip(c - cut // 2), clip(c + cut // 2))``."""
    seeds = tf.random.experimental.stateless_split(seed, 2)

    def axis(s, n, cut):
        lo = tf.cast(tf.floor(tf.cast(n, tf.float32) * low), tf.int32)
        c = tf.random.stateless_uniform([batch], s, lo, n, dtype=tf.int32)
        return tf.clip_by_value(c - cut // 2, 0, n), tf.clip_by_value(c + cut // 2, 0, n)

    y0, y1 = axis(seeds[0], height, cut_h)
    x0, x1 = axis(seeds[1], width, cut_w)
    return tf.stack([y0, x0, y1, x1], 1)


def _beta(seed, a, b):
    """One Beta(a, b) draw (ratio of stateless Gamma draws)."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    ga = tf.random.stateless_gamma([], seeds[0], alpha=a)
    gb = tf.random.stateless_gamma([], seeds[1], alpha=b)
    return ga / (ga + gb)


def _lambda_cut(lam, n):
    """``int(n * sqrt(1 - lam))``: the side of a CutMix box of area fraction 1 - lam."""
    return tf.cast(tf.cast(n, tf.float32) * tf.sqrt(1.0 - lam), tf.int32)


def injection_confidence(probs):
    """AugSeg's rho_i [B]: the mean over the pixels of ``(1 - H(p) / log K) * max p``."""
    probs = tf.stop_gradient(tf.cast(probs, tf.float32))
    k = tf.cast(tf.shape(probs)[-1], tf.float32)
    entropy = -tf.reduce_sum(probs * tf.math.log(probs + 1e-10), axis=-1) / tf.math.log(k)
    return tf.reduce_mean((1.0 - entropy) * tf.reduce_max(probs, axis=-1), axis=[1, 2])


def augseg_params(seed, batch, height, width):
    """The draws of `augseg_mix`: ``label_lam``, ``mix_lam`` (Beta(8, 2), Beta(4, 4)),
    ``perm`` [B], ``inject`` uniform [B] (inject where it
    exceeds rho_i), ``label_boxes`` and ``mix_boxes`` [B, 4]."""
    seeds = tf.random.experimental.stateless_split(seed, 6)
    lam_l, lam_u = _beta(seeds[0], 8.0, 2.0), _beta(seeds[1], 4.0, 4.0)
    return {
        "label_lam": lam_l,
        "mix_lam": lam_u,
        "perm": permutation(seeds[2], batch),
        "inject": tf.random.stateless_uniform([batch], seeds[3]),
        "label_boxes": centre_boxes(seeds[4], batch, height, width, _lambda_cut(lam_l, height),
                                    _lambda_cut(lam_l, width), 1.0 / 8.0),
        "mix_boxes": centre_boxes(seeds[5], batch, height, width, _lambda_cut(lam_u, height),
                                  _lambda_cut(lam_u, width), 1.0 / 8.0),
    }


def augseg_mix(seed, unlabeled, labeled, rho, ignore_label=255):
    """AugSeg's confidence-adaptive label-injecting CutMix, as ``cut_mix_label_adaptive``.

    `unlabeled`: dict image, label (pseudo), conf, ignore [B, ...]; `labeled`: dict image,
    label (ground truth, `ignore_label` where unknown) of the same shapes; `rho` [B]
    (`injection_confidence`). With one permutation ``perm``:
    1. a copy of the unlabeled batch where, for each i with probability 1 - rho_i, the box
       ``label_boxes[i]`` (side ``int(n sqrt(1 - lam))``, lam ~ Beta(8, 2)) holds labeled
       image ``perm[i]``, its ground truth and confidence 1 (ignored where the ground truth
       is `ignore_label`);
    2. every unlabeled image i receives in ``mix_boxes[i]`` (lam ~ Beta(4, 4)) the box of
       copy ``perm[i]``. Outside that box image i keeps its own pixels (the official code
       writes the injection into the copy only).
    Box centres ~ U_int[n / 8, n) per axis. Returns (mixed dict, params).
    """
    shape = tf.shape(unlabeled["label"])
    params = augseg_params(seed, shape[0], shape[1], shape[2])
    # labeled image perm[i] (modulo the labeled batch size when it is smaller)
    donor = gather_batch(labeled, tf.math.floormod(params["perm"],
                                                   tf.shape(labeled["label"])[0]))
    donor = {"image": donor["image"], "label": donor["label"],
             "conf": tf.ones_like(unlabeled["conf"]),
             "ignore": tf.equal(donor["label"], ignore_label)}
    donor["label"] = tf.where(donor["ignore"], unlabeled["label"], donor["label"])
    inject = params["inject"] > tf.cast(rho, tf.float32)
    label_mask = box_mask(params["label_boxes"], shape[1], shape[2]) & inject[:, None, None]
    injected = paste(label_mask, unlabeled, donor)
    mix_mask = box_mask(params["mix_boxes"], shape[1], shape[2])
    return paste(mix_mask, unlabeled, gather_batch(injected, params["perm"])), params


def hardness_partners(hardness):
    """iMAS's pairing [B]: sorted by hardness, rank k takes its box from rank B - 1 - k
    (a stable sort: ties keep their batch order)."""
    order = tf.argsort(hardness, stable=True)
    return tf.scatter_nd(order[:, None], tf.reverse(order, [0]), tf.shape(order))


def imas_params(seed, hardness, height, width, size_range=(0.1, 0.9)):
    """The draws of `imas_mix`: ``v`` (box side / image side), ``trigger`` (bool:
    U < mean h), ``partner`` [B], ``boxes`` [B, 4] (side ``int(n v)``, v ~ U(size_range)
    per batch, centres U_int[n / 16, n))."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    hardness = tf.cast(hardness, tf.float32)
    u = tf.random.stateless_uniform([2], seeds[0])
    v = size_range[0] + (size_range[1] - size_range[0]) * u[1]
    side = lambda n: tf.cast(tf.cast(n, tf.float32) * v, tf.int32)  # noqa: E731
    return {
        "v": v,
        "trigger": u[0] < tf.reduce_mean(hardness),
        "partner": hardness_partners(hardness),
        "boxes": centre_boxes(seeds[1], tf.shape(hardness)[0], height, width, side(height),
                              side(width), 1.0 / 16.0),
    }


def imas_mix(seed, batch, hardness, size_range=(0.1, 0.9)):
    """iMAS's hardness-paired CutMix of a weak unlabeled batch and its teacher targets
    (``cut_mix_by_hardness``): image i takes box i from its hardness partner (easy from
    hard and vice versa). Returns (mixed dict, params); the method uses the mixed batch
    only when ``params["trigger"]`` (probability mean h, ``flag_cmix_trigger_by_hard``)."""
    shape = tf.shape(batch["label"])
    params = imas_params(seed, hardness, shape[1], shape[2], size_range)
    mask = box_mask(params["boxes"], shape[1], shape[2])
    return paste(mask, batch, gather_batch(batch, params["partner"])), params
