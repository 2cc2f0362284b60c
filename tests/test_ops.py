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


def _np_dilated(x, k, r):
    """Oracle: 'same'-padded dilated conv with explicit tap loops, and the padded input."""
    kh, kw = k.shape[:2]
    ph, pw = r * (kh // 2), r * (kw // 2)
    n, h, w, _ = x.shape
    xp = np.pad(x.astype(np.float64), [(0, 0), (ph, ph), (pw, pw), (0, 0)])
    y = np.zeros((n, h, w, k.shape[-1]))
    for i in range(kh):
        for j in range(kw):
            y += xp[:, i * r:i * r + h, j * r:j * r + w] @ k[i, j]
    return y, xp


def _np_dilated_grads(x, k, r, g):
    """Oracle gradients of sum(conv(x, k) * g): each tap's input and kernel gradient."""
    kh, kw = k.shape[:2]
    ph, pw = r * (kh // 2), r * (kw // 2)
    n, h, w, _ = x.shape
    _, xp = _np_dilated(x, k, r)
    dxp = np.zeros_like(xp)
    dk = np.zeros(k.shape)
    for i in range(kh):
        for j in range(kw):
            dxp[:, i * r:i * r + h, j * r:j * r + w] += g @ k[i, j].T
            dk[i, j] = np.einsum("nhwc,nhwd->cd", xp[:, i * r:i * r + h, j * r:j * r + w], g)
    return dxp[:, ph:ph + h, pw:pw + w], dk


@pytest.mark.parametrize("onednn", [True, False])  # without: tf_kernels.same_conv's grads
@pytest.mark.parametrize("method", ["phase", "taps"])
@pytest.mark.parametrize("h,w,rate,k", [
    (9, 11, 2, 3), (13, 7, 3, 3), (16, 16, 4, 3), (17, 17, 2, 5), (6, 20, 3, 3),
    (5, 5, 4, 3),     # some taps read only padding on both axes: a matmul
    (4, 12, 5, 3),    # ... on one axis only
    (9, 11, 1, 3), (8, 6, 1, (5, 3)), (7, 7, 1, 1),  # rate 1: a plain conv
])
def test_atrous_conv_matches_the_dilated_conv_and_its_gradients(monkeypatch, onednn, method,
                                                                h, w, rate, k):
    monkeypatch.setattr(iops, "_method", lambda *args: method)
    monkeypatch.setattr(iops, "onednn_enabled", lambda: onednn)
    rng = np.random.default_rng(h * w + rate)
    x = rng.normal(size=(2, h, w, 3)).astype("float32")
    kernel = rng.normal(size=(*np.broadcast_to(k, 2), 3, 4)).astype("float32")
    g = rng.normal(size=(2, h, w, 4)).astype("float32")
    xt, kt = tf.constant(x), tf.constant(kernel)
    with tf.GradientTape() as tape:
        tape.watch([xt, kt])
        y = iops.atrous_conv(xt, kt, rate)
        loss = tf.reduce_sum(y * g)
    dx, dk = tape.gradient(loss, [xt, kt])
    want, _ = _np_dilated(x, kernel, rate)
    want_dx, want_dk = _np_dilated_grads(x, kernel, rate, g)
    np.testing.assert_allclose(np.asarray(y), want, atol=1e-4)
    np.testing.assert_allclose(np.asarray(dx), want_dx, atol=1e-4)
    np.testing.assert_allclose(np.asarray(dk), want_dk, atol=1e-4)
    np.testing.assert_allclose(  # and Keras's own dilated conv
        np.asarray(keras.ops.conv(x, kernel, padding="same", dilation_rate=rate)), want,
        atol=1e-4)


@pytest.mark.parametrize("onednn", [True, False])
@pytest.mark.parametrize("method,rate", [("phase", 2), ("taps", 2), ("phase", 1)])
def test_atrous_conv_runs_with_an_unknown_batch_size(monkeypatch, onednn, method, rate):
    # a dataset's last batch can be smaller: the traced step has batch size None
    monkeypatch.setattr(iops, "_method", lambda *args: method)
    monkeypatch.setattr(iops, "onednn_enabled", lambda: onednn)
    kernel = np.random.default_rng(3).normal(size=(3, 3, 3, 4)).astype("float32")
    g = np.random.default_rng(4).normal(size=(1, 9, 7, 4)).astype("float32")

    @tf.function(input_signature=[tf.TensorSpec((None, 9, 7, 3))])
    def fn(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = iops.atrous_conv(x, tf.constant(kernel), rate)
        return y, tape.gradient(y, x, output_gradients=tf.tile(g, [tf.shape(x)[0], 1, 1, 1]))

    for batch in (2, 1):
        x = np.random.default_rng(batch).normal(size=(batch, 9, 7, 3)).astype("float32")
        y, dx = fn(x)
        np.testing.assert_allclose(np.asarray(y), _np_dilated(x, kernel, rate)[0], atol=1e-4)
        np.testing.assert_allclose(
            np.asarray(dx), _np_dilated_grads(x, kernel, rate, np.repeat(g, batch, 0))[0],
            atol=1e-4)


@pytest.mark.parametrize("onednn", [True, False])
def test_plain_and_phase_convs_take_the_forward_conv_input_gradient_without_onednn(
        monkeypatch, onednn):
    # measured faster than TensorFlow's Conv2DBackpropInput without oneDNN, not with it
    used = []
    same_conv = iops.same_conv
    monkeypatch.setattr(iops, "same_conv", lambda *a: used.append(1) or same_conv(*a))
    monkeypatch.setattr(iops, "onednn_enabled", lambda: onednn)
    monkeypatch.setattr(iops, "_method", lambda *args: "phase")
    x = np.random.default_rng(0).normal(size=(1, 8, 8, 2)).astype("float32")
    kernel = np.random.default_rng(1).normal(size=(3, 3, 2, 2)).astype("float32")
    for rate in (1, 2):
        np.testing.assert_allclose(np.asarray(iops.atrous_conv(x, kernel, rate)),
                                   _np_dilated(x, kernel, rate)[0], atol=1e-4)
    assert len(used) == (0 if onednn else 2)


@pytest.mark.parametrize("onednn,h,w,rate,method", [
    (True, 23, 30, 4, "phase"),   # padded to 24 x 32: 1.11 x the input
    (True, 33, 33, 8, "taps"),    # padded to 40 x 40: 1.47 x
    (False, 23, 30, 2, "phase"),  # 12 x 15 phase sub-images
    (False, 23, 30, 4, "phase"),  # 6 x 8
    (False, 33, 33, 8, "taps"),   # 5 x 5
])
def test_atrous_conv_takes_the_method_measured_fastest_on_each_kernel_path(
        monkeypatch, onednn, h, w, rate, method):
    used = []
    for name in ("phase", "taps"):
        helper = getattr(iops, f"_{name}_conv")
        monkeypatch.setattr(iops, f"_{name}_conv",
                            lambda *a, name=name, helper=helper: used.append(name) or helper(*a))
    monkeypatch.setattr(iops, "onednn_enabled", lambda: onednn)
    x = np.random.default_rng(0).normal(size=(1, h, w, 2)).astype("float32")
    kernel = np.random.default_rng(1).normal(size=(3, 3, 2, 2)).astype("float32")
    np.testing.assert_allclose(np.asarray(iops.atrous_conv(x, kernel, rate)),
                               _np_dilated(x, kernel, rate)[0], atol=1e-4)
    assert used == [method]


def test_atrous_conv_uses_keras_conv_on_the_other_backends(monkeypatch):
    # the phases and taps work around TensorFlow's CPU kernels; JAX's own dilated conv is
    # faster
    def not_ours(*args):
        raise AssertionError("ours used")

    monkeypatch.setattr(iops, "_taps_conv", not_ours)
    monkeypatch.setattr(iops, "_phase_conv", not_ours)
    x = np.random.default_rng(0).normal(size=(1, 9, 7, 3)).astype("float32")
    kernel = np.random.default_rng(1).normal(size=(3, 3, 3, 4)).astype("float32")
    with pytest.raises(AssertionError, match="ours used"):
        iops.atrous_conv(x, kernel, 2)
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    np.testing.assert_allclose(np.asarray(iops.atrous_conv(x, kernel, 2)),
                               _np_dilated(x, kernel, 2)[0], atol=1e-4)


def test_atrous_conv_falls_back_on_unknown_sizes_and_rate_1():
    kernel = np.ones((3, 3, 2, 2), "float32")
    sym = keras.KerasTensor((None, None, None, 2))
    assert keras.ops.conv(sym, kernel, padding="same", dilation_rate=2).shape == \
        iops.atrous_conv(sym, kernel, 2).shape == (None, None, None, 2)
    x = np.random.default_rng(0).normal(size=(1, 5, 6, 2)).astype("float32")
    np.testing.assert_allclose(np.asarray(iops.atrous_conv(x, kernel, 1)),
                               _np_dilated(x, kernel, 1)[0], atol=1e-5)


def test_atrous_conv2d_loads_plain_conv2d_weights_and_computes_the_same(tmp_path):
    from iseg.layers.conv_bn_act import Conv2D as AtrousConv2D

    def net(cls):
        inp = keras.Input((10, 7, 3))
        return keras.Model(inp, cls(5, 3, dilation_rate=3, padding="same", name="c")(inp))

    plain, ours = net(keras.layers.Conv2D), net(AtrousConv2D)
    x = np.random.default_rng(1).normal(size=(2, 10, 7, 3)).astype("float32")
    plain.set_weights([np.random.default_rng(2).normal(size=w.shape) for w in plain.weights])
    plain.save_weights(tmp_path / "w.weights.h5")
    ours.load_weights(tmp_path / "w.weights.h5")
    assert [v.path for v in ours.weights] == [v.path for v in plain.weights]
    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(plain(x)), atol=1e-5)
    assert isinstance(ConvBNAct(4, 3, dilation_rate=2).conv, AtrousConv2D)
    assert isinstance(ConvBNAct(4, 3).conv, AtrousConv2D)


@pytest.mark.parametrize("strides,padding,rate", [(1, "same", 1), (1, "same", 2),
                                                  (2, "same", 1), (1, "valid", 1)])
def test_conv2d_layer_takes_atrous_conv_only_for_stride_1_same(monkeypatch, strides,
                                                               padding, rate):
    from iseg.layers.conv_bn_act import Conv2D as AtrousConv2D

    used = []
    monkeypatch.setattr("iseg.layers.conv_bn_act.atrous_conv",
                        lambda *a: used.append(1) or iops.atrous_conv(*a))
    ours = AtrousConv2D(4, 3, strides=strides, padding=padding, dilation_rate=rate)
    plain = keras.layers.Conv2D(4, 3, strides=strides, padding=padding, dilation_rate=rate)
    x = np.random.default_rng(0).normal(size=(2, 9, 8, 3)).astype("float32")
    ours.build(x.shape)
    plain.build(x.shape)
    plain.set_weights(ours.get_weights())
    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(plain(x)), atol=1e-5)
    assert len(used) == (strides == 1 and padding == "same")
