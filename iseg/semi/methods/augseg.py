"""AugSeg (Zhao et al., "Augmentation Matters", CVPR 2023; official code ZhenZHAO/AugSeg).

A mean teacher (EMA of weights and batch-norm statistics, ``alpha_t = min(1 - 1/(t+1),
ema_alpha)``) predicts on the weak unlabeled view; the student learns from the strong view
(`iseg.semi.augment.random_intensity` with AugSeg's 11 ops, 1..3 of them) after the
confidence-adaptive label-injecting CutMix (`iseg.semi.mixing.augseg_mix`):

    L = L_sup + weight * sum_kept CE(student(x_s), y_t) / (B H W),  kept: conf >= tau

(the mean over all unlabeled pixels, as ``compute_unsupervised_loss_by_threshold``; padded
pixels never count). Labeled and strong images go through the student in one forward pass
(shared batch statistics), as the official code concatenates them. Cityscapes recipe:
``tau=-0.7`` (no threshold), weight 2 (R50) / 1 (R101), ``ema_alpha=0.996``.
"""

import tensorflow as tf

from iseg.semi import augment, mixing, pseudo
from iseg.semi.methods.base import SemiMethod


def forward_split(ctx, *images):
    """One training-mode student forward on the concatenated images (float [0, 255],
    normalised here): shared batch statistics, as the official code's ``torch.cat``.
    Returns the output dict of each input, split back along the batch axis."""
    sizes = tf.stack([tf.shape(x)[0] for x in images])
    out = ctx.student(ctx.normalize(tf.concat(images, 0)), training=True)
    parts = [{} for _ in images]
    for key, value in out.items():
        values = value if isinstance(value, list) else [value]
        pieces = [tf.split(v, sizes, num=len(images)) for v in values]
        for i, part in enumerate(parts):
            part[key] = [p[i] for p in pieces] if isinstance(value, list) else pieces[0][i]
    return parts


class AugSeg(SemiMethod):
    name = "augseg"
    teacher = "ema"
    defaults = {"tau": 0.95, "weight": 1.0, "ema_alpha": 0.999}

    def loss_terms(self, ctx, batch, seed):
        aug_seed, mix_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        weak, ignore = batch["u_image"], batch["u_ignore"]
        probs = tf.nn.softmax(ctx.teacher(ctx.normalize(weak)))
        label, conf = pseudo.pseudo_labels(probs)
        strong = augment.random_intensity(weak, aug_seed, augment.AUGSEG)
        mixed, _ = mixing.augseg_mix(
            mix_seed, {"image": strong, "label": label, "conf": conf, "ignore": ignore},
            {"image": batch["image"], "label": batch["label"]},
            mixing.injection_confidence(probs), ctx.ignore_label)
        labeled, unlabeled = forward_split(ctx, batch["image"], mixed["image"])
        terms = dict(ctx.supervised(batch["label"], labeled))
        keep = pseudo.keep_mask(mixed["conf"], float(self.options["tau"]), mixed["ignore"])
        unsup = pseudo.unsup_ce(unlabeled["logits"], mixed["label"], keep,
                                normaliser="all_pixels")
        terms["unsup"] = float(self.options["weight"]) * unsup
        return terms
