"""SAR: anchor CE and pull loss against a NumPy oracle, gradient routing, the readiness gate
and the EMA, buffers saved and restored, one vs two replicas, and the model switch."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import keras

from iseg.losses.sar import SARRegularizer, labels_at
from iseg.models import build_model

K, D = 3, 4


def _layer(seed=7):
    keras.utils.set_random_seed(seed)  # the projector's initial weights
    layer = SARRegularizer(K, seed=seed)
    layer.build((None, 4, 4, D))
    return layer


def _confident_classifier(layer, scale=20.0):
    """A classifier with `E W = scale * I` for the current projected anchors (gate on)."""
    e = keras.ops.convert_to_numpy(layer.project())
    kernel = np.linalg.pinv(e) @ (scale * np.eye(K))
    return tf.Variable(kernel.astype("float32")), tf.Variable(np.zeros(K, "float32"))


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    feature = rng.normal(size=(2, 4, 4, D)).astype("float32")
    labels = rng.integers(0, K, size=(2, 8, 8)).astype("int32")
    labels[0, :2] = 255
    return feature, labels


def _oracle(e, kernel, bias, m, feature, labels, ready):
    z = e @ kernel + bias
    logp = z - z.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    ce = -np.diag(logp)
    p = np.exp(-ce)
    lp = np.log(np.where(p > 0.9, 1.0, p))
    anchor = np.sum(lp / (lp.sum() + 1e-9) * ce)
    y = labels[:, ::2, ::2]
    valid = y != 255
    err = ((feature - m[np.where(valid, y, 0)]) ** 2).mean(-1)
    pull = 0.1 * (err * valid).sum() / valid.sum() if ready else 0.0
    return anchor, pull


def test_sar_options_errors():
    from iseg.errors import ConfigError
    from iseg.training.config import DatasetMeta, TrainConfig, model_options

    meta = DatasetMeta(num_classes=K, class_names=["a", "b", "c"], palette=[(0, 0, 0)] * K)
    assert model_options(TrainConfig(sar=True, sar_options={"trade_off": 0.2}), meta)["sar"] == {
        "trade_off": 0.2}
    with pytest.raises(ConfigError, match=r"--sar_options: unknown SAR option 'tradeoff'\. "
                                          r"Valid options: trade_off, trade_off_ce"):
        model_options(TrainConfig(sar=True, sar_options={"tradeoff": 0.2}), meta)
    with pytest.raises(ConfigError, match="--sar_options given without --sar=true"):
        model_options(TrainConfig(sar_options={"trade_off": 0.2}), meta)


def test_labels_at_slices_integer_ratios():
    y = np.arange(2 * 8 * 6).reshape(2, 8, 6)
    np.testing.assert_array_equal(np.asarray(labels_at(y, (4, 3))), y[:, ::2, ::2])
    assert tuple(labels_at(y, (3, 3)).shape) == (2, 3, 3)  # 8 -> 3: nearest resize


def test_gate_off_no_pull_no_ema_and_anchor_ce_oracle():
    layer = _layer()
    rng = np.random.default_rng(1)
    kernel = tf.Variable(rng.normal(0, 0.01, size=(D, K)).astype("float32"))
    bias = tf.Variable(np.zeros(K, "float32"))
    feature, labels = _batch()
    e = keras.ops.convert_to_numpy(layer.project())
    out = layer(feature, labels, kernel, bias)
    assert float(out["sar_ready"]) == 0.0 and float(out["sar_pull"]) == 0.0
    assert not np.any(np.asarray(layer.semantic_anchors)) and float(layer.initialized) == 0
    anchor, _ = _oracle(e, kernel.numpy(), bias.numpy(), np.zeros((K, D)), feature, labels, False)
    assert float(out["sar_anchor"]) == pytest.approx(anchor, rel=1e-5)


def test_gate_on_copies_then_ema_and_pull_oracle():
    layer = _layer()
    kernel, bias = _confident_classifier(layer)
    feature, labels = _batch()
    e1 = keras.ops.convert_to_numpy(layer.project())
    out = layer(feature, labels, kernel, bias)
    assert float(out["sar_ready"]) == 1.0 and float(layer.initialized) == 1.0
    np.testing.assert_allclose(np.asarray(layer.semantic_anchors), e1, rtol=1e-5, atol=1e-6)
    anchor, pull = _oracle(e1, kernel.numpy(), bias.numpy(), e1, feature, labels, True)
    assert float(out["sar_anchor"]) == pytest.approx(anchor, rel=1e-4, abs=1e-7)
    assert float(out["sar_pull"]) == pytest.approx(pull, rel=1e-5)
    # a changed projector: the second ready step moves M by 0.1% towards the new E
    fc = layer.projector[0]
    fc.kernel.assign(fc.kernel.numpy() * 1.05)
    kernel2, bias2 = _confident_classifier(layer)
    e2 = keras.ops.convert_to_numpy(layer.project())
    out = layer(feature, labels, kernel2, bias2)
    assert float(out["sar_ready"]) == 1.0
    np.testing.assert_allclose(
        np.asarray(layer.semantic_anchors), 0.999 * e1 + 0.001 * e2, rtol=1e-5, atol=1e-6
    )


def _routing(layer, kernel, bias, term):
    feature, labels = _batch()
    feature = tf.Variable(feature)
    sources = [feature, kernel, bias] + [w.value for w in layer.trainable_weights]
    with tf.GradientTape() as tape:
        out = layer(feature, labels, kernel, bias)
    grads = tape.gradient(out[term], sources, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return float(out["sar_ready"]), [g.numpy() for g in grads]


def test_gradient_routing():
    # anchor CE (gate off: a fresh classifier, the anchors are not yet confident)
    layer = _layer()
    rng = np.random.default_rng(1)
    kernel = tf.Variable(rng.normal(0, 0.3, size=(D, K)).astype("float32"))
    bias = tf.Variable(np.zeros(K, "float32"))
    ready, g = _routing(layer, kernel, bias, "sar_anchor")
    assert ready == 0.0
    assert not np.any(g[0])  # never the features
    assert np.any(g[1]) and np.any(g[2])  # the classifier
    assert all(np.any(x) for x in g[3:] if x.ndim > 1)  # the projector's kernels
    # pull loss (gate on): the features only, never the anchors, projector or classifier
    layer = _layer()
    kernel, bias = _confident_classifier(layer)
    ready, g = _routing(layer, kernel, bias, "sar_pull")
    assert ready == 1.0 and np.any(g[0])
    assert not any(np.any(x) for x in g[1:])
    assert all(not w.trainable for w in (layer.anchors, layer.semantic_anchors, layer.initialized))


def _tiny_sar_model():
    keras.utils.set_random_seed(0)
    return build_model(
        "fcn", "resnet18", K,
        backbone_options=dict(depths=(1, 1, 1, 1), widths=(4, 4, 8, 8), stem_width=8),
        head_options=dict(channels=8, end_channels=D), aux_weight=0.0, sar={},
        input_shape=(32, 32, 3),
    )


def test_model_switch_terms_buffers_saved_and_restored(tmp_path):
    model = _tiny_sar_model()
    x = np.random.default_rng(0).uniform(-1, 1, size=(2, 32, 32, 3)).astype("float32")
    y = np.random.default_rng(1).integers(0, K, size=(2, 32, 32)).astype("int32")
    terms = model.loss_terms(y, model(x, training=True))
    assert {"sar_anchor", "sar_pull"} <= set(terms) and "sar_ready" not in terms
    rng = np.random.default_rng(2)
    model.sar_loss.semantic_anchors.assign(rng.normal(size=(K, D)).astype("float32"))
    model.sar_loss.initialized.assign(1.0)
    model.save(tmp_path / "sar.keras")
    back = keras.saving.load_model(tmp_path / "sar.keras")
    assert back.sar == {}
    for name in ("anchors", "semantic_anchors", "initialized"):
        np.testing.assert_array_equal(
            np.asarray(getattr(back.sar_loss, name)), np.asarray(getattr(model.sar_loss, name))
        )
    ckpt = tf.train.Checkpoint(model=model)
    path = ckpt.write(str(tmp_path / "ckpt"))
    fresh = _tiny_sar_model()
    tf.train.Checkpoint(model=fresh).read(path).assert_consumed()
    np.testing.assert_array_equal(
        np.asarray(fresh.sar_loss.semantic_anchors), np.asarray(model.sar_loss.semantic_anchors)
    )
    # the seed fixes the random anchors
    np.testing.assert_array_equal(np.asarray(fresh.sar_loss.anchors),
                                  np.asarray(model.sar_loss.anchors))


REPLICAS = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    import keras
    from iseg.losses.sar import SARRegularizer

    data = np.load(sys.argv[1])
    feature, labels = data["feature"], data["labels"]
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        layer = SARRegularizer(3, seed=7)
        layer.build((None, 4, 4, 4))
        layer.set_weights([data[f"w{i}"] for i in range(len(layer.weights))])
        kernel = tf.Variable(data["kernel"])
        bias = tf.Variable(data["bias"])
    half = feature.shape[0] // 2

    def part(array):
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(array[ctx.replica_id_in_sync_group * half:
                                          (ctx.replica_id_in_sync_group + 1) * half]))

    @tf.function
    def step(f, y):
        return strategy.run(lambda f, y: layer(f, y, kernel, bias), args=(f, y))

    out = step(part(feature), part(labels))
    values = {k: [float(t) for t in strategy.experimental_local_results(v)]
              for k, v in out.items()}
    anchors = [v.numpy() for v in strategy.experimental_local_results(layer.semantic_anchors)]
    np.savez(sys.argv[2], anchors=np.stack(anchors),
             **{k: np.array(v) for k, v in values.items()})
    """
)


