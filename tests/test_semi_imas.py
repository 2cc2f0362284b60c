"""iMAS: the loss terms on a tiny model equal a NumPy computation for fixed seeds (with and
without the hardness-triggered CutMix); two training steps run."""

import numpy as np
import tensorflow as tf

from iseg.semi import augment, mixing, pseudo
from iseg.semi.methods.imas import IMAS
from semi_method_testutil import B, H, W, context, pixel_ce, snapshot, softmax, tiny_model
from semi_method_testutil import train_two_steps, zipped_batch

TAU = 0.4


def _expected(ctx, student, teacher, batch, seed, weight):
    """(L_sup, weight * L_u, triggered) recomputed: hardness from the student (inference
    mode) and teacher on the weak view, per-image losses weighted by h in NumPy."""
    aug_seed, mix_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    weak, ignore = batch["u_image"], batch["u_ignore"]
    x_w = ctx.normalize(weak)
    t_probs = softmax(teacher(x_w, training=False).numpy().astype(np.float64))
    s_probs = softmax(student(x_w, training=False).numpy().astype(np.float64))
    h = pseudo.hardness(tf.constant(s_probs, tf.float32), tf.constant(t_probs, tf.float32),
                        TAU, ignore).numpy()
    label, conf = t_probs.argmax(-1), t_probs.max(-1)
    strong = augment.hardness_mix(augment.random_intensity(weak, aug_seed, augment.IMAS),
                                  weak, tf.constant(h))
    target = {"image": weak, "label": tf.constant(label, tf.int32),
              "conf": tf.constant(conf, tf.float32), "ignore": ignore}
    cutmix, params = mixing.imas_mix(mix_seed, target, tf.constant(h))
    images = tf.concat([batch["image"], weak, cutmix["image"], strong], 0)
    logits = student(ctx.normalize(images), training=True)["logits"].numpy()

    def loss(lg, lab, cf, ign):
        keep = (cf >= TAU) & ~ign
        per_image = (pixel_ce(lg, lab) * keep).mean((1, 2))
        return (per_image * h).mean()

    intensity = loss(logits[3 * B:], label, conf, ignore.numpy())
    cm = loss(logits[2 * B:3 * B], *(cutmix[k].numpy() for k in ("label", "conf", "ignore")))
    trigger = bool(params["trigger"])
    unsup = 0.5 * (intensity + cm) if trigger else intensity
    labeled = batch["label"].numpy() != 255
    sup = (pixel_ce(logits[:B], batch["label"].numpy()) * labeled).sum() / labeled.sum()
    return sup, weight * unsup, trigger, h


def test_imas_terms_equal_numpy():
    student, teacher = tiny_model(0), tiny_model(0)  # teacher = student: h > 0
    ctx, batch = context(student, teacher), zipped_batch(0)
    method = IMAS({"tau": TAU})
    assert method.teacher == "ema" and method.options["weight"] == 3.0
    triggers, restore = set(), snapshot(student)
    for s in range(4):
        seed = tf.constant([s, 5])
        restore()
        sup, unsup, trigger, h = _expected(ctx, student, teacher, batch, seed, 3.0)
        assert h.min() > 0
        restore()
        terms = method.loss_terms(ctx, batch, seed)
        np.testing.assert_allclose(float(terms["ce"]), sup, rtol=1e-4)
        np.testing.assert_allclose(float(terms["unsup"]), unsup, rtol=1e-4)
        triggers.add(trigger)
        if triggers == {True, False}:
            break
    assert triggers == {True, False}


def test_imas_two_steps():
    student, teacher = tiny_model(0), tiny_model(0)
    before = [v.numpy() for v in student.trainable_variables]
    train_two_steps(IMAS({"tau": TAU}), context(student, teacher), zipped_batch(1),
                    student.trainable_variables)
    after = student.trainable_variables
    assert any(not np.array_equal(a, v.numpy()) for a, v in zip(before, after))
    assert H == W == 32


def test_imas_rows_use_the_published_recipe():
    from test_configs import CONFIGS, load

    rows = sorted((CONFIGS / "semi").glob("*/imas_r50_*.cfg"))
    assert len(rows) == 7
    labeled = {"1_16": (662, 186), "1_8": (1323, 372), "1_4": (2646, 744), "1_2": (None, 1488)}
    for path in rows:
        cfg, voc = load(path), path.parent.name == "voc"
        part = path.stem.split("_", 2)[2]
        batch = 16 if voc else 8
        unlabeled = (10582 if voc else 2975) - labeled[part][0 if voc else 1]
        steps = unlabeled // batch * (80 if voc else 240)  # epochs of the unlabeled set
        assert (cfg.semi, cfg.semi_options, cfg.model) == (
            "imas", {} if voc else {"tau": 0.7}, "deeplabv3plus_resnet50_d8"), path
        assert cfg.head_options["output_stride"] == 8, path
        assert (cfg.batch_size, cfg.unlabeled_batch_size, cfg.lr, cfg.steps, cfg.l2) == (
            batch, batch, 0.001 if voc else 0.01, steps, 5e-5 if voc else 2.5e-4), path
        assert cfg.aux_weight == (0.0 if voc else 0.4), path
        assert cfg.crop_size == ((513, 513) if voc else (769, 769)), path
