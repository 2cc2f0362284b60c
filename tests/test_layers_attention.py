"""Oracle tests of the attention layers and adaptive pooling against slow NumPy loops."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from iseg.layers import (
    ChannelAttention,
    CrissCrossAttention,
    NonLocal2d,
    ObjectContext,
    PositionAttention,
    SelfAttention,
    SpatialGather,
    adaptive_avg_pool2d,
)

RNG = np.random.default_rng(0)


def _randomize(layer, scale=0.3):
    """Give every weight of `layer` random values (BN variances positive)."""
    for w in layer.weights:
        shape = tuple(w.shape)
        value = RNG.normal(0.0, scale, shape)
        if "variance" in w.path:
            value = RNG.uniform(0.5, 1.5, shape)
        w.assign(value.astype("float32"))


def _conv1x1(conv, x):
    y = x @ conv.kernel.numpy()[0, 0].astype(np.float64)
    if conv.use_bias:
        y = y + conv.bias.numpy()
    return y


def _bn(bn, x):
    g, b = bn.gamma.numpy(), bn.beta.numpy()
    m, v = bn.moving_mean.numpy(), bn.moving_variance.numpy()
    return (x - m) / np.sqrt(v + bn.epsilon) * g + b


def _convbnrelu1x1(layer, x):
    return np.maximum(_bn(layer.bn, _conv1x1(layer.conv, x)), 0.0)


def _softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


def _loop_attention(q, k, v, scale):
    """q [N,H,W,d], k [N,H,W,d], v [N,H,W,c]: every pixel attends to all pixels."""
    n, h, w, _ = q.shape
    out = np.zeros(v.shape[:3] + (v.shape[-1],))
    for b in range(n):
        keys = k[b].reshape(h * w, -1)
        vals = v[b].reshape(h * w, -1)
        for i in range(h):
            for j in range(w):
                logits = np.array([q[b, i, j] @ keys[p] for p in range(h * w)])
                if scale:
                    logits = logits / np.sqrt(q.shape[-1])
                a = _softmax(logits)
                out[b, i, j] = sum(a[p] * vals[p] for p in range(h * w))
    return out


@pytest.mark.parametrize("size", [(5, 4), (3, 3)])
@pytest.mark.parametrize("scale", [False, True])
def test_self_attention_matches_loop(size, scale):
    x = RNG.normal(size=(2,) + size + (6,)).astype("float32")
    layer = SelfAttention(key_filters=3, value_filters=5, scale=scale)
    layer(x)
    _randomize(layer)
    y = layer(x).numpy()
    x64 = x.astype(np.float64)
    q, k, v = (_conv1x1(c, x64) for c in (layer.query_conv, layer.key_conv, layer.value_conv))
    np.testing.assert_allclose(y, _loop_attention(q, k, v, scale), rtol=1e-4, atol=1e-5)


def test_self_attention_residual():
    x = RNG.normal(size=(1, 4, 4, 6)).astype("float32")
    plain = SelfAttention(key_filters=3)
    res = SelfAttention(key_filters=3, residual=True)
    plain(x), res(x)
    res.set_weights(plain.get_weights())
    np.testing.assert_allclose(res(x).numpy(), x + plain(x).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="value_filters"):
        SelfAttention(key_filters=3, value_filters=4, residual=True)(x)


def test_self_attention_query_key_identical_initial_weights():
    x = RNG.normal(size=(1, 4, 4, 6)).astype("float32")
    layer = SelfAttention(key_filters=3, value_filters=6)
    layer(x)
    qk, kk = layer.query_conv.kernel.numpy(), layer.key_conv.kernel.numpy()
    np.testing.assert_array_equal(qk, kk)
    np.testing.assert_array_equal(layer.query_conv.bias.numpy(), layer.key_conv.bias.numpy())
    assert np.abs(qk).max() > 0  # a real random initialisation, not a constant
    # Separate variables: q and k are trained independently after the shared start.
    assert layer.query_conv.kernel is not layer.key_conv.kernel
    # Without shared_init (DANet PAM) they differ.
    other = SelfAttention(key_filters=3, value_filters=6, shared_init=False)
    other(x)
    assert not np.allclose(other.query_conv.kernel.numpy(), other.key_conv.kernel.numpy())


def test_non_local_matches_loop_and_starts_as_identity():
    x = RNG.normal(size=(2, 4, 5, 8)).astype("float32")
    layer = NonLocal2d(reduction=2)
    y0 = layer(x, training=False).numpy()
    np.testing.assert_allclose(y0, x, atol=1e-6)  # zero-initialised output BN
    assert layer.query_conv.filters == 4
    _randomize(layer)
    y = layer(x, training=False).numpy()
    x64 = x.astype(np.float64)
    q, k, v = (_conv1x1(c, x64) for c in (layer.query_conv, layer.key_conv, layer.value_conv))
    att = _loop_attention(q, k, v, scale=True)
    expected = x64 + _bn(layer.out_bn, _conv1x1(layer.out_conv, att))
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


def test_position_attention_matches_loop():
    x = RNG.normal(size=(2, 4, 3, 16)).astype("float32")
    layer = PositionAttention()
    np.testing.assert_allclose(layer(x).numpy(), x, atol=1e-6)  # gamma starts at 0
    assert layer.query_conv.filters == 2  # C / 8
    _randomize(layer)
    x64 = x.astype(np.float64)
    q, k, v = (_conv1x1(c, x64) for c in (layer.query_conv, layer.key_conv, layer.value_conv))
    expected = x64 + layer.gamma.numpy() * _loop_attention(q, k, v, scale=False)
    np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("transposed", [False, True])
def test_channel_attention_matches_loop(transposed):
    x = RNG.normal(size=(2, 3, 4, 5)).astype("float32")
    layer = ChannelAttention(transposed=transposed)
    layer(x)
    layer.gamma.assign(0.7)
    y = layer(x).numpy()
    n, h, w, c = x.shape
    expected = np.zeros_like(y, dtype=np.float64)
    for b in range(n):
        flat = x[b].reshape(h * w, c).astype(np.float64)
        energy = np.array([[flat[:, i] @ flat[:, j] for j in range(c)] for i in range(c)])
        att = np.stack([_softmax(row.max() - row) for row in energy])
        out = np.zeros((h * w, c))
        for p in range(h * w):
            for o in range(c):
                if transposed:  # CAR TF code: X A
                    out[p, o] = sum(flat[p, i] * att[i, o] for i in range(c))
                else:  # DANet / mmseg: X A^T
                    out[p, o] = sum(att[o, j] * flat[p, j] for j in range(c))
        expected[b] = x[b] + 0.7 * out.reshape(h, w, c)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", [(4, 5), (3, 3)])
def test_criss_cross_attention_matches_loop(size):
    x = RNG.normal(size=(2,) + size + (16,)).astype("float32")
    layer = CrissCrossAttention(reduction=8)
    np.testing.assert_allclose(layer(x).numpy(), x, atol=1e-6)  # gamma starts at 0
    _randomize(layer)
    y = layer(x).numpy()
    x64 = x.astype(np.float64)
    q, k, v = (_conv1x1(c, x64) for c in (layer.query_conv, layer.key_conv, layer.value_conv))
    n, h, w, _ = x.shape
    expected = np.zeros_like(x64)
    for b in range(n):
        for i in range(h):
            for j in range(w):
                # Column without the pixel itself, then the full row (self counted once).
                positions = [(g, j) for g in range(h) if g != i] + [(i, u) for u in range(w)]
                assert len(positions) == h + w - 1
                a = _softmax(np.array([q[b, i, j] @ k[b, g, u] for g, u in positions]))
                out = sum(a[t] * v[b, g, u] for t, (g, u) in enumerate(positions))
                expected[b, i, j] = x64[b, i, j] + layer.gamma.numpy() * out
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


def test_spatial_gather_matches_loop():
    pixels = RNG.normal(size=(2, 3, 4, 6)).astype("float32")
    logits = RNG.normal(size=(2, 3, 4, 5)).astype("float32")
    y = SpatialGather(scale=1.0)([pixels, logits]).numpy()
    assert y.shape == (2, 5, 6)
    for b in range(2):
        for cls in range(5):
            weights = _softmax(logits[b, :, :, cls].reshape(-1).astype(np.float64))
            ctx = sum(weights[p] * pixels[b].reshape(-1, 6)[p] for p in range(12))
            np.testing.assert_allclose(y[b, cls], ctx, rtol=1e-4, atol=1e-5)


def test_object_context_matches_loop():
    pixels = RNG.normal(size=(2, 3, 4, 6)).astype("float32")
    logits = RNG.normal(size=(2, 3, 4, 5)).astype("float32")
    layer = ObjectContext(key_filters=4, out_filters=7)
    layer([pixels, logits], training=False)
    _randomize(layer)
    y = layer([pixels, logits], training=False).numpy()
    assert y.shape == (2, 3, 4, 7)
    att = layer.attention
    p64 = pixels.astype(np.float64)
    for b in range(2):
        flat = p64[b].reshape(-1, 6)
        ctx = np.stack(
            [
                sum(w * f for w, f in zip(_softmax(logits[b, :, :, c].reshape(-1)), flat))
                for c in range(5)
            ]
        )
        key = _convbnrelu1x1(att.key_convs[1], _convbnrelu1x1(att.key_convs[0], ctx))
        val = _convbnrelu1x1(att.value_conv, ctx)
        for p in range(12):
            q = _convbnrelu1x1(att.query_convs[1], _convbnrelu1x1(att.query_convs[0], flat[p]))
            a = _softmax(np.array([q @ key[c] for c in range(5)]) / np.sqrt(4))
            out = _convbnrelu1x1(att.out_conv, sum(a[c] * val[c] for c in range(5)))
            np.testing.assert_allclose(y[b].reshape(-1, 7)[p], out, rtol=1e-4, atol=1e-4)


def _loop_adaptive_pool(x, bins):
    n, h, w, c = x.shape
    out = np.zeros((n, bins, bins, c))
    for i in range(bins):
        h0, h1 = (i * h) // bins, -((-(i + 1) * h) // bins)
        for j in range(bins):
            w0, w1 = (j * w) // bins, -((-(j + 1) * w) // bins)
            out[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
    return out


@pytest.mark.parametrize("size", [(9, 9), (8, 8), (7, 13), (4, 5), (1, 1)])
@pytest.mark.parametrize("bins", [1, 2, 3, 6])
def test_adaptive_avg_pool_matches_pytorch_bins(size, bins):
    x = RNG.normal(size=(2,) + size + (3,)).astype("float32")
    y = adaptive_avg_pool2d(x, bins).numpy()
    np.testing.assert_allclose(y, _loop_adaptive_pool(x, bins), rtol=1e-5, atol=1e-6)


def test_adaptive_avg_pool_with_size_unknown_at_trace_time():
    fn = tf.function(
        lambda t: adaptive_avg_pool2d(t, 3),
        input_signature=[tf.TensorSpec((None, None, None, 2), tf.float32)],
    )
    for size in [(9, 9), (8, 10), (2, 2)]:
        x = RNG.normal(size=(1,) + size + (2,)).astype("float32")
        np.testing.assert_allclose(
            fn(x).numpy(), _loop_adaptive_pool(x, 3), rtol=1e-5, atol=1e-6
        )
    with pytest.raises(ValueError, match="output_size"):
        adaptive_avg_pool2d(np.zeros((1, 4, 4, 1), "float32"), 0)


def test_attention_layers_with_unknown_spatial_size():
    inp = keras.Input((None, None, 16))
    for layer in [SelfAttention(4), CrissCrossAttention(), ChannelAttention(), NonLocal2d()]:
        model = keras.Model(inp, layer(inp))
        for size in [(5, 4), (3, 3)]:
            x = RNG.normal(size=(1,) + size + (16,)).astype("float32")
            assert model(x).shape == x.shape
