"""CorrMatch (iseg.semi.methods.corrmatch): its loss terms on a tiny model against a NumPy
computation from the recorded network outputs (threshold, regions, propagation and losses
by loops), the threshold in the method's state, two training steps."""

import numpy as np
import tensorflow as tf

from iseg.semi import mixing, propagation
from iseg.semi.methods import build_method
from iseg.training.config import DatasetMeta
from semi_method_testutil import B, H, K, W, context, pixel_ce, snapshot, softmax, tiny_model
from semi_method_testutil import train_two_steps, zipped_batch
from test_semi_propagation import _bilinear_align_corners, _loop_propagate
from test_semi_pseudo import _loop_global

REGIONS = 16
META = DatasetMeta(num_classes=K, class_names=list("abc"), palette=[(0, 0, 0)] * K)


def _recording(method):
    """Keep every result of `method.forward`."""
    calls, forward = [], method.forward

    def record(*args, **kwargs):
        calls.append(forward(*args, **kwargs))
        return calls[-1]

    method.forward = record
    return calls


def _regions(affinity, index, feature_size):
    h, w = feature_size
    out = np.zeros((B, len(index), H, W), bool)
    for b in range(B):
        for m, i in enumerate(index):
            up = _bilinear_align_corners(affinity[b, i].reshape(h, w), H, W)
            if up.max() > up.min():
                out[b, m] = (up - up.min()) / (up.max() - up.min()) > 0.5
    return out


def _ce_mean(logits, target, mask, ignore):
    return (pixel_ce(logits, target) * mask).sum() / (~ignore).sum()


def _expected(student, ctx, batch, weak, strong, seed):
    """The terms in NumPy from the recorded forwards (`weak`, `strong`)."""
    n = lambda t: np.asarray(t, np.float64)  # noqa: E731
    seeds = tf.random.experimental.stateless_split(seed, 5)
    logits, corr = n(weak["outputs"]["logits"]), n(weak["corr"])
    label = batch["label"].numpy()
    labeled = label != 255
    sup = (pixel_ce(logits[:B], label) * labeled).sum() / labeled.sum()
    corr_x = (pixel_ce(corr[:B], label) * labeled).sum() / labeled.sum()

    p_w = softmax(logits[B:])
    y_w, c_w, ign_w = p_w.argmax(-1), p_w.max(-1), batch["u_ignore"].numpy()
    p_m = softmax(n(student(ctx.normalize(batch["u_image2"]), training=False)))
    box = mixing.unimatch_box(seeds[1], B, H, W, p=0.5).numpy()
    assert box.any(axis=(1, 2)).all()
    y = np.where(box, p_m.argmax(-1), y_w)
    c = np.where(box, p_m.max(-1), c_w)
    ign = np.where(box, batch["u_ignore2"].numpy(), ign_w)
    tau = np.float32(0.999 * 0.85 + 0.001 * _loop_global(y_w, c_w, ign))

    index = propagation.query_rows(weak["affinity"], seeds[4], REGIONS)[1].numpy()
    regions = _regions(n(weak["affinity"])[B:], index, weak["feature_size"])
    y_prop, m_prop = _loop_propagate(regions, y, c, ign, box, tau)
    kept, weak_kept = (c >= tau) & ~ign, (c_w >= tau) & ~ign_w

    s_logits, s_corr = n(strong["outputs"]["logits"]), n(strong["corr"])
    log_q = np.log(softmax(s_logits))
    kl = (p_w * (np.log(np.maximum(p_w, 1e-300)) - log_q)).sum(-1)
    return tau, (y_prop != y).any(), {
        "ce": 0.25 * sup,
        "corr_x": 0.25 * corr_x,
        "unsup_s": 0.125 * _ce_mean(s_logits, y_prop, m_prop, ign),
        "unsup_kl": 0.125 * (kl * kept).sum() / (~ign).sum(),
        "unsup_fp": 0.125 * _ce_mean(n(weak["fp"])[B:], y_w, weak_kept, ign_w),
        "unsup_corr": 0.0625 * (_ce_mean(s_corr, y_prop, m_prop, ign)
                                + _ce_mean(corr[B:], y_w, weak_kept, ign_w)),
    }


