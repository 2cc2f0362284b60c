"""KernelSharingASPP: parameter saving, shared-kernel gradient, shapes, round trip."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from iseg.layers.aspp import ASPP
from iseg.layers.ksac import KernelSharingASPP

CIN, F, RATES = 6, 4, (1, 2, 3)


def n_params(layer):
    return sum(int(np.prod(w.shape)) for w in layer.trainable_weights)


def test_parameter_saving_vs_aspp():
    ksac = KernelSharingASPP(F, RATES)
    ksac.build((1, 9, 9, CIN))
    aspp = ASPP(F, RATES, projection_filters=F)
    aspp.build((1, 9, 9, CIN))
    bn = 2 * F  # gamma + beta of one BN
    atrous_kernel = 3 * 3 * CIN * F
    branches = 2 * (CIN * F + bn)  # image pooling + 1x1
    projection = 5 * F * F + bn
    expected_aspp = branches + 3 * (atrous_kernel + bn) + projection
    expected_ksac = branches + atrous_kernel + 3 * bn + projection
    assert n_params(aspp) == expected_aspp
    assert n_params(ksac) == expected_ksac
    assert n_params(aspp) - n_params(ksac) == 2 * atrous_kernel  # 2 of 3 kernels removed


def spread(kernel, rate):
    """A 3x3 kernel as the (2 rate + 1)^2 kernel of the dilated convolution: its taps
    `rate` apart, zeros between (so the oracle needs no dilated-convolution kernel, which
    TF's CPU build lacks a gradient for when oneDNN is off)."""
    size = 2 * rate + 1
    taps = [[i * rate, j * rate] for i in range(3) for j in range(3)]
    return tf.scatter_nd(taps, tf.reshape(kernel, [9, *kernel.shape[2:]]),
                         [size, size, *kernel.shape[2:]])


def oracle_forward(layer, x, kernels, training):
    """The layer's computation with a separate copy of the shared kernel per rate."""
    outs = [layer.image_branch(x, training=training), layer.pixel_branch(x, training=training)]
    atrous = [
        tf.nn.relu(bn(tf.nn.conv2d(x, spread(k, r), 1, "SAME"), training=training))
        for k, r, bn in zip(kernels, layer.rates, layer.rate_bns)
    ]
    if layer.fusion == "sum":
        atrous = [tf.add_n(atrous)]
    return layer.projection(tf.concat(outs + atrous, -1), training=training)


@pytest.mark.parametrize("fusion", ["concat", "sum"])
@pytest.mark.parametrize("training", [False, True])
def test_shared_kernel_gradient_is_sum_of_branch_gradients(fusion, training):
    x = tf.constant(np.random.default_rng(0).normal(size=(2, 9, 8, CIN)).astype("float32"))
    layer = KernelSharingASPP(F, RATES, fusion=fusion, dropout=0.0)
    layer.build(x.shape)
    weights = tf.constant(np.random.default_rng(1).normal(size=(2, 9, 8, F)).astype("float32"))
    with tf.GradientTape() as tape:
        y = layer(x, training=training)
        loss = tf.reduce_sum(y * weights)
    shared_grad = tape.gradient(loss, layer.shared_kernel.value)
    copies = [tf.Variable(layer.shared_kernel.numpy()) for _ in RATES]
    with tf.GradientTape() as tape:
        y_ref = oracle_forward(layer, x, copies, training)
        loss_ref = tf.reduce_sum(y_ref * weights)
    branch_grads = tape.gradient(loss_ref, copies)
    np.testing.assert_allclose(y.numpy(), y_ref.numpy(), atol=1e-5)
    for g in branch_grads:
        assert np.abs(g.numpy()).max() > 0
    assert not np.allclose(branch_grads[0].numpy(), branch_grads[1].numpy())
    total = sum(g.numpy() for g in branch_grads)
    np.testing.assert_allclose(shared_grad.numpy(), total, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fusion", ["concat", "sum"])
def test_shapes_and_round_trip(tmp_path, fusion):
    inp = keras.Input((9, 9, CIN))
    layer = KernelSharingASPP(F, RATES, fusion=fusion, projection_filters=5)
    model = keras.Model(inp, layer(inp))
    assert model.output_shape == (None, 9, 9, 5)
    assert layer.projection.conv.kernel.shape[-2] == F * (5 if fusion == "concat" else 3)
    x = np.random.default_rng(2).normal(size=(2, 9, 9, CIN)).astype("float32")
    path = tmp_path / "ksac.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-6)
    assert loaded.layers[1].get_config() == layer.get_config()


def test_bad_arguments():
    with pytest.raises(ValueError, match="fusion"):
        KernelSharingASPP(fusion="max")
    with pytest.raises(ValueError, match="rates"):
        KernelSharingASPP(rates=())


def test_mixed_precision():
    x = np.random.default_rng(5).normal(size=(1, 9, 9, CIN)).astype("float32")
    ref = KernelSharingASPP(F, RATES)
    ref.build(x.shape)
    mixed = KernelSharingASPP(F, RATES, dtype="mixed_float16")
    mixed.build(x.shape)
    mixed.set_weights(ref.get_weights())
    assert keras.backend.standardize_dtype(mixed.shared_kernel.dtype) == "float32"
    y = mixed(x, training=False)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    y_ref = ref(x, training=False).numpy()
    np.testing.assert_allclose(np.asarray(y, "float32"), y_ref, atol=2e-2 * np.abs(y_ref).max())
