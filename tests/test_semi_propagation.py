"""CorrMatch's region propagation (iseg.semi.propagation) against NumPy loops."""

import numpy as np
import tensorflow as tf

from iseg.semi import propagation

K = 3


def _bilinear_align_corners(img, out_h, out_w):
    """Oracle resize of one [h, w] map, one output pixel at a time."""
    h, w = img.shape
    out = np.zeros((out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            y = i * (h - 1) / (out_h - 1) if out_h > 1 else 0.0
            x = j * (w - 1) / (out_w - 1) if out_w > 1 else 0.0
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            dy, dx = y - y0, x - x0
            out[i, j] = ((1 - dy) * (1 - dx) * img[y0, x0] + (1 - dy) * dx * img[y0, x1]
                         + dy * (1 - dx) * img[y1, x0] + dy * dx * img[y1, x1])
    return out


def test_query_rows():
    rng = np.random.default_rng(0)
    affinity = rng.random((2, 12, 12)).astype("float32")
    seed = tf.constant([3, 4], tf.int32)
    rows, index = propagation.query_rows(tf.constant(affinity), seed, num_regions=64)
    index = index.numpy()
    assert index.shape == (64,) and index.min() >= 0 and index.max() <= 10  # [0, N - 1)
    np.testing.assert_array_equal(rows.numpy(), affinity[:, index])
    again = propagation.query_rows(tf.constant(affinity), seed, num_regions=64)[1]
    np.testing.assert_array_equal(again.numpy(), index)  # stateless: the seed decides
    other = propagation.query_rows(tf.constant(affinity), seed + 1, num_regions=64)[1]
    assert (other.numpy() != index).any()


def test_row_regions():
    rng = np.random.default_rng(1)
    h, w, size = 3, 4, (7, 9)
    rows = rng.random((2, 5, h * w)).astype("float32")
    rows[1, 2] = 0.0  # a constant row: no region (0 / 0)
    got = propagation.row_regions(tf.constant(rows), (h, w), size).numpy()
    assert got.shape == (2, 5) + size
    for b in range(2):
        for m in range(5):
            up = _bilinear_align_corners(rows[b, m].reshape(h, w), *size)
            if up.max() == up.min():
                want = np.zeros(size, bool)
            else:
                want = (up - up.min()) / (up.max() - up.min()) > 0.5
            np.testing.assert_array_equal(got[b, m], want, err_msg=f"{b},{m}")
    assert not got[1, 2].any() and got[0].any()


def _loop_propagate(regions, label, conf, ignore, box, tau):
    """The official loop: regions in order, targets updated in place."""
    label = label.copy()
    keep = (conf >= tau) & ~ignore
    mask = keep.copy()
    for i in range(regions.shape[0]):
        for m in range(regions.shape[1]):
            region = regions[i, m] & ~box[i] & ~ignore[i]
            sure = region & keep[i]
            if sure.sum() == 0 or sure.sum() / region.sum() < tau:
                continue
            classes, counts = np.unique(label[i][sure], return_counts=True)
            if counts.max() / counts.sum() > tau:
                label[i][region] = classes[np.argmax(counts)]
                mask[i] |= region
    return label, mask


def _case(seed):
    rng = np.random.default_rng(seed)
    b, m, h, w = 2, 24, 8, 9
    label = rng.integers(0, K, size=(b, h, w))
    label[:, :4] = 1  # a large, mostly confident region of class 1
    conf = rng.uniform(0.4, 1.0, size=(b, h, w))
    conf[:, :4] = np.maximum(conf[:, :4], 0.75)
    ignore = rng.random((b, h, w)) < 0.1
    box = np.zeros((b, h, w), bool)
    box[0, 5:, 5:] = True
    # regions: random rectangles, some over the confident block
    regions = np.zeros((b, m, h, w), bool)
    for i in range(b):
        for j in range(m):
            y0, x0 = rng.integers(0, h - 2), rng.integers(0, w - 2)
            regions[i, j, y0:y0 + rng.integers(2, 5), x0:x0 + rng.integers(2, 6)] = True
    return regions, label, conf.astype("float32"), ignore, box


def test_propagate_matches_the_loop():
    changed = 0
    for seed in range(3):
        regions, label, conf, ignore, box = _case(seed)
        for tau in (0.5, 0.7):
            want_label, want_mask = _loop_propagate(regions, label, conf, ignore, box, tau)
            got_label, got_mask = propagation.propagate(
                tf.constant(regions), tf.constant(label, tf.int32), tf.constant(conf),
                tf.constant(ignore), tau, K, box=tf.constant(box))
            np.testing.assert_array_equal(got_label.numpy(), want_label)
            np.testing.assert_array_equal(got_mask.numpy(), want_mask)
            changed += (want_label != label).sum()
            assert not (want_mask & ignore).any()
    assert changed > 0  # the cases exercise the propagation


def test_propagation_is_sequential():
    # region 0 relabels the overlap to class 2; region 1 then sees a 2-majority
    label = np.array([[[0, 0, 2, 2, 2, 2]]])
    conf = np.full((1, 1, 6), 0.9, np.float32)
    regions = np.zeros((1, 2, 1, 6), bool)
    regions[0, 0, 0, 1:6] = True   # four 2s out of five: becomes all 2
    regions[0, 1, 0, 0:3] = True   # after region 0: [0, 2, 2] -> share 2/3
    ignore = np.zeros((1, 1, 6), bool)
    got, mask = propagation.propagate(tf.constant(regions), tf.constant(label, tf.int32),
                                      tf.constant(conf), tf.constant(ignore), 0.6, K)
    want, want_mask = _loop_propagate(regions, label, conf, ignore, ignore, 0.6)
    np.testing.assert_array_equal(got.numpy(), want)
    np.testing.assert_array_equal(got.numpy(), [[[2, 2, 2, 2, 2, 2]]])
    np.testing.assert_array_equal(mask.numpy(), want_mask)


def test_propagation_in_a_tf_function():
    regions, label, conf, ignore, box = _case(5)
    fn = tf.function(lambda *a: propagation.propagate(*a, num_classes=K))
    got = fn(tf.constant(regions), tf.constant(label, tf.int32), tf.constant(conf),
             tf.constant(ignore), tf.constant(0.6))
    want = _loop_propagate(regions, label, conf, ignore, np.zeros_like(ignore), 0.6)
    np.testing.assert_array_equal(got[0].numpy(), want[0])
    np.testing.assert_array_equal(got[1].numpy(), want[1])


def test_ties_at_the_thresholds():
    # normalised value exactly 0.5 is not in the region (> 0.5)
    rows = np.array([[[0.0, 0.5, 1.0, 0.75]]], np.float32)
    got = propagation.row_regions(tf.constant(rows), (1, 4), (1, 4)).numpy()
    np.testing.assert_array_equal(got, [[[[False, False, True, True]]]])
    # |S| / |R| == tau propagates (>=); a majority share == tau does not (>)
    label = np.array([[[1, 1, 0, 2, 0, 0, 2, 2]]])
    conf = np.array([[[0.9, 0.9, 0.1, 0.1, 0.9, 0.9, 0.9, 0.9]]], np.float32)
    regions = np.zeros((1, 2, 1, 8), bool)
    regions[0, 0, 0, 0:4] = True  # 2 of 4 sure (= tau), both class 1: propagated
    regions[0, 1, 0, 4:8] = True  # all sure, share of class 0 or 2 = 0.5 (= tau): kept
    ignore = np.zeros((1, 1, 8), bool)
    got, mask = propagation.propagate(tf.constant(regions), tf.constant(label, tf.int32),
                                      tf.constant(conf), tf.constant(ignore), 0.5, K)
    np.testing.assert_array_equal(got.numpy(), [[[1, 1, 1, 1, 0, 0, 2, 2]]])
    np.testing.assert_array_equal(mask.numpy(), [[[True] * 4 + [True] * 4]])
