"""UniMatch (Yang et al., CVPR 2023; LiheYoung/UniMatch @0324f3d, unimatch.py).

One model, no EMA teacher. Per step, with labeled x, unlabeled u (weak crop) and a second
unlabeled batch u2 (the CutMix source):

1. the model in inference mode, without gradient, predicts u2 (targets inside the boxes);
2. two strong views s1, s2 of u (`augment.simclr_strong`: colour jitter, grayscale, blur),
   each with a CutMix box (`mixing.unimatch_box`, p 0.5) filled with a strong view of u2;
   the targets, confidences and ignore masks move with the boxes;
3. one training forward of [x; u]: the backbone once, the head on the endpoints and on a
   copy whose head endpoints went through Dropout2d(0.5) (feature perturbation, one head
   call on the doubled batch, as the official `need_fp` forward does); the weak pseudo-
   labels of u are this forward's prediction, detached (training mode, as coded);
4. one training forward of [s1; s2].

Losses: L_x = the model's own supervised terms (CE or OHEM, aux, CAR, SAR); L_s1, L_s2 =
CE to the cut-mixed weak targets over pixels with conf >= `threshold` that are not
ignored, divided by the non-ignored pixel count ("non_ignored"); L_fp = the same on the
perturbed head's output against the weak targets. Total
``(L_x + w_s L_s1 + w_s L_s2 + w_fp L_fp) / 2`` with w_s 0.25, w_fp 0.5: every term is
returned already multiplied by its weight and the 1/2, except the model's weight decay
"l2" (`--l2`): the official code decays in the optimizer, outside this scaling.
"""

import tensorflow as tf

from iseg.ops import spatial_shape
from iseg.semi import augment, mixing, pseudo
from iseg.semi.methods.base import SemiMethod


def channel_dropout(x, rate, seed):
    """Dropout2d: whole channels of each image zeroed with probability `rate`, the rest
    scaled by 1 / (1 - rate)."""
    shape = tf.stack([tf.shape(x)[0], 1, 1, tf.shape(x)[-1]])
    keep = tf.random.stateless_uniform(shape, seed) >= rate
    return x * tf.cast(keep, x.dtype) / tf.cast(1.0 - rate, x.dtype)


def forward_with_fp(ctx, images, rate, seed):
    """(outputs, fp_logits): the student's training output on normalised `images` and the
    logits of its head on the same backbone endpoints with the head's endpoints through
    `channel_dropout` (one head call on the doubled batch)."""
    endpoints = ctx.encode(images, training=True)
    return decode_with_fp(ctx, endpoints, spatial_shape(images), rate, seed)


def decode_with_fp(ctx, endpoints, size, rate, seed):
    """`forward_with_fp` on given backbone `endpoints` (logits resized to `size`), for
    methods that read the endpoints too (CorrMatch's correlation head)."""
    n = tf.shape(next(iter(endpoints.values())))[0]
    keys = set(ctx.head_endpoints())
    seeds = tf.random.experimental.stateless_split(seed, max(1, len(endpoints)))
    doubled = {}
    for i, (key, value) in enumerate(sorted(endpoints.items())):
        other = channel_dropout(value, rate, seeds[i]) if key in keys else value
        doubled[key] = tf.concat([value, other], axis=0)
    out = ctx.decode(doubled, size, training=True)
    clean = tf.nest.map_structure(lambda t: t[:n], out)
    return clean, out["logits"][n:]


def strong_views(images, seed):
    """Two independent strong views (`augment.simclr_strong`) of a batch."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    return augment.simclr_strong(images, seeds[0]), augment.simclr_strong(images, seeds[1])


class UniMatch(SemiMethod):
    name = "unimatch"
    teacher = "self"
    unlabeled_streams = 2
    defaults = {"threshold": 0.95, "weight_strong": 0.25, "weight_fp": 0.5,
                "fp_dropout": 0.5, "cutmix_p": 0.5}

    def loss_terms(self, ctx, batch, seed):
        o = self.options
        seeds = tf.random.experimental.stateless_split(seed, 5)
        x, u, u2 = batch["image"], batch["u_image"], batch["u_image2"]
        nx, nu = tf.shape(x)[0], tf.shape(u)[0]
        height, width = tf.shape(u)[1], tf.shape(u)[2]

        mix_label, mix_conf = pseudo.pseudo_labels(tf.nn.softmax(ctx.teacher(ctx.normalize(u2))))
        s1, s2 = strong_views(u, seeds[0])
        m1, m2 = strong_views(u2, seeds[1])

        outputs, fp_logits = forward_with_fp(
            ctx, ctx.normalize(tf.concat([x, u], 0)), o["fp_dropout"], seeds[2])
        labeled = tf.nest.map_structure(lambda t: t[:nx], outputs)
        weak_label, weak_conf = pseudo.pseudo_labels(tf.nn.softmax(outputs["logits"][nx:]))
        weak = {"label": weak_label, "conf": weak_conf, "ignore": batch["u_ignore"]}
        mix = {"label": mix_label, "conf": mix_conf, "ignore": batch["u_ignore2"]}

        view1, target1 = self._cutmix(s1, m1, weak, mix, seeds[3], height, width)
        view2, target2 = self._cutmix(s2, m2, weak, mix, seeds[4], height, width)
        strong_logits = ctx.student(ctx.normalize(tf.concat([view1, view2], 0)))["logits"]
        losses = []
        for logits, target in ((strong_logits[:nu], target1), (strong_logits[nu:], target2),
                               (fp_logits[nx:], weak)):
            keep = pseudo.keep_mask(target["conf"], o["threshold"], target["ignore"])
            losses.append(pseudo.unsup_ce(logits, target["label"], keep, target["ignore"],
                                          "non_ignored"))
        terms = ctx.supervised(batch["label"], labeled, 0.5)
        terms["unsup_s1"] = 0.5 * o["weight_strong"] * losses[0]
        terms["unsup_s2"] = 0.5 * o["weight_strong"] * losses[1]
        terms["unsup_fp"] = 0.5 * o["weight_fp"] * losses[2]
        return terms

    def _cutmix(self, strong, strong_mix, weak, mix, seed, height, width):
        """(image, targets): the strong view with a CutMix box (p `cutmix_p`) filled from
        the mix batch's strong view, and the weak targets with the same box from the mix
        batch's."""
        box = mixing.unimatch_box(seed, tf.shape(strong)[0], height, width,
                                  p=self.options["cutmix_p"])
        mixed = mixing.paste(box, {"image": strong, **weak}, {"image": strong_mix, **mix})
        return mixed.pop("image"), mixed
