"""Confusion matrix over a whole split, and mIoU / pixel accuracy / per-class IoU.

Conventions (the reference implementation's): the matrix is accumulated over every pixel
of the split (not averaged per image); `IoU_k = TP / (TP + FP + FN)`; mIoU is the mean
over classes whose denominator is non-zero (classes that occur in the ground truth or the
prediction). Pixels whose label is the ignore label, or outside `[0, num_classes)`, are
not counted.
"""

import numpy as np


def batch_confusion_matrix(labels, predictions, num_classes, ignore_label=255):
    """`[K, K]` int64 counts for one batch: rows = ground truth, columns = prediction.

    `labels` and `predictions` are integer tensors of the same shape (any rank).
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    labels = tf.reshape(tf.cast(labels, tf.int64), [-1])
    predictions = tf.reshape(tf.cast(predictions, tf.int64), [-1])
    k = tf.constant(num_classes, tf.int64)
    valid = (labels >= 0) & (labels < k) & (labels != ignore_label)
    valid &= (predictions >= 0) & (predictions < k)
    index = tf.boolean_mask(labels * k + predictions, valid)
    counts = tf.math.bincount(index, minlength=num_classes * num_classes,
                              maxlength=num_classes * num_classes, dtype=tf.int64)
    return tf.reshape(counts, [num_classes, num_classes])


def numpy_confusion_matrix(labels, predictions, num_classes, ignore_label=255):
    """`batch_confusion_matrix` in NumPy (no TensorFlow), for NumPy label maps."""
    labels = np.asarray(labels, np.int64).reshape(-1)
    predictions = np.asarray(predictions, np.int64).reshape(-1)
    valid = (labels >= 0) & (labels < num_classes) & (labels != ignore_label)
    valid &= (predictions >= 0) & (predictions < num_classes)
    index = labels[valid] * num_classes + predictions[valid]
    counts = np.bincount(index, minlength=num_classes * num_classes)
    return counts.astype(np.int64).reshape(num_classes, num_classes)


class ConfusionMatrix:
    """Accumulates a `[K, K]` int64 confusion matrix over batches (host side)."""

    def __init__(self, num_classes, ignore_label=255):
        self.num_classes = int(num_classes)
        self.ignore_label = ignore_label
        self.matrix = np.zeros((self.num_classes, self.num_classes), np.int64)

    def update(self, labels, predictions):
        """Add one batch of integer label / prediction maps."""
        self.add(batch_confusion_matrix(labels, predictions, self.num_classes,
                                        self.ignore_label))

    def add(self, matrix):
        """Add an already computed `[K, K]` count matrix."""
        matrix = np.asarray(matrix, np.int64)
        if matrix.shape != self.matrix.shape:
            raise ValueError(
                f"confusion matrix shape {matrix.shape} != {self.matrix.shape}")
        self.matrix += matrix

    def reset(self):
        self.matrix[:] = 0

    def scores(self, class_names=None):
        return scores_from_confusion(self.matrix, class_names)


def scores_from_confusion(matrix, class_names=None):
    """Scores from a `[K, K]` confusion matrix (rows = ground truth).

    Returns a dict: `miou`, `pixel_accuracy`, `mean_accuracy` (over classes present in the
    ground truth), `fwiou` (frequency-weighted IoU), `per_class_iou` (name -> IoU, or None
    for a class absent from both ground truth and prediction), `per_class_accuracy`,
    `num_pixels`, `num_classes_present`.
    """
    m = np.asarray(matrix, np.float64)
    k = m.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for a {k}-class confusion matrix")
    tp = np.diag(m)
    gt = m.sum(axis=1)
    pred = m.sum(axis=0)
    union = gt + pred - tp
    present = union > 0
    iou = np.where(present, tp / np.maximum(union, 1), np.nan)
    acc = np.where(gt > 0, tp / np.maximum(gt, 1), np.nan)
    total = m.sum()
    freq = gt / max(total, 1)
    return {
        "miou": float(np.mean(iou[present])) if present.any() else 0.0,
        "pixel_accuracy": float(tp.sum() / total) if total > 0 else 0.0,
        "mean_accuracy": float(np.mean(acc[gt > 0])) if (gt > 0).any() else 0.0,
        "fwiou": float(np.sum(freq[present] * iou[present])),
        "per_class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou)},
        "per_class_accuracy": {
            n: (None if np.isnan(v) else float(v)) for n, v in zip(names, acc)},
        "num_pixels": int(total),
        "num_classes_present": int(present.sum()),
    }


def format_results_table(scores, title=None):
    """A plain-text table: one row per class (IoU, accuracy in %) and the summary rows."""
    names = list(scores["per_class_iou"])
    width = max([len(n) for n in names] + [len("pixel accuracy")])
    fmt = lambda v: "   -  " if v is None else f"{100 * v:6.2f}"  # noqa: E731
    lines = []
    if title:
        lines.append(title)
    lines.append(f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}")
    lines.append("-" * (width + 16))
    for n in names:
        lines.append(f"{n:<{width}}  {fmt(scores['per_class_iou'][n])}  "
                     f"{fmt(scores['per_class_accuracy'][n])}")
    lines.append("-" * (width + 16))
    lines.append(f"{'mIoU':<{width}}  {fmt(scores['miou'])}")
    lines.append(f"{'pixel accuracy':<{width}}  {fmt(scores['pixel_accuracy'])}")
    lines.append(f"{'mean accuracy':<{width}}  {fmt(scores['mean_accuracy'])}")
    return "\n".join(lines)
