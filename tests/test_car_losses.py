"""CAR losses: segment-sum implementation vs a one-hot-matmul oracle (values and gradients)."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from iseg.losses.car import CARLoss, car_losses, car_multi_rate_losses

IGNORE = 255


# ----------------------------------------------------------------------------------------
# Oracle: the released formulation, written with one-hot matrices and matmuls (TF eager).
# ----------------------------------------------------------------------------------------
def oracle_losses(features, labels, k, ignore=IGNORE, remove_max=False, mask_ignored_c2p=False,
                  t_c2c=0.5, t_c2p=0.25, centers_override=None):
    n, h, w, c = features.shape
    f = tf.reshape(tf.cast(features, tf.float32), (n, h * w, c))
    y = tf.reshape(tf.cast(labels, tf.int32), (n, h * w))
    one_hot = tf.one_hot(y, k)  # out-of-range (ignore) -> zero row
    mask = tf.cast(tf.not_equal(y, ignore), tf.float32)[..., None]
    sums = tf.reduce_sum(tf.matmul(one_hot, f, transpose_a=True), axis=0)  # [K, C]
    counts = tf.reduce_sum(one_hot, axis=(0, 1))[:, None]
    mu = tf.math.divide_no_nan(sums, counts) if centers_override is None else centers_override
    eps = 1e-7

    same = tf.stop_gradient(tf.matmul(one_hot, tf.broadcast_to(mu, (n, k, c))))
    diff = tf.abs(same - f) * mask  # [N, HW, C]
    diff = tf.transpose(diff, (0, 2, 1))
    if remove_max:
        diff = tf.sort(diff, axis=-1)[:, :, :-1]
    intra = tf.maximum(tf.square(tf.reduce_mean(diff)), 1e-5)

    rel = tf.nn.softmax(tf.matmul(mu, tf.stop_gradient(mu), transpose_b=True) / np.sqrt(c))
    rel = rel * (1 - tf.eye(k))
    thr = t_c2c / (k - 1)
    rel = tf.where(rel > thr, rel - thr, 0.0)
    c2c = tf.square(tf.reduce_mean(tf.clip_by_value(tf.reduce_sum(rel, -1), eps, 1 - eps)))

    mu_sg = tf.stop_gradient(mu)
    energy = tf.matmul(f, mu_sg, transpose_b=True)  # [N, HW, K]
    other = 1.0 - one_hot
    energy = energy * other + tf.reduce_sum(mu_sg * mu_sg, -1)[None, None, :] * one_hot
    rel = tf.nn.softmax(energy / np.sqrt(c), axis=-1) * other
    thr = t_c2p / (k - 1)
    rel = tf.where(rel > thr, rel - thr, 0.0)
    q = tf.clip_by_value(tf.reduce_sum(rel, -1), eps, 1 - eps)  # [N, HW]
    if mask_ignored_c2p:
        m = mask[..., 0]
        c2p = tf.square(tf.reduce_sum(q * m) / tf.reduce_sum(m))
    else:
        c2p = tf.square(tf.reduce_mean(q))
    return {"intra": intra, "inter_c2c": c2c, "inter_c2p": c2p}, mu


def make_batch(k, with_ignore, n=2, h=9, w=7, c=8, seed=0):
    rng = np.random.default_rng(seed + k)
    labels = rng.integers(0, k, size=(n, h, w))
    if with_ignore:
        labels[rng.random((n, h, w)) < 0.3] = IGNORE
        labels[0, :2, :] = IGNORE
    offsets = rng.normal(size=(k, c)) * 0.5
    feats = rng.normal(size=(n, h, w, c)) + offsets[np.minimum(labels, k - 1)]
    return feats.astype("float32"), labels.astype("int32")


def values_and_grads(fn, feats):
    x = tf.constant(feats)
    out = {}
    for name in ("intra", "inter_c2c", "inter_c2p"):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = fn(x)[name]
        out[name] = (float(value), tape.gradient(value, x).numpy())
    return out


def assert_match(got, ref):
    for name in ref:
        np.testing.assert_allclose(got[name][0], ref[name][0], rtol=1e-5, atol=1e-8, err_msg=name)
        g, r = got[name][1], ref[name][1]
        scale = max(np.abs(r).max(), 1e-12)
        np.testing.assert_allclose(g / scale, r / scale, atol=2e-5, err_msg=f"grad {name}")


@pytest.mark.parametrize("k", [2, 5, 59, 171])
@pytest.mark.parametrize("with_ignore", [False, True])
def test_matches_one_hot_oracle(k, with_ignore):
    feats, labels = make_batch(k, with_ignore)
    got = values_and_grads(lambda x: car_losses(x, labels, k, IGNORE), feats)
    ref = values_and_grads(lambda x: oracle_losses(x, labels, k)[0], feats)
    assert_match(got, ref)
    # the terms really carry gradient (the test would be vacuous otherwise)
    for name in ("intra", "inter_c2p"):
        assert np.abs(got[name][1]).max() > 0, name
    if with_ignore:  # original: ignored pixels get c2p gradient, no intra gradient
        ignored = labels == IGNORE
        assert np.abs(got["intra"][1][ignored]).max() == 0
        assert np.abs(got["inter_c2p"][1][ignored]).max() > 0


@pytest.mark.parametrize("k", [5, 59])
def test_remove_max_and_masked_c2p_match_oracle(k):
    feats, labels = make_batch(k, True, seed=3)
    opts = dict(remove_max=True, mask_ignored_c2p=True)
    got = values_and_grads(lambda x: car_losses(x, labels, k, IGNORE, **opts), feats)
    ref = values_and_grads(lambda x: oracle_losses(x, labels, k, **opts)[0], feats)
    assert_match(got, ref)
    ignored = labels == IGNORE
    assert np.abs(got["inter_c2p"][1][ignored]).max() == 0


def test_thresholds_rates_and_switches():
    k = 5
    feats, labels = make_batch(k, True, seed=5)
    got = car_losses(feats, labels, k, IGNORE, inter_c2c_threshold=0.3, inter_c2p_threshold=0.1,
                     intra_loss_rate=2.0, inter_loss_rate=0.5)
    ref, _ = oracle_losses(feats, labels, k, t_c2c=0.3, t_c2p=0.1)
    np.testing.assert_allclose(float(got["intra"]), 2.0 * float(ref["intra"]), rtol=1e-5)
    np.testing.assert_allclose(float(got["inter_c2c"]), 0.5 * float(ref["inter_c2c"]), rtol=1e-5)
    np.testing.assert_allclose(float(got["inter_c2p"]), 0.5 * float(ref["inter_c2p"]), rtol=1e-5)
    only = car_losses(feats, labels, k, IGNORE, use_intra=False, use_inter_c2p=False)
    assert set(only) == {"intra", "inter_c2c", "inter_c2p"}
    assert float(only["intra"]) == 0.0 and float(only["inter_c2p"]) == 0.0
    default_ref, _ = oracle_losses(feats, labels, k)
    np.testing.assert_allclose(float(only["inter_c2c"]), float(default_ref["inter_c2c"]), rtol=1e-5)


def test_intra_floor_and_float16_input():
    k = 3
    labels = np.zeros((1, 4, 4), "int32")
    labels[:, :, 2:] = 1
    feats = np.ones((1, 4, 4, 6), "float16")  # every pixel equals its centre
    out = car_losses(feats, labels, k, IGNORE)
    assert out["intra"].dtype == "float32"
    np.testing.assert_allclose(float(out["intra"]), 1e-5, rtol=1e-6)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="num_classes >= 2"):
        car_losses(np.zeros((1, 2, 2, 3), "float32"), np.zeros((1, 2, 2), "int32"), 1)
    with pytest.raises(ValueError, match=r"labels \[N, H, W\]"):
        car_losses(np.zeros((1, 2, 2, 3), "float32"), np.zeros((1, 2, 2, 1), "int32"), 3)
    with pytest.raises(ValueError, match="pooling_rates"):
        car_multi_rate_losses(
            np.zeros((1, 2, 2, 3), "float32"), np.zeros((1, 2, 2), "int32"), 3, (0,)
        )


def test_multi_rate_pools_and_resizes_labels():
    k = 4
    feats, labels = make_batch(k, True, h=8, w=8, seed=7)
    got = car_multi_rate_losses(feats, labels, k, pooling_rates=(1, 2), ignore_label=IGNORE)
    # rate 2: 2x2 average pool; nearest align-corners label resize 8 -> 4 picks 0, 2, 5, 7
    pooled = tf.nn.avg_pool2d(feats, 2, 2, "SAME").numpy()
    idx = np.array([0, 2, 5, 7])
    small = labels[:, idx][:, :, idx]
    r1, _ = oracle_losses(feats, labels, k)
    r2, _ = oracle_losses(pooled, small, k)
    for name in r1:
        np.testing.assert_allclose(float(got[name]), float(r1[name]) + float(r2[name]), rtol=1e-5)


def test_car_loss_layer_stateless_and_ema():
    k, c = 5, 8
    feats, labels = make_batch(k, True, c=c, seed=11)
    plain = CARLoss(k, ignore_label=IGNORE)
    out = plain(feats, labels)
    ref = car_losses(feats, labels, k, IGNORE)
    for name in ref:
        np.testing.assert_allclose(float(out[name]), float(ref[name]), rtol=1e-6)

    layer = CARLoss(k, ignore_label=IGNORE, use_ema_centers=True, ema_decay=0.9)
    layer.build(feats.shape)
    start = layer.ema_centers[0].numpy().copy()
    out = layer(feats, labels)
    _, mu = oracle_losses(feats, labels, k)
    present = np.isin(np.arange(k), labels[labels != IGNORE])[:, None]
    expected = start + 0.1 * present * (mu.numpy() - start)
    np.testing.assert_allclose(layer.ema_centers[0].numpy(), expected, rtol=1e-5, atol=1e-6)
    ref, _ = oracle_losses(feats, labels, k, centers_override=tf.constant(expected, tf.float32))
    for name in ref:
        np.testing.assert_allclose(float(out[name]), float(ref[name]), rtol=1e-5)

    clone = CARLoss.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert keras.saving.get_registered_object("iseg>CARLoss") is CARLoss
