"""Gradients of every head in a training step (TF), and a JAX backend check."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import keras

from iseg.heads import build_head
from test_heads import K, MAIN_HEADS, OPTIONS, _endpoints, _head


# Softmax attention is invariant to a key bias (it shifts every logit of a query by the same
# amount), so the key convs' biases get exactly zero gradient; they are the only exception.
ZERO_GRAD_OK = ("key_conv/bias",)


@pytest.mark.parametrize("name", MAIN_HEADS + ["fcn_aux"])
def test_gradient_reaches_every_trainable_weight(name):
    use_car = name != "fcn_aux"
    head = build_head(name, K, **OPTIONS.get(name, {"channels": 8}),
                      car=dict(filters=8) if use_car else None)
    eps = _endpoints(8, seed=4)
    head(eps)
    rng = np.random.default_rng(5)
    for w in head.trainable_weights:  # zero-initialised gammas would block the attention path
        if not np.any(w.numpy()):
            w.assign(rng.normal(0, 0.5, tuple(w.shape)).astype("float32"))
    with tf.GradientTape() as tape:
        out = head(eps, training=True)
        tensors = tf.nest.flatten(out)
        loss = sum(
            tf.reduce_mean(t * rng.normal(size=t.shape).astype("float32")) for t in tensors
        )
    grads = tape.gradient(loss, head.trainable_weights)
    assert head.trainable_weights
    for w, g in zip(head.trainable_weights, grads):
        assert g is not None, w.path
        if w.path.endswith(ZERO_GRAD_OK):
            np.testing.assert_allclose(g.numpy(), 0.0, atol=1e-5)
        else:
            assert np.abs(g.numpy()).max() > 0, w.path


def test_head_on_jax_backend():
    """Build and run a CAR head with criss-cross attention, and adaptive pooling, on JAX
    (benchmarks/jax_heads_smoke.py runs every head forward and backward)."""
    pytest.importorskip("jax")
    code = """
import numpy as np, keras
from iseg.heads import build_head
from iseg.layers import adaptive_avg_pool2d
rng = np.random.default_rng(0)
x = rng.normal(size=(2, 7, 7, 12)).astype("float32")
head = build_head("ccnet", 5, channels=16, car=dict(filters=8))
out = head({"c5": x}, training=False)
assert out["logits"].shape == (2, 7, 7, 5) and out["feature"].shape == (2, 7, 7, 8)
assert np.isfinite(np.asarray(out["logits"])).all()
pooled = np.asarray(adaptive_avg_pool2d(x, 3))
np.testing.assert_allclose(pooled[:, 0, 0], x[:, 0:3, 0:3].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
np.testing.assert_allclose(pooled[:, 1, 2], x[:, 2:5, 4:7].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
print("JAX-OK", keras.backend.backend())
"""
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert "JAX-OK jax" in result.stdout, result.stderr[-3000:]


@pytest.mark.parametrize("name", ["nl", "ocr", "upernet", "danet", "ccnet"])
def test_heads_under_mixed_precision(name):
    head = _head(name, car=dict(filters=8), dtype="mixed_float16")
    out = head(_endpoints(9), training=True)
    assert keras.backend.standardize_dtype(out["logits"].dtype) == "float16"
    for t in tf.nest.flatten(out):
        assert np.isfinite(t.numpy().astype("float32")).all()
    assert all(w.dtype == "float32" for w in head.weights)
