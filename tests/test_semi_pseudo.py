"""Pseudo-labels, thresholds, weights and unsupervised losses (iseg.semi.pseudo), each
against a NumPy loop over pixels / classes."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from iseg.semi import pseudo

K = 4


def _softmax(z):
    z = z.astype(np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _ce(z, y):
    """CE of one pixel's logits `z` against class `y` (float64)."""
    z = z.astype(np.float64)
    return -(z[y] - z.max() - np.log(np.exp(z - z.max()).sum()))


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=2.0, size=(2, 5, 6, K)).astype("float32")
    teacher = rng.normal(scale=2.0, size=(2, 5, 6, K)).astype("float32")
    ignore = rng.random((2, 5, 6)) < 0.2
    return logits, teacher, ignore


def _loop_labels(probs):
    b, h, w, k = probs.shape
    label, conf = np.zeros((b, h, w), int), np.zeros((b, h, w))
    for i in range(b):
        for y in range(h):
            for x in range(w):
                best = 0
                for c in range(1, k):
                    if probs[i, y, x, c] > probs[i, y, x, best]:
                        best = c
                label[i, y, x], conf[i, y, x] = best, probs[i, y, x, best]
    return label, conf


def test_pseudo_labels_and_fixed_threshold(batch):
    logits, _, ignore = batch
    probs = _softmax(logits).astype("float32")
    label, conf = pseudo.pseudo_labels(tf.constant(probs))
    ref_label, ref_conf = _loop_labels(probs)
    np.testing.assert_array_equal(label.numpy(), ref_label)
    np.testing.assert_allclose(conf.numpy(), ref_conf, rtol=1e-6)
    tau = float(conf.numpy()[0, 0, 0])  # a pixel exactly at the threshold is kept
    keep = pseudo.keep_mask(conf, tau, tf.constant(ignore)).numpy()
    np.testing.assert_array_equal(keep, (probs.max(-1) >= tau) & ~ignore)
    assert keep[0, 0, 0] or ignore[0, 0, 0]
    assert 0 < keep.sum() < keep.size
    # tau <= 0: no filter, only the ignored pixels are dropped
    np.testing.assert_array_equal(pseudo.keep_mask(conf, -0.7, tf.constant(ignore)), ~ignore)
    np.testing.assert_array_equal(pseudo.keep_mask(conf, 0.0), np.ones_like(ignore))


def _loop_global(label, conf, ignore):
    """CorrMatch's g: per predicted class present, the max confidence; mean over classes."""
    maxima = {}
    for idx in np.ndindex(label.shape):
        if ignore[idx]:
            continue
        c = label[idx]
        maxima[c] = max(maxima.get(c, -1.0), conf[idx])
    return (sum(maxima.values()) / len(maxima)) if maxima else None


def test_adaptive_threshold_is_the_ema_of_class_maxima(batch):
    logits, _, ignore = batch
    probs = _softmax(logits).astype("float32")
    label, conf = _loop_labels(probs)
    g = _loop_global(label, conf, ignore)
    tau = tf.Variable(0.85)
    new = pseudo.update_adaptive_threshold(
        tau, tf.constant(label, tf.int32), tf.constant(conf, tf.float32), tf.constant(ignore),
        num_classes=K)
    np.testing.assert_allclose(new.numpy(), 0.999 * 0.85 + 0.001 * g, rtol=1e-6)
    assert tau.numpy() == new.numpy()
    # nothing left (all ignored): unchanged
    before = tau.numpy()
    pseudo.update_adaptive_threshold(tau, tf.constant(label, tf.int32),
                                     tf.constant(conf, tf.float32),
                                     tf.ones_like(tf.constant(ignore)), num_classes=K)
    assert tau.numpy() == before


