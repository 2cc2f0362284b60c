"""UniMatch: the loss composition against a NumPy loop on a per-pixel linear model, and
the feature-perturbation forward of a real model."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from iseg.semi import mixing
from iseg.semi.methods import unimatch
from iseg.semi.methods.base import SemiContext
from iseg.training.config import DatasetMeta, TrainConfig, build_model_from_config

K = 3
W = np.array([[2.0, -1.0, 0.5], [-1.5, 1.0, 2.0], [0.5, 1.5, -2.0]], np.float32)


class _PixelModel(keras.Model):
    """logits = normalised pixel @ W; encode/decode around the same map."""

    def call(self, x, training=None):
        logits = tf.einsum("bhwc,ck->bhwk", x, W)
        return {"logits": logits} if training else logits

    def encode(self, x, training=None):
        return {"c5": x, "c2": 2.0 * x}

    def decode(self, endpoints, size, training=None):
        return self(endpoints["c5"], training=training)

    def head_endpoints(self):
        return ["c5"]

    def loss_terms(self, labels, outputs, training=True):
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.maximum(labels, 0) % K, logits=outputs["logits"])
        valid = tf.cast(labels != 255, tf.float32)
        return {"ce": tf.reduce_sum(ce * valid) / tf.reduce_sum(valid)}


def _ce(logits, label):
    z = logits - logits.max()
    return float(np.log(np.exp(z).sum()) - z[label])


def _softmax(logits):
    e = np.exp(logits - logits.max())
    return e / e.sum()


def test_loss_composition_equals_a_numpy_loop(monkeypatch):
    rng = np.random.default_rng(0)
    b, h, w = 2, 4, 5
    x, u, u2 = (rng.uniform(0, 255, (b, h, w, 3)).astype(np.float32) for _ in range(3))
    label = rng.integers(0, K, (b, h, w)).astype(np.int32)
    label[0, 0, :] = 255
    ign, ign2 = rng.uniform(size=(2, b, h, w)) < 0.2
    box1, box2 = rng.uniform(size=(2, b, h, w)) < 0.4
    monkeypatch.setattr(unimatch, "strong_views", lambda im, seed: (0.5 * im, 255.0 - im))
    boxes = iter([box1, box2])
    monkeypatch.setattr(mixing, "unimatch_box", lambda *a, **k: tf.constant(next(boxes)))
    tau = 0.6
    method = unimatch.UniMatch({"threshold": tau, "fp_dropout": 0.0})
    ctx = SemiContext(_PixelModel(), normalization="minus_one_to_one", num_classes=K,
                      ignore_label=255, step=tf.constant(0, tf.int64), total_steps=1)
    batch = {"image": x, "label": label, "u_image": u, "u_ignore": ign, "u_image2": u2,
             "u_ignore2": ign2}
    terms = method.loss_terms(ctx, {k: tf.constant(v) for k, v in batch.items()},
                              tf.constant([1, 2], tf.int32))

    def logits(img):  # the model, one pixel at a time
        return (img / 127.5 - 1.0) @ W

    def target(img, i, y, x_):
        p = _softmax(logits(img[i, y, x_]))
        return int(p.argmax()), float(p.max())

    lx = np.mean([_ce(logits(x[i, y, c]), label[i, y, c]) for i in range(b) for y in range(h)
                  for c in range(w) if label[i, y, c] != 255])
    sums, counts = np.zeros(3), np.zeros(3)
    for i in range(b):
        for y in range(h):
            for c in range(w):
                weak = (*target(u, i, y, c), ign[i, y, c])
                mix = (*target(u2, i, y, c), ign2[i, y, c])
                views = ((box1, 0.5 * u, 0.5 * u2), (box2, 255.0 - u, 255.0 - u2))
                for k, (box, view, view_mix) in enumerate(views):
                    inside = box[i, y, c]
                    cls, conf, ignored = mix if inside else weak
                    pixel = view_mix[i, y, c] if inside else view[i, y, c]
                    counts[k] += not ignored
                    if conf >= tau and not ignored:
                        sums[k] += _ce(logits(pixel), cls)
                cls, conf, ignored = weak
                counts[2] += not ignored
                if conf >= tau and not ignored:
                    sums[2] += _ce(logits(u[i, y, c]), cls)
    ls1, ls2, lfp = sums / counts
    assert sorted(terms) == ["ce", "unsup_fp", "unsup_s1", "unsup_s2"]
    want = {"ce": lx / 2, "unsup_s1": 0.25 * ls1 / 2, "unsup_s2": 0.25 * ls2 / 2,
            "unsup_fp": 0.5 * lfp / 2}
    for key, value in want.items():
        assert float(terms[key]) == pytest.approx(value, rel=1e-5), key
    assert 0 < sums[0] and sums[2] < counts[2] * 10  # (some pixels pass the threshold)


def test_feature_perturbation_forward_of_a_real_model():
    meta = DatasetMeta(num_classes=3, class_names=list("abc"), palette=[(0, 0, 0)] * 3)
    model = build_model_from_config(TrainConfig(  # demo_tiny without the head's dropout
        head="deeplabv3plus", backbone="resnet18", aux_weight=0.0,
        backbone_options={"depths": (1, 1, 1, 1), "widths": (8, 8, 16, 16), "stem_width": 8},
        head_options={"channels": 16, "low_level_channels": 8, "dropout": 0.0}), meta)
    ctx = SemiContext(model, normalization="minus_one_to_one", num_classes=3,
                      ignore_label=255, step=tf.constant(0, tf.int64), total_steps=1)
    images = tf.random.stateless_uniform([2, 32, 32, 3], [0, 1], -1.0, 1.0)
    seed = tf.constant([3, 4], tf.int32)
    clean, fp = unimatch.forward_with_fp(ctx, images, 0.0, seed)
    plain = model(images, training=True)["logits"]
    np.testing.assert_allclose(clean["logits"], plain, atol=1e-4)
    np.testing.assert_allclose(fp, plain, atol=1e-4)  # rate 0: nothing dropped
    clean, fp = unimatch.forward_with_fp(ctx, images, 0.5, seed)
    assert clean["logits"].shape == fp.shape == (2, 32, 32, 3)
    assert np.abs(np.array(fp) - np.array(clean["logits"])).max() > 1e-3
    x = tf.ones([2, 1, 1, 8])
    dropped = unimatch.channel_dropout(x, 0.5, seed).numpy()
    assert set(np.unique(dropped)) <= {0.0, 2.0} and 0 < (dropped == 0).sum() < 16
