"""Pseudo-labels, confidence filters and the unsupervised losses of the semi-supervised
methods (docs/semi_supervised.md; SEMI.md section 8, pieces 3-5).

TensorFlow code, usable inside `tf.function` and under `tf.distribute`. Shapes: logits and
probabilities ``[B, H, W, K]``, labels ``int32 [B, H, W]``, masks ``bool [B, H, W]`` (for
`ignore`: True = padded or ignored, never in a loss). Targets (pseudo-labels, confidences,
teacher probabilities) never receive gradients: every function stops them.

Normalisers of an unsupervised loss (SEMI.md 8.4; they are not interchangeable):
  "all_pixels":  sum over kept pixels / all B*H*W pixels (AugSeg, iMAS);
  "non_ignored": sum over kept pixels / #(not ignored) pixels (UniMatch, CorrMatch, CPS);
  "valid":       sum over kept pixels / max(#kept, 1) (CW-BASS).
"""

import tensorflow as tf

from iseg.distribute import cross_replica_gather, cross_replica_sum

NORMALISERS = ("all_pixels", "non_ignored", "valid")


def pseudo_labels(probs):
    """(label int32 [B, H, W], conf float32 [B, H, W]): argmax and max of `probs`, no
    gradient."""
    probs = tf.stop_gradient(tf.cast(probs, tf.float32))
    return tf.argmax(probs, axis=-1, output_type=tf.int32), tf.reduce_max(probs, axis=-1)


def keep_mask(conf, tau, ignore=None):
    """bool [B, H, W]: pixels kept by a confidence threshold `tau` (conf >= tau; tau <= 0
    keeps every pixel, the "no filter" of CPS and AugSeg's Cityscapes recipe) and not
    ignored."""
    keep = conf >= tf.cast(tau, tf.float32)  # confidences are >= 0
    return keep if ignore is None else tf.logical_and(keep, tf.logical_not(ignore))


def _valid(shape, ignore):
    return tf.ones(shape, tf.bool) if ignore is None else tf.logical_not(ignore)


def class_max_confidence(label, conf, ignore=None, num_classes=None):
    """CorrMatch's batch statistic g: for each predicted class present among the
    non-ignored pixels of the global batch (all replicas), the maximum confidence of its
    pixels; g is their mean over those classes. Returns (g, present) with `present` False
    when no pixel is left (g is then 0)."""
    valid = _valid(tf.shape(label), ignore)
    onehot = tf.logical_and(tf.one_hot(label, num_classes, on_value=True, off_value=False,
                                       dtype=tf.bool), valid[..., None])
    conf_k = tf.where(onehot, conf[..., None], -1.0)
    class_max = tf.reduce_max(tf.reshape(conf_k, [-1, num_classes]), axis=0)
    class_max = tf.reduce_max(cross_replica_gather(class_max[None]), axis=0)
    present = class_max >= 0.0
    count = tf.reduce_sum(tf.cast(present, tf.float32))
    g = tf.math.divide_no_nan(tf.reduce_sum(tf.where(present, class_max, 0.0)), count)
    return g, count > 0


def update_adaptive_threshold(tau, label, conf, ignore=None, num_classes=None,
                              momentum=0.999):
    """CorrMatch's adaptive global threshold: tau <- momentum*tau + (1-momentum)*g with g
    from `class_max_confidence`; unchanged when no pixel is left. `tau` is a float32
    tf.Variable (the method's state); returns its new value."""
    g, present = class_max_confidence(label, conf, ignore, num_classes)
    g = tf.stop_gradient(g)
    new = tf.where(present, momentum * tau + (1.0 - momentum) * g, tf.identity(tau))
    tau.assign(new)
    return new


def dynamic_threshold(conf, ignore=None, base=0.6, beta=0.5, low=0.3, high=0.8):
    """CW-BASS's threshold clip(base / (1 + exp(-beta (cbar - 0.5))), low, high), cbar the
    mean confidence over the non-ignored pixels of the global batch (all replicas)."""
    valid = tf.cast(_valid(tf.shape(conf), ignore), tf.float32)
    sums = cross_replica_sum(tf.stack([tf.reduce_sum(conf * valid), tf.reduce_sum(valid)]))
    cbar = tf.stop_gradient(tf.math.divide_no_nan(sums[0], sums[1]))
    return tf.clip_by_value(base / (1.0 + tf.exp(-beta * (cbar - 0.5))), low, high)


def confidence_weights(conf, gamma=1.0):
    """Per-pixel weights conf**gamma (CW-BASS), no gradient."""
    return tf.pow(tf.stop_gradient(conf), gamma)


