import numpy as np
import pytest
import tensorflow as tf

from iseg.evaluation.inference import (
    default_stride,
    predict_logits,
    sliding_window_logits,
    window_positions,
)

RNG = np.random.default_rng(0)
KERNEL = RNG.normal(size=(3, 4)).astype(np.float32)


def pointwise_model(x):  # a 1x1 conv: output depends on the pixel only
    return tf.einsum("nhwc,ck->nhwk", x, KERNEL)


def ramp_model(x):  # not flip-equivariant: adds the column index
    w = tf.shape(x)[2]
    ramp = tf.cast(tf.range(w), tf.float32)[None, None, :, None]
    return pointwise_model(x) + 0.1 * ramp


def np_ramp_model(x):
    return np.einsum("nhwc,ck->nhwk", x, KERNEL) + 0.1 * np.arange(x.shape[2])[None, None, :, None]


def np_resize_align_corners(x, out_h, out_w):
    """Bilinear, align_corners=True, written as an explicit loop."""
    n, h, w, c = x.shape
    out = np.zeros((n, out_h, out_w, c), np.float64)
    for i in range(out_h):
        sy = i * (h - 1) / (out_h - 1) if out_h > 1 else 0.0
        y0 = int(np.floor(sy))
        y1, wy = min(y0 + 1, h - 1), sy - y0
        for j in range(out_w):
            sx = j * (w - 1) / (out_w - 1) if out_w > 1 else 0.0
            x0 = int(np.floor(sx))
            x1, wx = min(x0 + 1, w - 1), sx - x0
            out[:, i, j] = ((1 - wy) * (1 - wx) * x[:, y0, x0] + (1 - wy) * wx * x[:, y0, x1]
                            + wy * (1 - wx) * x[:, y1, x0] + wy * wx * x[:, y1, x1])
    return out


def test_window_positions_cover_and_align_to_border():
    for length, window in [(33, 16), (65, 33), (16, 16), (10, 16), (100, 33)]:
        stride = default_stride((window, window))[0]
        pos = window_positions(length, window, stride)
        assert pos[0] == 0
        assert pos[-1] == max(length - window, 0)
        assert all(b - a <= stride for a, b in zip(pos, pos[1:]))
    assert default_stride((513, 513)) == (342, 342)


@pytest.mark.parametrize("size", [(33, 47), (12, 9)])
def test_sliding_window_equals_whole_for_pointwise_model(size):
    x = tf.constant(RNG.normal(size=(2, *size, 3)).astype(np.float32))
    whole = pointwise_model(x).numpy()
    slide = sliding_window_logits(pointwise_model, x, crop_size=16).numpy()
    np.testing.assert_allclose(slide, whole, rtol=1e-5, atol=1e-5)


def test_sliding_window_against_loop_oracle_for_context_model():
    def centred(x):  # output depends on the whole window
        return x - tf.reduce_mean(x, axis=[1, 2], keepdims=True)

    x = RNG.normal(size=(1, 20, 27, 3)).astype(np.float32)
    crop, stride = (8, 10), (5, 7)
    total = np.zeros_like(x, np.float64)
    count = np.zeros(x.shape[1:3])
    ys = sorted({min(i * 5, 20 - 8) for i in range(int(np.ceil((20 - 8) / 5)) + 1)})
    xs = sorted({min(i * 7, 27 - 10) for i in range(int(np.ceil((27 - 10) / 7)) + 1)})
    for y in ys:
        for xx in xs:
            win = x[:, y:y + 8, xx:xx + 10]
            total[:, y:y + 8, xx:xx + 10] += win - win.mean(axis=(1, 2), keepdims=True)
            count[y:y + 8, xx:xx + 10] += 1
    expected = total / count[None, :, :, None]
    got = sliding_window_logits(centred, tf.constant(x), crop, stride).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_multiscale_flip_averages_logits_like_numpy():
    x = RNG.normal(size=(2, 9, 13, 3)).astype(np.float32)
    scales = (0.5, 1.0, 1.5)
    acc, n = 0.0, 0
    for s in scales:
        h, w = int(9 * s + 0.5), int(13 * s + 0.5)
        xs = np_resize_align_corners(x, h, w) if s != 1.0 else x.astype(np.float64)
        for flip in (False, True):
            xi = xs[:, :, ::-1] if flip else xs
            out = np_ramp_model(xi)
            if flip:
                out = out[:, :, ::-1]
            acc = acc + (np_resize_align_corners(out, 9, 13) if s != 1.0 else out)
            n += 1
    expected = acc / n
    got = predict_logits(ramp_model, tf.constant(x), scales=scales, flip=True).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # a single scale without flip is the plain model output
    np.testing.assert_allclose(predict_logits(ramp_model, tf.constant(x)).numpy(),
                               np_ramp_model(x), rtol=1e-5, atol=1e-5)


def test_multiscale_sliding_and_graph_mode():
    x = tf.constant(RNG.normal(size=(1, 21, 18, 3)).astype(np.float32))
    whole = predict_logits(pointwise_model, x, scales=(0.75, 1.25), flip=True)
    slide = predict_logits(pointwise_model, x, scales=(0.75, 1.25), flip=True, mode="slide",
                           crop_size=(10, 10))
    np.testing.assert_allclose(slide.numpy(), whole.numpy(), rtol=1e-5, atol=1e-5)
    fn = tf.function(lambda im: predict_logits(pointwise_model, im, scales=(0.5, 1.0),
                                               flip=True),
                     input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    np.testing.assert_allclose(
        fn(x).numpy(),
        predict_logits(pointwise_model, x, scales=(0.5, 1.0), flip=True).numpy(),
        rtol=1e-5, atol=1e-5)


def test_bad_mode():
    with pytest.raises(ValueError, match="slide"):
        predict_logits(pointwise_model, tf.zeros([1, 4, 4, 3]), mode="tiles")
    with pytest.raises(ValueError, match="crop_size"):
        predict_logits(pointwise_model, tf.zeros([1, 4, 4, 3]), mode="slide")
