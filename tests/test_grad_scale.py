"""GradientScale: forward identity, backward `scale * dy` (TF; other backends in
backend_smoke.py)."""

import numpy as np
import pytest
import tensorflow as tf

import keras

from iseg.layers import GradientScale, scale_gradient


@pytest.mark.parametrize("scale", [0.0, 0.25, 1.0, -2.0])
def test_gradient_is_scaled_and_forward_is_identity(scale):
    rng = np.random.default_rng(0)
    x = tf.Variable(rng.normal(size=(2, 3, 3, 4)).astype("float32"))
    w = tf.constant(rng.normal(size=(2, 3, 3, 4)).astype("float32"))
    layer = GradientScale(scale)
    with tf.GradientTape() as tape:
        y = layer(x)
        loss = tf.reduce_sum(w * y * y)
    np.testing.assert_array_equal(y.numpy(), x.numpy())
    grad = tape.gradient(loss, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    # d/dx sum(w * y^2) = 2 w y * dy/dx = scale * 2 w x
    np.testing.assert_allclose(grad.numpy(), scale * 2 * w.numpy() * x.numpy(), rtol=1e-6)


def test_default_is_stop_gradient_and_round_trip():
    layer = GradientScale()
    assert layer.scale == 0.0
    x = tf.Variable(np.ones((1, 2), "float32"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(scale_gradient(x, 0.0) * 3.0)
    assert tape.gradient(loss, x) is None or not np.any(tape.gradient(loss, x).numpy())
    clone = keras.layers.deserialize(keras.layers.serialize(GradientScale(0.3, name="g")))
    assert isinstance(clone, GradientScale) and clone.scale == pytest.approx(0.3)
