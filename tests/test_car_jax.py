"""CARBlock + CAR losses, CAA and KSAC on the JAX backend (subprocess with
KERAS_BACKEND=jax): forward and gradients are finite and equal the TensorFlow values
computed here with the same weights and inputs."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

pytest.importorskip("jax")

# Builds every case on the current backend; shared by both sides (exec'd in the subprocess).
CASES = textwrap.dedent(
    """
    import numpy as np
    import keras
    from keras import ops
    from iseg.layers.car import CARBlock
    from iseg.layers.axial_attention import ChannelizedAxialAttention
    from iseg.layers.ksac import KernelSharingASPP
    from iseg.layers.jpu import JointPyramidUpsampling
    from iseg.losses.car import car_multi_rate_losses

    rng = np.random.default_rng(0)
    X = rng.normal(size=(2, 9, 8, 6)).astype("float32")
    LABELS = rng.integers(0, 5, size=(2, 9, 8)).astype("int32")
    LABELS[0, :3] = 255
    PYRAMID = [rng.normal(size=s).astype("float32")
               for s in ((2, 9, 9, 3), (2, 5, 5, 4), (2, 3, 3, 5))]

    def make(name):
        if name == "car":
            return CARBlock(4, bn_momentum=0.9)
        if name == "caa":
            return ChannelizedAxialAttention(8, guide_filters=4, mlp_hidden=4)
        if name == "caa_grouped":
            return ChannelizedAxialAttention(8, guide_filters=4, mlp_hidden=4, group_size=3)
        if name == "ksac":
            return KernelSharingASPP(4, (1, 2, 3), dropout=0.0)
        if name == "jpu":
            return JointPyramidUpsampling(3, dilation_rates=(1, 2))

    def inputs(name):
        return PYRAMID if name == "jpu" else X

    def objective(name, out):
        # a scalar that uses every output element (and the CAR losses for the CAR block)
        if name == "car":
            y, z = out
            losses = car_multi_rate_losses(z, LABELS, 5, (1, 2), 255)
            car = losses["intra"] + losses["inter_c2c"] + losses["inter_c2p"]
            return ops.sum(y * ops.sin(y)) + car
        return ops.sum(out * ops.sin(out))

    NAMES = ["car", "caa", "ksac"]  # the grouped CAA form and JPU: TF tests only (CI time)
    """
)

JAX_SCRIPT = CASES + textwrap.dedent(
    """
    import sys
    import jax
    assert keras.backend.backend() == "jax"
    weights = np.load(sys.argv[1], allow_pickle=True)
    result = {}
    for name in NAMES:
        layer = make(name)
        x = inputs(name)
        layer.build([v.shape for v in x] if isinstance(x, list) else x.shape)  # no eager call
        layer.set_weights(list(weights[name]))
        tv = [v.value for v in layer.trainable_variables]
        ntv = [v.value for v in layer.non_trainable_variables]

        def f(x, tv):
            out, _ = layer.stateless_call(tv, ntv, x, training=True)
            return objective(name, out), out

        (value, out), (gx, gw) = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(x, tv)
        out = out[0] if name == "car" else out
        result[name + "/out"] = np.asarray(out)
        result[name + "/value"] = np.asarray(value)
        gx = gx if isinstance(gx, list) else [gx]
        result[name + "/gx"] = np.concatenate([np.asarray(g).ravel() for g in gx])
        result[name + "/gw"] = np.concatenate([np.asarray(g).ravel() for g in gw])
    np.savez(sys.argv[2], **result)
    """
)


@pytest.fixture(scope="module")
def tf_side():
    namespace = {}
    exec(CASES, namespace)
    results, weights = {}, {}
    for name in namespace["NAMES"]:
        layer = namespace["make"](name)
        x = namespace["inputs"](name)
        layer(x, training=False)
        weights[name] = np.array(layer.get_weights(), dtype=object)
        xs = [tf.constant(v) for v in (x if isinstance(x, list) else [x])]
        with tf.GradientTape() as tape:
            tape.watch(xs)
            out = layer(xs if isinstance(x, list) else xs[0], training=True)
            value = namespace["objective"](name, out)
        gx, gw = tape.gradient(value, [xs, layer.trainable_variables])
        out = out[0] if name == "car" else out
        results[name] = dict(
            out=out.numpy(), value=value.numpy(),
            gx=np.concatenate([g.numpy().ravel() for g in gx]),
            gw=np.concatenate([g.numpy().ravel() for g in gw]),
        )
    return results, weights


@pytest.fixture(scope="module")
def jax_side(tf_side, tmp_path_factory):
    _, weights = tf_side
    tmp = tmp_path_factory.mktemp("jax")
    np.savez(tmp / "weights.npz", **weights)
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT, str(tmp / "weights.npz"), str(tmp / "out.npz")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return dict(np.load(tmp / "out.npz"))


@pytest.mark.parametrize("name", ["car", "caa", "ksac"])
def test_jax_matches_tensorflow(tf_side, jax_side, name):
    ref = tf_side[0][name]
    for key in ("out", "value", "gx", "gw"):
        got = jax_side[f"{name}/{key}"]
        assert np.all(np.isfinite(got)), key
        scale = max(np.abs(ref[key]).max(), 1e-6)
        np.testing.assert_allclose(
            got / scale, ref[key] / scale, atol=1e-4, err_msg=f"{name} {key}"
        )
    assert np.abs(jax_side[f"{name}/gx"]).max() > 0
