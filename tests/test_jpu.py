"""JointPyramidUpsampling: structure, an oracle composition, shapes, errors, round trip."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from iseg.layers.jpu import JointPyramidUpsampling


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    return [
        rng.normal(size=s).astype("float32") for s in ((2, 9, 9, 4), (2, 5, 5, 6), (2, 3, 3, 8))
    ]


def test_matches_composition_oracle():
    xs = inputs()
    layer = JointPyramidUpsampling(filters=5)
    y = layer(xs, training=False).numpy()
    assert y.shape == (2, 9, 9, 20)
    # oracle: 3x3 conv + BN + ReLU per input, align-corners bilinear to 9x9 (TF v1 resize),
    # concat, depthwise dilated conv with bias + BN, then 1x1 conv + BN + ReLU per rate
    def bn(layer_bn, t):
        std = tf.sqrt(layer_bn.moving_variance + layer_bn.epsilon)
        return (t - layer_bn.moving_mean) / std * layer_bn.gamma + layer_bn.beta

    feats = []
    for conv, x in zip(layer.input_convs, xs):
        t = tf.nn.relu(bn(conv.bn, tf.nn.conv2d(x, conv.conv.kernel, 1, "SAME")))
        feats.append(tf.compat.v1.image.resize_bilinear(t, (9, 9), align_corners=True))
    cat = tf.concat(feats, -1)
    outs = []
    for d, dw, pw in zip((1, 2, 4, 8), layer.depthwise, layer.pointwise):
        assert dw.conv.dilation_rate == (d, d) and dw.conv.use_bias
        t = (
            tf.nn.depthwise_conv2d(cat, dw.conv.kernel, (1, 1, 1, 1), "SAME", dilations=(d, d))
            + dw.conv.bias
        )
        t = bn(dw.bn, t)
        outs.append(tf.nn.relu(bn(pw.bn, tf.nn.conv2d(t, pw.conv.kernel, 1, "SAME"))))
    np.testing.assert_allclose(y, tf.concat(outs, -1).numpy(), atol=1e-4, rtol=1e-4)


def test_errors_and_round_trip(tmp_path):
    layer = JointPyramidUpsampling(filters=3, dilation_rates=(1, 2))
    with pytest.raises(ValueError, match="list of 3 feature maps"):
        layer(inputs()[:2])
    ins = [keras.Input(s[1:]) for s in ((2, 9, 9, 4), (2, 5, 5, 6), (2, 3, 3, 8))]
    model = keras.Model(ins, layer(ins))
    assert model.output_shape == (None, 9, 9, 6)
    path = tmp_path / "jpu.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    xs = inputs(1)
    np.testing.assert_allclose(loaded(xs).numpy(), model(xs).numpy(), atol=1e-6)
