"""`.keras` save/load round trip of every head inside a functional model."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from iseg.heads import build_head
from test_heads import K, MAIN_HEADS, _endpoints, _head, _model


@pytest.mark.parametrize("name", MAIN_HEADS + ["fcn_aux"])
def test_head_keras_round_trip(tmp_path, name):
    use_car = name != "fcn_aux"
    extra = dict(car=dict(filters=8)) if use_car else {}
    model = _model(_head(name, **extra) if name != "fcn_aux" else build_head(name, K, channels=8))
    rng = np.random.default_rng(3)
    for w in model.weights:
        if "variance" not in w.path:
            w.assign(rng.normal(0, 0.2, tuple(w.shape)).astype("float32"))
    eps = _endpoints(9)
    path = tmp_path / "head.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    a, b = model(eps, training=False), loaded(eps, training=False)
    assert set(a) == set(b)
    for key in a:
        for x, y in zip(tf.nest.flatten(a[key]), tf.nest.flatten(b[key])):
            np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-4, atol=1e-4)
    assert loaded.layers[-1].get_config() == model.layers[-1].get_config()
