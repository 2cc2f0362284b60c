"""iMAS (Zhao et al., "Instance-specific and Model-adaptive Supervision", CVPR 2023;
official code ZhenZHAO/iMAS).

AugSeg's mean teacher (``ema_alpha`` 0.996) plus the per-image hardness h_i
(`iseg.semi.pseudo.hardness`, larger = easier) of the student (inference mode) and the
teacher on the weak view, with confidence threshold `tau`. h drives three things:

- the intensity view: iMAS's random-intensity set (2 ops of 12, strengths times 0.999)
  mixed with the weak image, ``h_i x_s + (1 - h_i) x_w`` (`iseg.semi.augment`);
- the CutMix of the weak images and teacher targets (`iseg.semi.mixing.imas_mix`):
  triggered with probability mean(h), each image paired with the one of opposite hardness
  rank;
- the loss: each image's mean over its pixels of ``[conf >= tau] CE`` times h_i, averaged
  over the batch; ``L_u = (L_intensity + L_cutmix) / 2`` when the CutMix fired, else
  ``L_intensity``; ``L = L_sup + weight * L_u``.

The student sees [labeled, weak, cutmix, intensity] in one forward pass (the weak output
only shares batch statistics, as in the official code). Difference: the CutMix images are
in that pass in every step (the official code leaves them out when the CutMix did not fire),
which keeps one graph; only their loss is dropped then.
"""

import tensorflow as tf

from iseg.semi import augment, mixing, pseudo
from iseg.semi.methods.augseg import forward_split
from iseg.semi.methods.base import SemiMethod


class IMAS(SemiMethod):
    name = "imas"
    teacher = "ema"
    defaults = {"tau": 0.95, "weight": 3.0, "ema_alpha": 0.996}

    def loss_terms(self, ctx, batch, seed):
        aug_seed, mix_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        tau = float(self.options["tau"])
        weak, ignore = batch["u_image"], batch["u_ignore"]
        x_w = ctx.normalize(weak)
        teacher = tf.nn.softmax(ctx.teacher(x_w))
        hardness = pseudo.hardness(tf.nn.softmax(ctx.student_eval(x_w)), teacher, tau, ignore)
        label, conf = pseudo.pseudo_labels(teacher)
        strong = augment.hardness_mix(augment.random_intensity(weak, aug_seed, augment.IMAS),
                                      weak, hardness)
        target = {"image": weak, "label": label, "conf": conf, "ignore": ignore}
        cutmix, params = mixing.imas_mix(mix_seed, target, hardness)
        labeled, _, cm_out, strong_out = forward_split(
            ctx, batch["image"], weak, cutmix["image"], strong)
        terms = dict(ctx.supervised(batch["label"], labeled))
        weights = hardness[:, None, None]

        def loss(logits, t):
            keep = pseudo.keep_mask(t["conf"], tau, t["ignore"])
            return pseudo.unsup_ce(logits, t["label"], keep, normaliser="all_pixels",
                                   weights=weights)

        intensity = loss(strong_out["logits"], target)
        unsup = tf.where(params["trigger"], 0.5 * (intensity + loss(cm_out["logits"], cutmix)),
                         intensity)
        terms["unsup"] = float(self.options["weight"]) * unsup
        return terms