def test_loss_terms_equal_an_independent_computation():
    student = tiny_model(0)
    ctx, batch, seed = context(student), zipped_batch(0, streams=2), tf.constant([1, 2])
    ignore2 = np.zeros((B, H, W), bool)
    ignore2[:, :, -6:] = True  # the mix batch padded on the right
    batch["u_ignore2"] = tf.constant(ignore2)
    method = build_method("corrmatch", {"num_regions": REGIONS, "corr_channels": 8})
    assert method.teacher == "self" and method.unlabeled_streams == 2
    method.build(ctx)
    assert method.state() == {"threshold": method.threshold}
    assert method.trainable_layers() == [method.head]
    calls = _recording(method)
    restore = snapshot(student)
    terms = method.loss_terms(ctx, batch, seed)
    restore()
    assert len(calls) == 2
    tau, propagated, want = _expected(student, ctx, batch, *calls, seed)
    assert propagated  # the case exercises the propagation
    np.testing.assert_allclose(method.threshold.numpy(), tau, rtol=1e-6)
    assert sorted(terms) == sorted(want)
    for name, value in want.items():
        np.testing.assert_allclose(float(terms[name]), value, rtol=2e-4, err_msg=name)


def test_two_steps_train_the_student_and_the_correlation_head():
    student = tiny_model(0)
    ctx = context(student)
    method = build_method("corrmatch", {"num_regions": REGIONS, "corr_channels": 8})
    method.build(ctx)
    variables = student.trainable_variables + method.head.trainable_variables
    start = [v.numpy() for v in variables]
    train_two_steps(method, ctx, zipped_batch(1, streams=2), variables)
    moved = [not np.array_equal(a, v.numpy()) for a, v in zip(start, variables)]
    n = len(student.trainable_variables)
    assert any(moved[:n]) and all(moved[n:])
    assert method.threshold.numpy() != np.float32(0.85)  # updated at every step


def test_threshold_and_head_are_in_the_checkpoint(tmp_path):
    from iseg.semi.engine import SemiEngine
    from iseg.training.config import TrainConfig

    student = tiny_model(0)
    cfg = TrainConfig(model="demo_tiny", semi="corrmatch", labeled_fraction=0.25, steps=4,
                      semi_options={"corr_channels": 8})
    engine = SemiEngine(cfg, META, student, "minus_one_to_one")
    method = engine.method
    assert float(method.threshold.numpy()) == np.float32(0.85)
    assert engine.extra_trainable_variables() == method.head.trainable_variables
    method.threshold.assign(0.9123)
    saved = [v.numpy() for v in method.head.variables]
    path = tf.train.Checkpoint(**engine.checkpoint_objects()).save(str(tmp_path / "ckpt"))
    method.threshold.assign(0.1)
    for v in method.head.variables:
        v.assign(tf.zeros_like(v))
    tf.train.Checkpoint(**engine.checkpoint_objects()).restore(path).assert_consumed()
    assert method.threshold.numpy() == np.float32(0.9123)
    for a, v in zip(saved, method.head.variables):
        np.testing.assert_array_equal(a, v.numpy())


def test_the_correlation_head_trains_at_the_head_learning_rate():
    from iseg.semi.engine import SemiEngine
    from iseg.training.config import TrainConfig, optimizer_for

    student = tiny_model(0)
    cfg = TrainConfig(model="demo_tiny", semi="corrmatch", labeled_fraction=0.25, steps=4,
                      semi_options={"corr_channels": 8}, lr=0.1, momentum=0.0,
                      head_lr_multiplier=10.0)
    engine = SemiEngine(cfg, META, student, "minus_one_to_one")
    extra = engine.extra_trainable_variables()
    optimizer = optimizer_for(cfg, student, extra, engine.extra_backbone_variables())
    variables = student.trainable_variables + extra
    before = [v.numpy() for v in variables]
    optimizer.apply([tf.ones_like(v) for v in variables], variables)
    backbone = {id(v) for v in student.backbone.trainable_variables}
    head = {id(v) for v in engine.method.head.trainable_variables}
    assert backbone and head and not backbone & head
    for v, b in zip(variables, before):
        np.testing.assert_allclose(b - v.numpy(), 0.1 if id(v) in backbone else 1.0,
                                   rtol=1e-5, err_msg=v.path)