def pixel_ce(logits, target):
    """Per-pixel cross-entropy float32 [B, H, W] of `logits` against int `target` (every
    value a class index; masks decide which pixels count)."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.stop_gradient(target), logits=tf.cast(logits, tf.float32))


def normalise(per_pixel, mask, ignore=None, normaliser="non_ignored", weights=None):
    """A per-pixel loss [B, H, W] summed over `mask` (times `weights`) and divided as
    `normaliser` says (module docstring)."""
    if normaliser not in NORMALISERS:
        raise ValueError(f"normaliser must be one of {NORMALISERS}, got {normaliser!r}")
    kept = tf.cast(mask, tf.float32)
    if weights is not None:
        per_pixel = per_pixel * tf.stop_gradient(tf.cast(weights, tf.float32))
    total = tf.reduce_sum(per_pixel * kept)
    if normaliser == "all_pixels":
        return total / tf.cast(tf.size(kept), tf.float32)
    if normaliser == "valid":
        return total / tf.maximum(tf.reduce_sum(kept), 1.0)
    valid = tf.cast(_valid(tf.shape(kept), ignore), tf.float32)
    return tf.math.divide_no_nan(total, tf.reduce_sum(valid))


def unsup_ce(logits, target, mask, ignore=None, normaliser="non_ignored", weights=None):
    """The pseudo-label cross-entropy of `logits` against `target` over `mask` (bool),
    weighted by `weights` (per pixel [B, H, W] or per image [B, 1, 1]) and normalised as
    `normaliser` says."""
    return normalise(pixel_ce(logits, target), mask, ignore, normaliser, weights)


def kl_loss(logits, target_probs, mask, ignore=None, normaliser="non_ignored"):
    """CorrMatch's consistency term: sum over `mask` of KL(p_target || softmax(logits))
    (summed over classes; 0 log 0 = 0), normalised as `normaliser` says."""
    p = tf.stop_gradient(tf.cast(target_probs, tf.float32))
    log_q = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)
    log_p = tf.math.log(tf.where(p > 0.0, p, 1.0))
    per_pixel = tf.reduce_sum(p * (log_p - log_q), axis=-1)
    return normalise(per_pixel, mask, ignore, normaliser)


def weighted_iou(pred, ref, num_classes, valid=None):
    """iMAS's class-weighted IoU per image [B]: sum_c w_c IoU_c(pred, ref) with w_c the
    pixel frequency of class c in `ref`, background (class 0) weight 0, renormalised; NaN
    IoUs (empty union) skipped; an image whose `ref` is all background gets 0. Only the
    `valid` (bool [B, H, W]) pixels count when given."""
    p = tf.one_hot(pred, num_classes)
    r = tf.one_hot(ref, num_classes)
    if valid is not None:
        p, r = (t * tf.cast(valid, tf.float32)[..., None] for t in (p, r))
    inter = tf.reduce_sum(p * r, axis=[1, 2])
    union = tf.reduce_sum(p, axis=[1, 2]) + tf.reduce_sum(r, axis=[1, 2]) - inter
    freq = tf.reduce_sum(r, axis=[1, 2]) * tf.one_hot(0, num_classes, 0.0, 1.0)
    weights = tf.math.divide_no_nan(freq, tf.reduce_sum(freq, axis=-1, keepdims=True))
    return tf.reduce_sum(weights * tf.math.divide_no_nan(inter, union), axis=-1)


def hardness(student_probs, teacher_probs, tau, ignore=None):
    """iMAS's per-image hardness h [B] (larger = easier):
    h = (rho_t IoU_t + rho_s IoU_s) / 2 with IoU_t = wIoU(student, teacher), IoU_s =
    wIoU(teacher, student) (`weighted_iou`) and rho the fraction of pixels with conf >=
    tau; over the non-ignored pixels (all pixels, as coded, when `ignore` is None)."""
    num_classes = student_probs.shape[-1]
    label_s, conf_s = pseudo_labels(student_probs)
    label_t, conf_t = pseudo_labels(teacher_probs)
    valid = _valid(tf.shape(label_s), ignore)
    count = tf.reduce_sum(tf.cast(valid, tf.float32), axis=[1, 2])

    def ratio(conf):
        kept = tf.cast(tf.logical_and(conf >= tau, valid), tf.float32)
        return tf.math.divide_no_nan(tf.reduce_sum(kept, axis=[1, 2]), count)

    iou_t = weighted_iou(label_s, label_t, num_classes, valid)
    iou_s = weighted_iou(label_t, label_s, num_classes, valid)
    return (ratio(conf_t) * iou_t + ratio(conf_s) * iou_s) / 2.0


_SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))


def sobel_boundary(label, num_classes):
    """CW-BASS's boundary mask bool [B, H, W]: a pixel where the Sobel x or y response of
    any class channel of the one-hot `label` is non-zero (zero padding, so the image
    border counts as a boundary, as coded)."""
    onehot = tf.one_hot(tf.clip_by_value(label, 0, num_classes - 1), num_classes)
    sx = tf.constant(_SOBEL_X)
    kernel = tf.stack([sx, tf.transpose(sx)], axis=-1)[:, :, None, :]
    kernel = tf.tile(kernel, [1, 1, num_classes, 1])
    edges = tf.nn.depthwise_conv2d(onehot, kernel, [1, 1, 1, 1], "SAME")
    return tf.reduce_any(tf.not_equal(edges, 0.0), axis=-1)


def cwbass_terms(logits, target, conf, valid, boundary, gamma=1.0):
    """CW-BASS's two unsupervised terms (L_cw, L_b), its loss being L_cw + 0.5 L_b:
    L_cw = sum_valid conf^gamma CE / max(#valid, 1);
    L_b = sum_{boundary and valid} CE / max(#(boundary and valid), 1)."""
    ce = pixel_ce(logits, target)
    weighted = normalise(ce, valid, normaliser="valid", weights=confidence_weights(conf, gamma))
    return weighted, normalise(ce, tf.logical_and(boundary, valid), normaliser="valid")
