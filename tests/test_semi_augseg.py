"""AugSeg: the loss terms on a tiny model equal a NumPy computation for a fixed seed; two
training steps run."""

import numpy as np
import tensorflow as tf

from iseg.semi import augment, mixing
from iseg.semi.methods.augseg import AugSeg
from iseg.semi.methods.base import SemiMethod
from semi_method_testutil import B, H, K, W, context, pixel_ce, softmax, tiny_model
from semi_method_testutil import train_two_steps, zipped_batch


def test_augseg_terms_equal_numpy():
    student, teacher = tiny_model(1), tiny_model(0)  # teacher confidences 0.34 .. 0.8
    ctx, batch, seed = context(student, teacher), zipped_batch(0), tf.constant([3, 4])
    method = AugSeg({"tau": 0.4, "weight": 1.5})
    assert isinstance(method, SemiMethod) and method.teacher == "ema"
    terms = method.loss_terms(ctx, batch, seed)
    assert set(terms) == {"ce", "unsup"}

    aug_seed, mix_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    u = batch["u_image"]
    probs = softmax(teacher(ctx.normalize(u), training=False).numpy().astype(np.float64))
    label, conf = probs.argmax(-1), probs.max(-1)
    entropy = -(probs * np.log(probs + 1e-10)).sum(-1) / np.log(K)
    rho = ((1 - entropy) * conf).mean((1, 2))
    strong = augment.random_intensity(u, aug_seed, augment.AUGSEG)
    mixed, _ = mixing.augseg_mix(
        mix_seed, {"image": strong, "label": tf.constant(label, tf.int32),
                   "conf": tf.constant(conf, tf.float32), "ignore": batch["u_ignore"]},
        {"image": batch["image"], "label": batch["label"]}, tf.constant(rho, tf.float32))
    logits = student(ctx.normalize(tf.concat([batch["image"], mixed["image"]], 0)),
                     training=True)["logits"].numpy()
    keep = (mixed["conf"].numpy() >= 0.4) & ~mixed["ignore"].numpy()
    assert 0.2 < keep.mean() < 0.8
    unsup = (pixel_ce(logits[B:], mixed["label"].numpy()) * keep).sum() / (B * H * W)
    np.testing.assert_allclose(float(terms["unsup"]), 1.5 * unsup, rtol=1e-4)
    labeled = batch["label"].numpy() != 255
    sup = (pixel_ce(logits[:B], batch["label"].numpy()) * labeled).sum() / labeled.sum()
    np.testing.assert_allclose(float(terms["ce"]), sup, rtol=1e-4)


def test_augseg_two_steps_train_the_student_only():
    student, teacher = tiny_model(0), tiny_model(1)
    frozen = [v.numpy() for v in teacher.weights]
    method = AugSeg({"tau": 0.0})
    before = [v.numpy() for v in student.trainable_variables]
    train_two_steps(method, context(student, teacher), zipped_batch(1),
                    student.trainable_variables)
    after = student.trainable_variables
    assert any(not np.array_equal(a, v.numpy()) for a, v in zip(before, after))
    for a, v in zip(frozen, teacher.weights):  # the teacher moves only by the engine's EMA
        np.testing.assert_array_equal(a, v.numpy())


def test_augseg_rows_use_the_published_recipe():
    from test_configs import CONFIGS, load

    rows = sorted((CONFIGS / "semi").glob("*/augseg_r50_*.cfg"))
    assert len(rows) == 7
    labeled = {"1_16": (662, 186), "1_8": (1323, 372), "1_4": (2646, 744), "1_2": (None, 1488)}
    for path in rows:
        cfg, voc = load(path), path.parent.name == "voc"
        part = path.stem.split("_", 2)[2]
        unlabeled = (10582 if voc else 2975) - labeled[part][0 if voc else 1]
        steps = unlabeled // 16 * (80 if voc else 240)  # epochs of the unlabeled set
        options = {} if voc else {"tau": -0.7, "weight": 2.0, "ema_alpha": 0.996}
        assert (cfg.semi, cfg.semi_options, cfg.model) == (
            "augseg", options, "deeplabv3plus_resnet50_d16"), path
        assert (cfg.batch_size, cfg.unlabeled_batch_size, cfg.lr, cfg.steps, cfg.l2) == (
            16, 16, 0.001 if voc else 0.01, steps, 5e-5 if voc else 2.5e-4), path
        assert cfg.crop_size == ((513, 513) if voc else (800, 800)), path
        assert cfg.ohem_thresh == (None if voc else 0.7), path
        assert cfg.labeled_list.endswith(f"/{part}/labeled.txt"), path
