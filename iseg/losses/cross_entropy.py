"""Pixel-wise cross-entropy with an ignore label, class weights and OHEM (keras.ops only)."""

from keras import ops

REDUCTIONS = ("valid_mean", "all_pixels")


def pixel_cross_entropy(
    labels,
    logits,
    ignore_label=255,
    class_weights=None,
    reduction="valid_mean",
    ohem_thresh=None,
    ohem_min_kept=100000,
):
    """Mean pixel cross-entropy of `logits [N, H, W, K]` against int `labels [N, H, W]`.

    - `ignore_label` pixels contribute nothing.
    - `class_weights` (length K) weight each pixel by the weight of its label.
    - `reduction="valid_mean"` divides by the (weighted) number of valid pixels (mmseg);
      `"all_pixels"` divides by all N*H*W pixels, ignored and padded ones included (the
      original TF code).
    - OHEM (`ohem_thresh` not None): only pixels whose ground-truth probability is below
      `max(ohem_thresh, p_(min_kept))` are kept, `p_(min_kept)` being the `ohem_min_kept`-th
      smallest ground-truth probability among valid pixels (mmseg's OHEM pixel sampler).
    Computed in float32 whatever the logits dtype.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    num_classes = logits.shape[-1]
    logits = ops.reshape(ops.cast(logits, "float32"), (-1, num_classes))
    labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
    valid = ops.logical_and(ops.not_equal(labels, ignore_label), labels >= 0)
    valid = ops.logical_and(valid, labels < num_classes)
    safe = ops.where(valid, labels, 0)
    log_probs = ops.log_softmax(logits, axis=-1)
    picked = ops.take_along_axis(log_probs, safe[:, None], axis=-1)[:, 0]
    weights = ops.cast(valid, "float32")
    if class_weights is not None:
        table = ops.convert_to_tensor(class_weights, dtype="float32")
        weights = weights * ops.take(table, safe)
    if ohem_thresh is not None:
        gt_prob = ops.where(valid, ops.exp(picked), 2.0)
        num_valid = ops.sum(ops.cast(valid, "int32"))
        kth = ops.minimum(ohem_min_kept, ops.maximum(num_valid - 1, 0))
        kth_prob = ops.take(ops.sort(gt_prob), kth)
        threshold = ops.maximum(kth_prob, ohem_thresh)
        weights = weights * ops.cast(gt_prob < threshold, "float32")
    total = -ops.sum(picked * weights)
    if reduction == "all_pixels":
        return total / ops.cast(ops.shape(labels)[0], "float32")
    return ops.divide_no_nan(total, ops.sum(weights))