def test_adaptive_threshold_update_is_exact():
    # one predicted class: g is its maximum confidence exactly, so the EMA is bit-exact
    conf = np.array([[[0.6, 0.93], [0.7, 0.5]]], np.float32)
    label = np.full((1, 2, 2), 2, np.int32)
    ignore = np.array([[[False, False], [False, True]]])
    tau = tf.Variable(np.float32(0.85))
    for _ in range(3):
        expected = np.float32(0.999) * tau.numpy() + np.float32(1.0 - 0.999) * np.float32(0.93)
        pseudo.update_adaptive_threshold(tau, tf.constant(label), tf.constant(conf),
                                         tf.constant(ignore), num_classes=K)
        assert tau.numpy() == expected


def test_dynamic_threshold(batch):
    logits, _, ignore = batch
    conf = _softmax(logits).max(-1)
    cbar = conf[~ignore].mean()
    got = pseudo.dynamic_threshold(tf.constant(conf, tf.float32), tf.constant(ignore)).numpy()
    np.testing.assert_allclose(got, np.clip(0.6 / (1 + np.exp(-0.5 * (cbar - 0.5))), 0.3, 0.8),
                               rtol=1e-6)
    # inside the clip range the formula shows
    got = pseudo.dynamic_threshold(tf.constant(conf, tf.float32), base=1.2, beta=4.0).numpy()
    want = 1.2 / (1 + np.exp(-4.0 * (conf.mean() - 0.5)))
    assert 0.3 < want < 0.8
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert pseudo.dynamic_threshold(tf.ones((1, 2, 2)), base=5.0).numpy() == np.float32(0.8)


def _loop_unsup(logits, target, mask, ignore, normaliser, weights=None):
    total, kept, valid = 0.0, 0, 0
    for idx in np.ndindex(target.shape):
        valid += not ignore[idx]
        if mask[idx]:
            wt = 1.0 if weights is None else weights[idx]
            total += wt * _ce(logits[idx], target[idx])
            kept += 1
    return {"all_pixels": total / target.size, "non_ignored": total / valid,
            "valid": total / max(kept, 1)}[normaliser]


@pytest.mark.parametrize("normaliser", pseudo.NORMALISERS)
def test_unsupervised_ce_normalisers(batch, normaliser):
    logits, teacher, ignore = batch
    label, conf = _loop_labels(_softmax(teacher))
    mask = (conf >= 0.6) & ~ignore
    assert 0 < mask.sum() < (~ignore).sum()
    weights = conf ** 2.0
    got = pseudo.unsup_ce(tf.constant(logits), tf.constant(label, tf.int32), tf.constant(mask),
                          tf.constant(ignore), normaliser,
                          pseudo.confidence_weights(tf.constant(conf, tf.float32), 2.0))
    want = _loop_unsup(logits, label, mask, ignore, normaliser, weights)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
    with pytest.raises(ValueError, match="normaliser must be one of"):
        pseudo.unsup_ce(tf.constant(logits), tf.constant(label, tf.int32), tf.constant(mask),
                        normaliser="mean")


def test_valid_normaliser_counts_at_least_one_pixel(batch):
    logits, _, ignore = batch
    got = pseudo.unsup_ce(tf.constant(logits), tf.zeros(ignore.shape, tf.int32),
                          tf.zeros(ignore.shape, tf.bool), normaliser="valid")
    assert got.numpy() == 0.0
    one = np.zeros(ignore.shape, bool)
    one[1, 2, 3] = True
    got = pseudo.unsup_ce(tf.constant(logits), tf.zeros(ignore.shape, tf.int32),
                          tf.constant(one), normaliser="valid")
    np.testing.assert_allclose(got.numpy(), _ce(logits[1, 2, 3], 0), rtol=1e-6)


def test_kl_loss(batch):
    logits, teacher, ignore = batch
    p = _softmax(teacher)
    p[0, 0, 0] = [1.0, 0.0, 0.0, 0.0]  # 0 log 0 = 0
    mask = (p.max(-1) >= 0.5) & ~ignore
    mask[0, 0, 0] = True
    total = 0.0
    for idx in np.ndindex(mask.shape):
        if mask[idx]:
            logq = np.log(_softmax(logits[idx]))
            total += sum(p[idx][c] * (np.log(p[idx][c]) - logq[c]) for c in range(K)
                         if p[idx][c] > 0)
    got = pseudo.kl_loss(tf.constant(logits), tf.constant(p, tf.float32), tf.constant(mask),
                         tf.constant(ignore))
    np.testing.assert_allclose(got.numpy(), total / (~ignore).sum(), rtol=1e-5)


