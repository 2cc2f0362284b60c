"""CAR under a two-replica MirroredStrategy on two logical CPUs (run in a subprocess, because
logical devices must be configured before TensorFlow initialises them).

What is true, and asserted:
- the class centres on both replicas equal the single-device centres of the full batch;
- c2c depends on the centres only, so both replicas' c2c equal the full-batch c2c;
- intra and c2p are squares of *local* means: each replica's value equals the oracle on its
  half with the global centres, and (equal halves) the mean of the replicas' square roots
  equals the square root of the full-batch value, while their plain average does not;
- gradients: the all-reduce is differentiable, so the replicas' feature gradients,
  concatenated, equal the gradient of (L_replica0 + L_replica1) computed on one device with
  centres from the full batch.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from test_car_losses import IGNORE, make_batch, oracle_losses

K = 6

SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    from iseg.losses.car import _car_terms

    data = np.load(sys.argv[1])
    feats, labels, k = data["feats"], data["labels"], int(data["k"])
    half = feats.shape[0] // 2
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2

    def part(array):
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(array[ctx.replica_id_in_sync_group * half:
                                          (ctx.replica_id_in_sync_group + 1) * half]))

    def replica_fn(f, y):
        with tf.GradientTape() as tape:
            tape.watch(f)
            losses, centers = _car_terms(f, y, k, 255)
            total = losses["intra"] + losses["inter_c2c"] + losses["inter_c2p"]
        return losses, centers, tape.gradient(total, f)

    @tf.function
    def step(f, y):
        return strategy.run(replica_fn, args=(f, y))

    losses, centers, grads = step(part(feats), part(labels))
    out = {}
    for r, name in enumerate(strategy.experimental_local_results(centers)):
        out[f"centers{r}"] = name.numpy()
    for key in losses:
        for r, v in enumerate(strategy.experimental_local_results(losses[key])):
            out[f"{key}{r}"] = v.numpy()
    out["grads"] = np.concatenate([g.numpy() for g in strategy.experimental_local_results(grads)])

    # EMA centres: a non-trainable buffer updated in the replica context
    from iseg.losses.car import CARLoss
    with strategy.scope():
        layer = CARLoss(k, ignore_label=255, use_ema_centers=True, ema_decay=0.9)
        layer.build(feats.shape)
    out["ema_start"] = layer.ema_centers[0].numpy()
    run = tf.function(lambda f, y: strategy.run(layer, args=(f, y)))
    ema_losses = run(part(feats), part(labels))
    out["ema_after"] = layer.ema_centers[0].numpy()
    for r, v in enumerate(strategy.experimental_local_results(ema_losses["inter_c2c"])):
        out[f"ema_c2c{r}"] = v.numpy()
    np.savez(sys.argv[2], **out)
    """
)


@pytest.fixture(scope="module")
def replicated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("car_dist")
    feats, labels = make_batch(K, True, n=4, h=7, w=6, c=8, seed=21)
    labels[2:, :, :3] = 3  # make the halves differ in class content
    np.savez(tmp / "in.npz", feats=feats, labels=labels, k=K)
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp / "in.npz"), str(tmp / "out.npz")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return feats, labels, dict(np.load(tmp / "out.npz"))


def test_centres_are_global(replicated):
    feats, labels, out = replicated
    _, mu = oracle_losses(feats, labels, K)
    for r in (0, 1):
        np.testing.assert_allclose(out[f"centers{r}"], mu.numpy(), rtol=1e-5, atol=1e-6)


def test_losses_local_means_of_global_centres(replicated):
    feats, labels, out = replicated
    full, mu = oracle_losses(feats, labels, K)
    halves = [oracle_losses(feats[s], labels[s], K, centers_override=mu)[0]
              for s in (slice(0, 2), slice(2, 4))]
    for r in (0, 1):
        np.testing.assert_allclose(out[f"inter_c2c{r}"], float(full["inter_c2c"]), rtol=1e-5)
        for name in ("intra", "inter_c2p"):
            np.testing.assert_allclose(out[f"{name}{r}"], float(halves[r][name]), rtol=1e-5)
    for name in ("intra", "inter_c2p"):
        roots = (np.sqrt(out[f"{name}0"]) + np.sqrt(out[f"{name}1"])) / 2
        np.testing.assert_allclose(roots, np.sqrt(float(full[name])), rtol=1e-5)
        # and the plain average of squares of local means is not the full-batch value
        mean_of_squares = (out[f"{name}0"] + out[f"{name}1"]) / 2
        assert abs(mean_of_squares - float(full[name])) > 1e-4 * float(full[name])


def test_gradients_flow_through_the_all_reduce(replicated):
    feats, labels, out = replicated
    x = tf.constant(feats)
    with tf.GradientTape() as tape:
        tape.watch(x)
        _, mu = oracle_losses(x, labels, K)
        total = 0.0
        for s in (slice(0, 2), slice(2, 4)):
            terms = oracle_losses(x[s], labels[s], K, centers_override=mu)[0]
            total += terms["intra"] + terms["inter_c2c"] + terms["inter_c2p"]
    ref = tape.gradient(total, x).numpy()
    scale = np.abs(ref).max()
    np.testing.assert_allclose(out["grads"] / scale, ref / scale, atol=2e-5)


def test_ema_centres_update_under_mirrored_strategy(replicated):
    feats, labels, out = replicated
    _, mu = oracle_losses(feats, labels, K)
    present = np.isin(np.arange(K), labels[labels != IGNORE])[:, None]
    expected = out["ema_start"] + 0.1 * present * (mu.numpy() - out["ema_start"])
    np.testing.assert_allclose(out["ema_after"], expected, rtol=1e-5, atol=1e-6)
    ref, _ = oracle_losses(feats, labels, K, centers_override=tf.constant(expected, tf.float32))
    for r in (0, 1):
        np.testing.assert_allclose(out[f"ema_c2c{r}"], float(ref["inter_c2c"]), rtol=1e-5)
