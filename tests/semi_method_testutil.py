"""A tiny student, its teacher / peer, a zipped batch and a plain training loop for the
semi-supervised method tests (the loss terms checked against NumPy, two steps run)."""

import numpy as np
import tensorflow as tf

from iseg.models.builder import build_model
from iseg.semi.methods.base import SemiContext

K, B, H, W = 3, 2, 32, 32
TINY = dict(depths=(1, 1, 1, 1), widths=(4, 4, 8, 8), stem_width=8, output_stride=16)


def tiny_model(seed):
    """A tiny DeepLabV3+ whose classifier is scaled up, so that its predictions vary
    over the image with confidences spread over (1/K, 1)."""
    tf.keras.utils.set_random_seed(seed)
    model = build_model("deeplabv3plus", "resnet18", K, input_shape=(H, W, 3),
                        backbone_options=TINY, aux_weight=0.0,
                        head_options=dict(channels=8, low_level_channels=4, output_stride=16,
                                          dropout=0.0))
    kernel = model.head.classifier.kernel
    kernel.assign(kernel * 60.0)
    return model


def snapshot(model):
    """A function that puts back `model`'s current weights (training-mode forwards move
    the batch-norm moving statistics)."""
    values = [v.numpy() for v in model.weights]

    def restore():
        for v, value in zip(model.weights, values):
            v.assign(value)

    return restore


def context(student, teacher=None, peer=None):
    return SemiContext(student, normalization="minus_one_to_one", num_classes=K,
                       ignore_label=255, step=tf.constant(0, tf.int64), total_steps=10,
                       teacher_model=teacher, peer_model=peer)


def zipped_batch(seed, streams=1):
    """Labeled images with ground truth (some 255), unlabeled images padded at the bottom."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, K, (B, H, W))
    label[:, :4] = 255
    batch = {"image": rng.uniform(0, 255, (B, H, W, 3)), "label": label}
    for suffix in [""] + ["2"] * (streams - 1):
        ignore = np.zeros((B, H, W), bool)
        ignore[:, -5:] = True
        image = rng.uniform(0, 255, (B, H, W, 3))
        image[ignore] = 0.0
        batch[f"u_image{suffix}"], batch[f"u_ignore{suffix}"] = image, ignore
    return {k: tf.constant(v, tf.bool if v.dtype == bool else
                           tf.int32 if v.dtype.kind == "i" else tf.float32)
            for k, v in batch.items()}


def softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def pixel_ce(logits, target):
    """NumPy per-pixel CE [B, H, W] of logits [B, H, W, K] against int targets."""
    p = softmax(np.asarray(logits, np.float64))
    target = np.where(np.asarray(target) < K, target, 0)
    return -np.log(np.take_along_axis(p, target[..., None], -1)[..., 0])


def train_two_steps(method, ctx, batch, variables):
    """Two SGD steps on the sum of the method's terms; returns the totals."""
    optimizer = tf.keras.optimizers.SGD(0.01)
    totals = []
    for step in range(2):
        with tf.GradientTape() as tape:
            terms = method.loss_terms(ctx, batch, tf.constant([step, 7]))
            total = tf.add_n(list(terms.values()))
        grads = tape.gradient(total, variables)
        assert all(g is not None for g in grads)
        optimizer.apply_gradients(zip(grads, variables))
        totals.append(float(total))
    assert np.all(np.isfinite(totals))
    return totals
