"""CW-BASS (iseg.semi.methods.cwbass): its loss terms on a tiny model against a NumPy
computation, the ramp, the EMA settings, gradients and two training steps."""

import numpy as np
import pytest
import tensorflow as tf

from iseg.semi.methods import build_method
from semi_method_testutil import K, context, pixel_ce, snapshot, softmax, tiny_model
from semi_method_testutil import train_two_steps, zipped_batch


def _sobel_boundary(label):
    """Any non-zero Sobel x / y response of a one-hot channel (zero padding)."""
    onehot = np.eye(K)[label]
    pad = np.pad(onehot, ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, w = label.shape[1:]
    win = lambda dy, dx: pad[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]  # noqa: E731
    gx = (win(-1, 1) + 2 * win(0, 1) + win(1, 1)) - (win(-1, -1) + 2 * win(0, -1) + win(1, -1))
    gy = (win(1, -1) + 2 * win(1, 0) + win(1, 1)) - (win(-1, -1) + 2 * win(-1, 0) + win(-1, 1))
    return ((gx != 0) | (gy != 0)).any(-1)


def _expected(student, teacher, ctx, batch, o):
    """(L_sup, L_cw, L_b) in NumPy from the networks' outputs."""
    def logits(net, x, training):
        out = net(ctx.normalize(x), training=training)
        return np.asarray(out["logits"] if training else out, np.float64)

    label = batch["label"].numpy()
    labeled = label != 255
    sup = (pixel_ce(logits(student, batch["image"], True), label) * labeled).sum() / labeled.sum()
    ignore = batch["u_ignore"].numpy()
    probs = softmax(np.asarray(teacher(ctx.normalize(batch["u_image"])), np.float64))
    target, conf = probs.argmax(-1), probs.max(-1)
    cbar = conf[~ignore].mean()
    tau = np.clip(o["base_threshold"] / (1 + np.exp(-o["beta"] * (cbar - 0.5))), 0.3, 0.8)
    valid = (conf > tau) & ~ignore
    assert valid.sum() > 0
    if o["base_threshold"] > 1.0:  # (with K = 3 the default tau <= 0.34 keeps every pixel)
        assert valid.sum() < (~ignore).sum()
    assert len(np.unique(target)) > 1
    if o["confidence_decay"]:
        conf = conf * o["decay_factor"]
    ce = pixel_ce(logits(student, batch["u_image"], True), target)
    edge = _sobel_boundary(target) & valid
    assert 0 < edge.sum() < valid.sum()
    return sup, (conf ** o["gamma"] * ce)[valid].sum() / valid.sum(), ce[edge].sum() / edge.sum()


@pytest.mark.parametrize("options", [{}, {"gamma": 2.0, "confidence_decay": True,
                                           "base_threshold": 1.2, "boundary_weight": 0.25}])
def test_loss_terms_equal_an_independent_computation(options):
    student, net = tiny_model(0), tiny_model(1)

    def teacher(x, training=False):  # softer, and varying over the image (batch statistics)
        return net(x, training=True)["logits"] / 20.0

    method = build_method("cwbass", options)
    o = method.options
    ctx, batch = context(student, teacher), zipped_batch(0)
    ctx.step, ctx.total_steps = tf.constant(3, tf.int64), 160  # ramp_steps 10: r = 0.3
    restore = snapshot(student)
    terms = method.loss_terms(ctx, batch, tf.constant([0, 1]))
    restore()
    assert sorted(terms) == ["ce", "unsup_boundary", "unsup_cw"]
    sup, cw, edge = _expected(student, teacher, ctx, batch, o)
    np.testing.assert_allclose(float(terms["ce"]), sup, rtol=1e-4)
    np.testing.assert_allclose(float(terms["unsup_cw"]), 0.3 * cw, rtol=1e-4)
    np.testing.assert_allclose(float(terms["unsup_boundary"]),
                               0.3 * o["boundary_weight"] * edge, rtol=1e-4)


def test_ramp_and_teacher_settings():
    method = build_method("cwbass", {"ramp_steps": 20})
    assert [float(method.ramp(t, 1000)) for t in (0, 5, 20, 500)] == [0.0, 0.25, 1.0, 1.0]
    default = build_method("cwbass")  # the first 5/80 of the run
    assert [float(default.ramp(t, 320)) for t in (0, 5, 20, 500)] == [0.0, 0.25, 1.0, 1.0]
    assert float(build_method("cwbass", {"ramp_steps": 0}).ramp(0, 200)) == 1.0
    assert method.teacher == "ema" and method.unlabeled_streams == 1
    assert method.ema() == {"alpha": 0.999, "ramp": False, "copy_bn": True}


def test_two_steps_train_the_student_only():
    student, teacher = tiny_model(0), tiny_model(1)
    ctx = context(student, teacher)
    ctx.step = tf.constant(5, tf.int64)
    before = [v.numpy() for v in teacher.weights]
    method = build_method("cwbass")
    with tf.GradientTape() as tape:
        total = tf.add_n(list(method.loss_terms(ctx, zipped_batch(1), None).values()))
    assert all(g is None for g in tape.gradient(total, teacher.weights))
    variables = student.trainable_variables
    start = [v.numpy() for v in variables]
    train_two_steps(method, ctx, zipped_batch(1), variables)
    assert all(not np.array_equal(a, v.numpy()) for a, v in zip(start, variables))
    for a, v in zip(before, teacher.weights):
        np.testing.assert_array_equal(a, v.numpy())