def _loop_wiou(pred, ref, k):
    """iMAS's class-weighted IoU of one image (confusion-matrix loop, nansum)."""
    hist = np.zeros((k, k))
    for t, p in zip(ref.ravel(), pred.ravel()):
        hist[t, p] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.diag(hist) / (hist.sum(0) + hist.sum(1) - np.diag(hist))
        weight = np.array([(ref == c).sum() for c in range(k)], float)
        weight[0] = 0
        weight = weight / weight.sum()
        return np.nansum(iou * weight)


def test_hardness(batch):
    _, _, ignore = batch
    rng = np.random.default_rng(3)
    student = _softmax(rng.normal(scale=2.0, size=(3, 5, 6, K)))
    teacher = _softmax(rng.normal(scale=2.0, size=(3, 5, 6, K)))
    teacher[2, ..., 0] += 10.0  # image 2: the teacher says all background
    teacher /= teacher.sum(-1, keepdims=True)
    tau = 0.5
    want = []
    for i in range(3):
        ls, cs = student[i].argmax(-1), student[i].max(-1)
        lt, ct = teacher[i].argmax(-1), teacher[i].max(-1)
        rho_t, rho_s = (ct >= tau).mean(), (cs >= tau).mean()
        want.append((rho_t * _loop_wiou(ls, lt, K) + rho_s * _loop_wiou(lt, ls, K)) / 2)
    got = pseudo.hardness(tf.constant(student, tf.float32), tf.constant(teacher, tf.float32), tau)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
    assert 0 < want[0] < 1
    # all background in both: 0 (nansum of 0/0)
    bg = np.zeros((1, 5, 6, K), np.float32)
    bg[..., 0] = 1.0
    assert pseudo.hardness(tf.constant(bg), tf.constant(bg), tau).numpy()[0] == 0.0
    # ignored pixels drop out of the ratios and the IoUs
    ign = ignore[:1].repeat(3, 0)
    got = pseudo.hardness(tf.constant(student, tf.float32), tf.constant(teacher, tf.float32),
                          tau, tf.constant(ign)).numpy()
    for i in range(3):
        v = ~ign[i]
        ls, cs = student[i].argmax(-1)[v], student[i].max(-1)[v]
        lt, ct = teacher[i].argmax(-1)[v], teacher[i].max(-1)[v]
        want = ((ct >= tau).mean() * _loop_wiou(ls, lt, K)
                + (cs >= tau).mean() * _loop_wiou(lt, ls, K)) / 2
        np.testing.assert_allclose(got[i], want, rtol=1e-5)


def test_sobel_boundary():
    rng = np.random.default_rng(5)
    label = rng.integers(0, 3, size=(2, 6, 7))
    label[0] = 1
    label[0, 2:4, 3:5] = 2  # one square on a flat background
    sx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    want = np.zeros(label.shape, bool)
    for b, y, x in np.ndindex(label.shape):
        for c in range(K):
            gx = gy = 0
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    yy, xx = y + dy, x + dx
                    inside = 0 <= yy < label.shape[1] and 0 <= xx < label.shape[2]
                    v = float(inside and label[b, yy, xx] == c)
                    gx += sx[dy + 1, dx + 1] * v
                    gy += sx[dx + 1, dy + 1] * v
            want[b, y, x] |= np.hypot(gx, gy) > 0
    got = pseudo.sobel_boundary(tf.constant(label, tf.int32), K).numpy()
    np.testing.assert_array_equal(got, want)
    assert not got[0, 1:5, 1:2].any() and got[0, 2, 3] and got[0, 0, 3]  # interior / edge / border


