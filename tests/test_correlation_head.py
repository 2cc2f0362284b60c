"""CorrMatch's correlation head (iseg.layers.correlation) against a NumPy loop."""

import math

import keras
import numpy as np
import tensorflow as tf

from iseg.layers.correlation import CorrelationHead
from iseg.ops import resize

K = 3


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    feature = rng.normal(size=(2, 3, 4, 5)).astype("float32")
    logits = rng.normal(size=(2, 9, 11, K)).astype("float32")  # main logits, larger
    return feature, logits


def _layer():
    keras.utils.set_random_seed(0)
    layer = CorrelationHead(K, channels=6, name="corr")
    feature, logits = _inputs()
    layer(feature, logits)
    rng = np.random.default_rng(1)
    for w in layer.weights:
        if "variance" not in w.path:
            w.assign(rng.normal(0, 0.5, tuple(w.shape)).astype("float32"))
    return layer


def _oracle(layer, feature, logits):
    """Loop form of A_ij = softmax_j(f1_i . f2_j / sqrt(K)), out_j = sum_i det_i A_ij."""
    p = np.asarray(layer.proj(feature, training=False))
    b, h, w, _ = p.shape
    n = h * w
    conv = [(np.asarray(c.kernel)[0, 0], np.asarray(c.bias)) for c in (layer.f1, layer.f2)]
    f1, f2 = (p.reshape(b, n, -1) @ k + bias for k, bias in conv)
    det = np.asarray(resize(logits, (h, w))).reshape(b, n, K)
    affinity = np.zeros((b, n, n))
    out = np.zeros((b, n, K))
    for s in range(b):
        for i in range(n):
            row = [sum(f1[s, i, c] * f2[s, j, c] for c in range(K)) / math.sqrt(K)
                   for j in range(n)]
            e = np.exp(np.array(row) - max(row))
            affinity[s, i] = e / e.sum()
        for j in range(n):
            for i in range(n):
                out[s, j] += det[s, i] * affinity[s, i, j]
    return out.reshape(b, h, w, K), affinity


def test_matches_numpy_loop_and_rows_sum_to_one():
    layer = _layer()
    feature, logits = _inputs(2)
    out, affinity = layer(feature, logits, training=False)
    assert tuple(out.shape) == (2, 3, 4, K) and tuple(affinity.shape) == (2, 12, 12)
    want_out, want_a = _oracle(layer, feature, logits)
    np.testing.assert_allclose(np.asarray(affinity), want_a, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out), want_out, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(affinity).sum(-1), 1.0, atol=1e-5)


def test_gradient_reaches_the_projection_but_not_the_logits():
    layer = _layer()
    feature, logits = (tf.constant(a) for a in _inputs(3))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([feature, logits])
        out, _ = layer(feature, logits, training=True)
        # (position-dependent weights: the plain sum of `out` over pixels is constant)
        loss = tf.reduce_sum(out * np.random.default_rng(0).normal(size=(2, 3, 4, K)))
    assert tape.gradient(loss, logits) is None
    assert float(tf.reduce_max(tf.abs(tape.gradient(loss, feature)))) > 0
    grads = {w.path: float(tf.reduce_max(tf.abs(g)))
             for w, g in zip(layer.trainable_weights, tape.gradient(loss, layer.trainable_weights))}
    # no gradient: the projection conv's bias (BN removes it), f2's bias (a constant per
    # softmax row); every other weight gets one
    no_grad = {"corr/proj/conv/bias", "corr/f2/bias"}
    assert all(grads[p] < 1e-5 for p in no_grad), grads
    assert all(g > 1e-3 for p, g in grads.items() if p not in no_grad), grads


def test_keras_round_trip(tmp_path):
    layer = _layer()
    feature, logits = _inputs(4)
    fin, lin = keras.Input((None, None, 5)), keras.Input((None, None, K))
    model = keras.Model([fin, lin], list(layer(fin, lin)))
    path = tmp_path / "corr.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    for a, b in zip(model([feature, logits]), loaded([feature, logits])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    config = loaded.layers[-1].get_config()
    assert config == layer.get_config()
    assert (config["channels"], config["dropout"], config["align_corners"]) == (6, 0.1, True)
