import numpy as np
import pytest

from iseg.metrics import (
    ConfusionMatrix,
    batch_confusion_matrix,
    format_results_table,
    scores_from_confusion,
)


def _loop_confusion(labels, preds, k, ignore):
    m = np.zeros((k, k), np.int64)
    for lab, p in zip(labels.ravel(), preds.ravel()):
        if lab == ignore or lab < 0 or lab >= k:
            continue
        m[lab, p] += 1
    return m


def test_confusion_matrix_matches_loop_and_streams():
    rng = np.random.default_rng(0)
    k, ignore = 5, 255
    total = np.zeros((k, k), np.int64)
    cm = ConfusionMatrix(k, ignore)
    for _ in range(3):
        labels = rng.integers(0, k, size=(2, 9, 7))
        labels[rng.random(labels.shape) < 0.2] = ignore
        preds = rng.integers(0, k, size=labels.shape)
        np.testing.assert_array_equal(
            batch_confusion_matrix(labels, preds, k, ignore).numpy(),
            _loop_confusion(labels, preds, k, ignore))
        cm.update(labels, preds)
        total += _loop_confusion(labels, preds, k, ignore)
    np.testing.assert_array_equal(cm.matrix, total)


def test_scores_against_definitions():
    # class 3 never occurs in ground truth nor prediction -> excluded from mIoU
    m = np.array([[5, 1, 0, 0], [2, 3, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    m[2, 0] = 0
    m[0, 2] = 4  # class 2 predicted but never in ground truth: IoU 0, still counted
    s = scores_from_confusion(m, ["a", "b", "c", "d"])
    iou_a = 5 / (5 + 1 + 4 + 2)
    iou_b = 3 / (3 + 2 + 1)
    assert s["per_class_iou"]["a"] == pytest.approx(iou_a)
    assert s["per_class_iou"]["b"] == pytest.approx(iou_b)
    assert s["per_class_iou"]["c"] == 0.0
    assert s["per_class_iou"]["d"] is None
    assert s["miou"] == pytest.approx((iou_a + iou_b + 0.0) / 3)
    assert s["pixel_accuracy"] == pytest.approx(8 / m.sum())
    assert s["num_classes_present"] == 3
    table = format_results_table(s, "val")
    assert "mIoU" in table and "a " in table and "   -  " in table


def test_wrong_shapes_and_names():
    with pytest.raises(ValueError, match="class names"):
        scores_from_confusion(np.eye(3), ["a"])
    with pytest.raises(ValueError, match="shape"):
        ConfusionMatrix(3).add(np.eye(2))