def test_one_and_two_replicas_agree(tmp_path):
    single = _layer()
    kernel, bias = _confident_classifier(single)
    feature, labels = _batch()
    feature = np.concatenate([feature, feature])  # equal halves: equal local means
    labels = np.concatenate([labels, labels])
    weights = {f"w{i}": w for i, w in enumerate(single.get_weights())}
    np.savez(tmp_path / "in.npz", feature=feature, labels=labels, kernel=kernel.numpy(),
             bias=bias.numpy(), **weights)
    env = dict(os.environ, KERAS_BACKEND="tensorflow", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, "-c", REPLICAS, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    want = single(feature, labels, kernel, bias)
    for name in ("sar_anchor", "sar_pull", "sar_ready"):
        np.testing.assert_allclose(got[name], [float(want[name])] * 2, rtol=1e-5)
    assert float(want["sar_ready"]) == 1.0
    for replica in got["anchors"]:
        np.testing.assert_allclose(replica, np.asarray(single.semantic_anchors), rtol=1e-5)


@pytest.mark.parametrize("head", ["fcn", "deeplabv3", "nl", "upernet", "card", "hfgd"])
def test_sar_plugs_into_heads(head):
    from test_zoo import batch, tiny

    model = tiny(f"{head}_resnet50_d8", sar={}, aux_weight=0.0)
    x, y = batch((32, 32))
    out = model(x, training=True)
    terms = model.loss_terms(y, out)
    assert {"sar_anchor", "sar_pull"} <= set(terms)
    assert all(np.isfinite(float(v)) for v in terms.values())
    # the SAR feature is what the classifier reads: its width is the classifier's input
    assert out["classifier_input"].shape[-1] == model.head.classifier.kernel.shape[-2]
    assert model.sar_loss.anchors.shape[-1] == out["classifier_input"].shape[-1]