def test_cwbass_loss(batch):
    logits, teacher, ignore = batch
    label, conf = _loop_labels(_softmax(teacher))
    valid = (conf > 0.5) & ~ignore
    boundary = np.random.default_rng(1).random(ignore.shape) < 0.4
    num = den = bnum = bden = 0.0
    for idx in np.ndindex(ignore.shape):
        if valid[idx]:
            ce = _ce(logits[idx], label[idx])
            num, den = num + conf[idx] * ce, den + 1
            if boundary[idx]:
                bnum, bden = bnum + ce, bden + 1
    got = pseudo.cwbass_terms(tf.constant(logits), tf.constant(label, tf.int32),
                              tf.constant(conf, tf.float32), tf.constant(valid),
                              tf.constant(boundary))
    np.testing.assert_allclose([t.numpy() for t in got], [num / den, bnum / bden], rtol=1e-5)


def test_no_gradient_reaches_the_targets(batch):
    logits, teacher, ignore = batch
    x, t = tf.Variable(logits), tf.Variable(_softmax(teacher).astype("float32"))
    mask, ign = tf.constant(~ignore), tf.constant(ignore)
    with tf.GradientTape(persistent=True) as tape:
        label, conf = pseudo.pseudo_labels(t)
        losses = {
            "ce": pseudo.unsup_ce(x, label, mask, ign, weights=pseudo.confidence_weights(conf)),
            "weighted": pseudo.unsup_ce(x, label, mask, ign, weights=t[..., 0]),
            "kl": pseudo.kl_loss(x, t, mask, ign),
            "cw": tf.add_n(pseudo.cwbass_terms(x, label, conf, mask, mask)),
            "tau": pseudo.dynamic_threshold(conf, ign) * tf.reduce_sum(x),
        }
    for name, loss in losses.items():
        assert tape.gradient(loss, x) is not None, name
        assert tape.gradient(loss, t) is None, name


SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    from iseg.semi import pseudo

    data = np.load(sys.argv[1])
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

    def part(array):
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(array[ctx.replica_id_in_sync_group::2]))

    with strategy.scope():
        tau = tf.Variable(0.85, trainable=False,
                          aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def replica_fn(label, conf, ignore):
        new = pseudo.update_adaptive_threshold(tau, label, conf, ignore, num_classes=4)
        return new, pseudo.dynamic_threshold(conf, ignore, base=1.2, beta=4.0)

    out = strategy.run(tf.function(replica_fn),
                       args=(part(data["label"]), part(data["conf"]), part(data["ignore"])))
    np.savez(sys.argv[2], tau=[v.numpy() for v in strategy.experimental_local_results(out[0])],
             dyn=[v.numpy() for v in strategy.experimental_local_results(out[1])],
             var=tau.numpy())
    """
)


def test_thresholds_use_the_global_batch_under_mirrored_strategy(tmp_path):
    rng = np.random.default_rng(7)
    label = rng.integers(0, K, size=(4, 3, 5)).astype("int32")
    label[::2] = np.minimum(label[::2], 1)  # replica 0 sees classes 0-1 only
    conf = rng.uniform(0.3, 1.0, size=label.shape).astype("float32")
    ignore = rng.random(label.shape) < 0.2
    np.savez(tmp_path / "in.npz", label=label, conf=conf, ignore=ignore)
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "in.npz"),
                           str(tmp_path / "out.npz")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = np.load(tmp_path / "out.npz")
    want = 0.999 * 0.85 + 0.001 * _loop_global(label, conf, ignore)
    np.testing.assert_allclose(out["tau"], [want, want], rtol=1e-6)
    np.testing.assert_allclose(out["var"], want, rtol=1e-6)
    cbar = conf[~ignore].mean()
    np.testing.assert_allclose(out["dyn"], [1.2 / (1 + np.exp(-4.0 * (cbar - 0.5)))] * 2,
                               rtol=1e-6)
