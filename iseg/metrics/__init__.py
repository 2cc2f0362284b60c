"""Streaming confusion matrix and the segmentation scores derived from it."""

from iseg.metrics.confusion import (
    ConfusionMatrix,
    batch_confusion_matrix,
    format_results_table,
    numpy_confusion_matrix,
    scores_from_confusion,
)
