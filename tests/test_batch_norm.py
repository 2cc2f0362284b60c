"""iseg's BatchNormalization: TensorFlow's fused kernel in training, Keras's numbers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from iseg.layers.conv_bn_act import BatchNormalization

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                reason="the fused path is TensorFlow's")


def numpy_batch_norm(x, gamma, beta, epsilon):
    """Training-mode batch norm over N, H, W: output, batch mean, biased batch variance."""
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    mean = flat.mean(axis=0)
    variance = ((flat - mean) ** 2).mean(axis=0)
    return (x - mean) / np.sqrt(variance + epsilon) * gamma + beta, mean, variance


def pair(epsilon, momentum=0.9, rank=4, **kwargs):
    """Ours and Keras's layer with the same (random) weights, built for 3 channels."""
    ours = BatchNormalization(epsilon=epsilon, momentum=momentum, **kwargs)
    theirs = keras.layers.BatchNormalization(epsilon=epsilon, momentum=momentum, **kwargs)
    rng = np.random.default_rng(0)
    for layer in (ours, theirs):
        layer.build((None,) * (rank - 1) + (3,))
    weights = [rng.uniform(0.5, 2.0, w.shape).astype("float32") for w in theirs.weights]
    ours.set_weights(weights)
    theirs.set_weights(weights)
    return ours, theirs


def training_call(layer, x, jit=False):
    """Output, gradients of a weighted sum (input, then trainable weights) and the op types
    of the traced graph, for one training-mode call."""
    w = tf.constant(np.random.default_rng(1).normal(size=x.shape), tf.float32)

    @tf.function(jit_compile=jit)
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * w)
        return y, tape.gradient(loss, [x] + layer.trainable_weights)

    ops = {op.type for op in step.get_concrete_function(x).graph.get_operations()}
    y, grads = step(x)
    return np.asarray(tf.cast(y, tf.float32)), [np.asarray(g) for g in grads], ops


@pytest.mark.parametrize("epsilon", [1e-5, 1e-3])
@pytest.mark.parametrize("shape", [(2, 5, 7, 3), (1, 1, 1, 3)])
def test_fused_training_call_matches_numpy_and_keras(epsilon, shape):
    x = np.random.default_rng(2).normal(3.0, 2.0, shape).astype("float32")
    ours, theirs = pair(epsilon)
    gamma, beta, moving_mean, moving_variance = [np.asarray(w) for w in theirs.weights]
    y, grads, ops = training_call(ours, tf.constant(x))
    y_keras, grads_keras, ops_keras = training_call(theirs, tf.constant(x))
    assert "FusedBatchNormV3" in ops and "FusedBatchNormV3" not in ops_keras

    expected, mean, variance = numpy_batch_norm(x, gamma, beta, epsilon)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ours.moving_mean), 0.9 * moving_mean + 0.1 * mean,
                               rtol=1e-6)
    np.testing.assert_allclose(np.asarray(ours.moving_variance),
                               0.9 * moving_variance + 0.1 * variance, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(ours.moving_variance),
                               np.asarray(theirs.moving_variance), rtol=1e-6)
    # Keras's x * inv + (beta - mean * inv) cancels at small variance: 1e-4, not 1e-5, here
    np.testing.assert_allclose(y, y_keras, atol=1e-4)
    for g, g_keras in zip(grads, grads_keras):  # input, gamma, beta
        np.testing.assert_allclose(g, g_keras, rtol=1e-4, atol=1e-4)


def test_fused_path_compiles_with_xla_and_keeps_mixed_precision():
    x = tf.constant(np.random.default_rng(3).normal(size=(2, 4, 6, 3)), tf.float32)
    ours, theirs = pair(1e-3)
    y, grads, _ = training_call(ours, x, jit=True)
    y_keras, grads_keras, _ = training_call(theirs, x, jit=True)
    np.testing.assert_allclose(y, y_keras, atol=1e-5)
    for g, g_keras in zip(grads, grads_keras):
        np.testing.assert_allclose(g, g_keras, rtol=1e-4, atol=1e-4)

    ours, theirs = pair(1e-3, dtype="mixed_bfloat16")
    y = ours(tf.cast(x, tf.bfloat16), training=True)
    assert y.dtype == tf.bfloat16
    np.testing.assert_allclose(np.asarray(tf.cast(y, tf.float32)),
                               np.asarray(tf.cast(theirs(x, training=True), tf.float32)),
                               atol=0.05)


@pytest.mark.parametrize("case", ["inference", "synchronized", "frozen", "2-d", "no scale"])
def test_other_cases_run_keras_code(case):
    shape = (6, 3) if case == "2-d" else (2, 4, 5, 3)
    x = tf.constant(np.random.default_rng(4).normal(size=shape), tf.float32)
    kwargs = dict(center=False, scale=False) if case == "no scale" else {}
    ours, theirs = pair(1e-3, rank=len(shape), **kwargs)
    for layer in (ours, theirs):
        layer.synchronized = case == "synchronized"
        layer.trainable = case != "frozen"
    training = case != "inference"
    if case == "no scale":  # still fused: no gamma / beta, normalisation only
        y, _, ops = training_call(ours, x)
        assert "FusedBatchNormV3" in ops
    else:
        y = np.asarray(ours(x, training=training))
    np.testing.assert_allclose(y, np.asarray(theirs(x, training=training)), atol=1e-5)
    np.testing.assert_allclose(np.asarray(ours.moving_variance),
                               np.asarray(theirs.moving_variance), rtol=1e-6)


def test_weight_files_load_both_ways_and_config_round_trips(tmp_path):
    def net(cls):
        inp = keras.Input((4, 5, 3))
        return keras.Model(inp, cls(epsilon=1e-5, name="bn")(inp))

    plain, ours = net(keras.layers.BatchNormalization), net(BatchNormalization)
    plain.set_weights([np.random.default_rng(5).uniform(0.5, 2, w.shape) for w in plain.weights])
    plain.save_weights(tmp_path / "w.weights.h5")
    ours.load_weights(tmp_path / "w.weights.h5")
    assert [v.path for v in ours.weights] == [v.path for v in plain.weights]
    x = np.random.default_rng(6).normal(size=(2, 4, 5, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(plain(x)), atol=1e-6)

    ours.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(loaded.get_layer("bn")) is BatchNormalization
    assert loaded.get_layer("bn").epsilon == 1e-5
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(ours(x)), atol=1e-6)
