import numpy as np
import pytest
import tensorflow as tf
import keras

from iseg import ops as iops
from iseg.layers import ConvBNAct, ImageLevel


def _loop_bilinear(x, out_h, out_w, align_corners):
    """Slow oracle: per-pixel bilinear interpolation with explicit loops."""
    n, h, w, c = x.shape
    y = np.zeros((n, out_h, out_w, c), np.float64)

    def src(i, in_len, out_len):
        if align_corners:
            return i * (in_len - 1) / (out_len - 1) if out_len > 1 else 0.0
        return max((i + 0.5) * in_len / out_len - 0.5, 0.0)

    for i in range(out_h):
        sy = src(i, h, out_h)
        y0 = min(int(np.floor(sy)), h - 1)
        y1 = min(y0 + 1, h - 1)
        wy = sy - y0
        for j in range(out_w):
            sx = src(j, w, out_w)
            x0 = min(int(np.floor(sx)), w - 1)
            x1 = min(x0 + 1, w - 1)
            wx = sx - x0
            y[:, i, j] = (
                x[:, y0, x0] * (1 - wy) * (1 - wx)
                + x[:, y0, x1] * (1 - wy) * wx
                + x[:, y1, x0] * wy * (1 - wx)
                + x[:, y1, x1] * wy * wx
            )
    return y


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize(
    "src,dst", [((9, 7), (33, 25)), ((65, 65), (513, 513)), ((12, 10), (5, 4))]
)
def test_resize_bilinear_matches_loop_oracle(align_corners, src, dst):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, *src, 3)).astype("float32")
    if dst == (513, 513):
        # keep the loop oracle fast: compare a subset of rows only
        got = np.asarray(iops.resize(x, dst, align_corners=align_corners))
        ref = tf.compat.v1.image.resize_bilinear(x, dst, align_corners=align_corners,
                                                 half_pixel_centers=not align_corners)
        np.testing.assert_allclose(got, ref.numpy(), atol=1e-5)
        return
    got = np.asarray(iops.resize(x, dst, align_corners=align_corners))
    np.testing.assert_allclose(got, _loop_bilinear(x, *dst, align_corners), atol=1e-5)


def test_resize_align_corners_matches_tf_v1():
    x = np.random.default_rng(1).normal(size=(1, 17, 13, 2)).astype("float32")
    got = iops.resize(x, (65, 49), align_corners=True)
    ref = tf.compat.v1.image.resize_bilinear(x, (65, 49), align_corners=True)
    np.testing.assert_allclose(np.asarray(got), ref.numpy(), atol=1e-5)
    # corners map exactly onto corners
    np.testing.assert_allclose(np.asarray(got)[0, -1, -1], x[0, -1, -1], atol=1e-6)


@pytest.mark.parametrize("align_corners", [True, False])
def test_resize_labels_nearest_matches_tf(align_corners):
    labels = np.random.default_rng(2).integers(0, 20, size=(2, 33, 21)).astype("int32")
    got = np.asarray(iops.resize_labels(labels, (9, 6), align_corners=align_corners))
    ref = tf.compat.v1.image.resize_nearest_neighbor(
        labels[..., None], (9, 6), align_corners=align_corners,
        half_pixel_centers=not align_corners)[..., 0].numpy()
    np.testing.assert_array_equal(got, ref)
    assert got.dtype == np.int32


def test_resize_rejects_unknown_method():
    with pytest.raises(ValueError, match="bicubic"):
        iops.resize(np.zeros((1, 4, 4, 1), "float32"), (8, 8), method="bicubic")


def test_conv_bn_act_and_image_level_round_trip(tmp_path):
    inp = keras.Input((None, None, 5))
    x = ConvBNAct(8, 3, dilation_rate=2, name="cba")(inp)
    x = keras.layers.Concatenate()([x, ImageLevel(4, name="pool")(x)])
    model = keras.Model(inp, x)
    data = np.random.default_rng(3).normal(size=(2, 11, 9, 5)).astype("float32")
    out = model(data)
    assert out.shape == (2, 11, 9, 12)
    # the image-level branch is constant over space
    np.testing.assert_allclose(
        np.asarray(out)[:, :, :, 8:],
        np.asarray(out)[:, :1, :1, 8:] * np.ones((1, 11, 9, 1)),
        atol=1e-6,
    )
    path = tmp_path / "m.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(np.asarray(restored(data)), np.asarray(out), atol=1e-6)
    assert restored.get_layer("cba").get_config()["dilation_rate"] == 2
