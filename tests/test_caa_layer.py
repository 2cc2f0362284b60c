"""ChannelizedAxialAttention: closed form vs grouped form, a NumPy loop oracle, round trip."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from iseg.layers.axial_attention import ChannelGate, ChannelizedAxialAttention


def small_layer(group_size=None, **kw):
    opts = dict(filters=8, guide_filters=4, mlp_hidden=6, mlp_layers=5, group_size=group_size)
    opts.update(kw)
    return ChannelizedAxialAttention(**opts)


def twin(group_size, shape):
    closed = small_layer()
    closed.build(shape)
    grouped = small_layer(group_size)
    grouped.build(shape)
    grouped.set_weights(closed.get_weights())
    return closed, grouped


def value_and_grads(layer, x, training):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        # a non-uniform scalar so every output element matters
        weights = tf.reshape(tf.sin(tf.range(tf.size(y), dtype=tf.float32)), tf.shape(y))
        loss = tf.reduce_sum(y * weights)
    grads = tape.gradient(loss, [x] + layer.trainable_weights)
    return y.numpy(), [g.numpy() for g in grads]


@pytest.mark.parametrize("group_size", [1, 2, 4])
@pytest.mark.parametrize("training", [False, True])
def test_closed_form_equals_grouped_form(group_size, training):
    rng = np.random.default_rng(group_size)
    x = rng.normal(size=(2, 5, 6, 3)).astype("float32")  # uneven last groups for 2 and 4
    closed, grouped = twin(group_size, x.shape)
    y_c, g_c = value_and_grads(closed, x, training)
    y_g, g_g = value_and_grads(grouped, x, training)
    assert y_c.shape == (2, 5, 6, 8)
    np.testing.assert_allclose(y_c, y_g, atol=1e-5, rtol=1e-5)
    assert len(g_c) == 1 + len(closed.trainable_weights)
    for a, b in zip(g_c, g_g):
        assert np.abs(a).max() > 0
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _mlp(gate, x):
    for layer in gate.dense:
        x = x @ layer.kernel.numpy()
        x = np.where(x > 0, x, 0.2 * x)
    return _sigmoid(x @ gate.out.kernel.numpy())


def _softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


def test_numpy_loop_oracle():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 3, 4, 5)).astype("float32")
    layer = small_layer()
    y = layer(x, training=False).numpy()
    qv = layer.query_col(x, training=False).numpy().astype(np.float64)
    qh = layer.query_row(x, training=False).numpy().astype(np.float64)
    v = layer.value(x, training=False).numpy().astype(np.float64)
    n_, h_, w_, c_ = v.shape
    ref = np.zeros_like(v)
    for n in range(n_):
        # column step: for every output row a, the weighted map over (b, w)
        y1 = np.zeros((h_, w_, c_))
        for a in range(h_):
            weighted = np.zeros((h_, w_, c_))
            for w in range(w_):
                att = _softmax(np.array([qv[n, a, w] @ qv[n, b, w] for b in range(h_)]))
                for b in range(h_):
                    weighted[b, w] = att[b] * v[n, b, w]
            gate = _mlp(layer.gate_col, weighted.mean(axis=(0, 1)))
            y1[a] = (gate * weighted).sum(axis=0)
        # row step: for every output column a, the weighted map over (h, b)
        for a in range(w_):
            weighted = np.zeros((h_, w_, c_))
            for hh in range(h_):
                att = _softmax(np.array([qh[n, hh, a] @ qh[n, hh, b] for b in range(w_)]))
                for b in range(w_):
                    weighted[hh, b] = att[b] * y1[hh, b]
            gate = _mlp(layer.gate_row, weighted.mean(axis=(0, 1)))
            ref[n, :, a] = (gate * weighted).sum(axis=1)
    np.testing.assert_allclose(y, ref, atol=1e-5, rtol=1e-4)


def test_defaults_and_structure():
    layer = ChannelizedAxialAttention()
    layer.build((1, 9, 9, 32))
    assert layer.gate_col.hidden == 128 and len(layer.gate_col.dense) == 5
    # 3 ConvBNReLU 1x1 (no bias) + 2 MLPs of 5 hidden + 1 output Dense (no bias)
    expected = 32 * 64 * 2 + 32 * 512 + (512 * 128 + 4 * 128 * 128 + 128 * 512) * 2
    n = sum(int(np.prod(w.shape)) for w in layer.trainable_weights)
    assert n == expected + 2 * (64 * 2 + 512)
    with pytest.raises(ValueError, match="group_size"):
        ChannelizedAxialAttention(group_size=0)


def test_round_trip(tmp_path):
    x = np.random.default_rng(1).normal(size=(1, 5, 6, 3)).astype("float32")
    inp = keras.Input((5, 6, 3))
    model = keras.Model(inp, small_layer(group_size=2)(inp))
    path = tmp_path / "caa.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-6)
    assert loaded.layers[1].get_config() == model.layers[1].get_config()
    assert isinstance(loaded.layers[1].gate_row, ChannelGate)


@pytest.mark.parametrize("group_size", [None, 2])
def test_mixed_precision(group_size):
    x = np.random.default_rng(4).normal(size=(1, 5, 6, 3)).astype("float32")
    ref = small_layer(group_size)
    ref.build(x.shape)
    mixed = small_layer(group_size, dtype="mixed_float16")
    mixed.build(x.shape)
    mixed.set_weights(ref.get_weights())
    y = mixed(x, training=False)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    y_ref = ref(x, training=False).numpy()
    np.testing.assert_allclose(np.asarray(y, "float32"), y_ref, atol=2e-2 * np.abs(y_ref).max())
