"""CorrMatch (Sun et al., CVPR 2024; BBBBchan/CorrMatch @44f9f9e, corrmatch.py).

UniMatch's pipeline with ONE strong view, plus a correlation head and label propagation.
One model, no EMA teacher. Per step, with labeled x, unlabeled u (weak crop) and a second
unlabeled batch u2 (the CutMix source):

1. the model in inference mode, without gradient, predicts u2 (targets inside the box);
2. one strong view s of u (`augment.simclr_strong`) with a CutMix box (p 0.5) filled with
   a strong view of u2; targets, confidences and ignore masks move with the box;
3. one training forward of [x; u] with the feature-perturbation (FP) head call
   (`unimatch.decode_with_fp`) and the correlation head (`CorrelationHead`) on C5 and the
   clean logits: propagated logits (upsampled) and the affinity A;
4. the adaptive threshold tau (`pseudo.update_adaptive_threshold`, kept in the
   checkpoint) is updated from the weak prediction of u before it filters anything;
5. 128 random rows of A (the u part) give regions (`propagation`); the cut-mixed targets
   are propagated over them (`propagation.propagate`);
6. one training forward of s with the correlation head.

Losses (each divided by the non-ignored pixel count, "non_ignored"):
  L_x, L_xc   the model's supervised terms on x; CE (or the model's OHEM) of the
              propagated logits of x;
  L_s         CE of s to the propagated targets over the propagated mask;
  L_kl        KL(p_w || p_s) over the thresholded cut-mixed mask, p_w the weak
              prediction of u NOT cut-mixed (as coded);
  L_fp        CE of the FP head's output to the weak targets (conf >= tau);
  L_uc        (CE of s's propagated logits over the propagated mask + CE of u's
              propagated logits to the weak targets over conf >= tau) / 2.
Total ``(0.5 L_x + 0.5 L_xc + 0.25 (L_s + L_kl + L_fp + L_uc)) / 2``: every term is
returned already multiplied by its weight and the 1/2, except the weight decay "l2"
(`--l2`), unscaled (the official code decays in the optimizer) and over the kernels of
the correlation head as well as the model's. As coded, tau's class statistic
reads the weak prediction of u with the CUT-MIXED ignore mask.
"""

import tensorflow as tf

from iseg.layers.correlation import CorrelationHead
from iseg.ops import resize, spatial_shape
from iseg.semi import augment, mixing, propagation, pseudo
from iseg.semi.methods.base import SemiMethod
from iseg.semi.methods.unimatch import decode_with_fp


class CorrMatch(SemiMethod):
    name = "corrmatch"
    teacher = "self"
    unlabeled_streams = 2
    defaults = {"thresh_init": 0.85, "thresh_momentum": 0.999, "num_regions": 128,
                "fp_dropout": 0.5, "cutmix_p": 0.5, "corr_channels": 256,
                "corr_dropout": 0.1, "corr_endpoint": "c5"}
    choices = {"corr_endpoint": ("c2", "c3", "c4", "c5")}

    def build(self, ctx):
        o = self.options
        self.head = CorrelationHead(ctx.num_classes, channels=o["corr_channels"],
                                    dropout=o["corr_dropout"], name="corrmatch_head")
        feature = ctx.encode(tf.zeros([1, 64, 64, 3]), training=False)[o["corr_endpoint"]]
        self.head.build((None, None, None, feature.shape[-1]))
        self.threshold = tf.Variable(float(o["thresh_init"]), trainable=False,
                                     name="corrmatch_threshold",
                                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def trainable_layers(self):
        return [self.head]

    def state(self):
        return {"threshold": self.threshold}

    def forward(self, ctx, images, seed=None):
        """A training forward of normalised `images`: dict with the model's ``outputs``,
        the correlation head's propagated logits ``corr`` (image size), its ``affinity``
        and the ``feature_size`` (h, w) it is over; with `seed`, ``fp``: the FP head's
        logits."""
        size = spatial_shape(images)
        endpoints = ctx.encode(images, training=True)
        result = {}
        if seed is None:
            result["outputs"] = ctx.decode(endpoints, size, training=True)
        else:
            result["outputs"], result["fp"] = decode_with_fp(
                ctx, endpoints, size, self.options["fp_dropout"], seed)
        feature = endpoints[self.options["corr_endpoint"]]
        corr, result["affinity"] = self.head(feature, result["outputs"]["logits"],
                                             training=True)
        result["corr"] = resize(corr, size, align_corners=True)
        result["feature_size"] = spatial_shape(feature)
        return result

    def targets(self, ctx, batch, weak_logits, affinity, feature_size, seeds):
        """(strong image, weak targets, propagated cut-mixed targets, tau): `affinity` the
        correlation head's over `feature_size` for the unlabeled images."""
        o = self.options
        u, u2 = batch["u_image"], batch["u_image2"]
        height, width = spatial_shape(u)
        mix_label, mix_conf = pseudo.pseudo_labels(tf.nn.softmax(ctx.teacher(ctx.normalize(u2))))
        label, conf = pseudo.pseudo_labels(tf.nn.softmax(weak_logits))
        weak = {"label": label, "conf": conf, "ignore": batch["u_ignore"]}
        mix = {"label": mix_label, "conf": mix_conf, "ignore": batch["u_ignore2"]}
        box = mixing.unimatch_box(seeds[0], tf.shape(u)[0], height, width, p=o["cutmix_p"])
        mixed = mixing.paste(box, {"image": augment.simclr_strong(u, seeds[1]), **weak},
                             {"image": augment.simclr_strong(u2, seeds[2]), **mix})
        tau = pseudo.update_adaptive_threshold(self.threshold, label, conf, mixed["ignore"],
                                               ctx.num_classes, o["thresh_momentum"])
        rows, _ = propagation.query_rows(affinity, seeds[3], o["num_regions"])
        regions = propagation.row_regions(rows, feature_size, (height, width))
        mixed["label"], mixed["propagated"] = propagation.propagate(
            regions, mixed["label"], mixed["conf"], mixed["ignore"], tau, ctx.num_classes, box)
        return mixed.pop("image"), weak, mixed, tau

    def loss_terms(self, ctx, batch, seed):
        seeds = tf.random.experimental.stateless_split(seed, 5)
        nx = tf.shape(batch["image"])[0]
        w = self.forward(ctx, ctx.normalize(tf.concat([batch["image"], batch["u_image"]], 0)),
                         seeds[0])
        weak_logits = tf.stop_gradient(w["outputs"]["logits"][nx:])
        strong, weak, mixed, tau = self.targets(ctx, batch, weak_logits, w["affinity"][nx:],
                                                w["feature_size"], seeds[1:])
        s = self.forward(ctx, ctx.normalize(strong))
        s_logits = s["outputs"]["logits"]

        def ce(logits, t, mask):
            return pseudo.unsup_ce(logits, t["label"], mask, t["ignore"], "non_ignored")

        kept = pseudo.keep_mask(mixed["conf"], tau, mixed["ignore"])
        weak_kept = pseudo.keep_mask(weak["conf"], tau, weak["ignore"])
        labeled = tf.nest.map_structure(lambda t: t[:nx], w["outputs"])
        terms = ctx.supervised(batch["label"], labeled, 0.25)
        terms["corr_x"] = ctx.supervised(batch["label"], {"logits": w["corr"][:nx]}, 0.25)["ce"]
        terms["unsup_s"] = 0.125 * ce(s_logits, mixed, mixed["propagated"])
        terms["unsup_kl"] = 0.125 * pseudo.kl_loss(s_logits, tf.nn.softmax(weak_logits), kept,
                                                   mixed["ignore"])
        terms["unsup_fp"] = 0.125 * ce(w["fp"][nx:], weak, weak_kept)
        terms["unsup_corr"] = 0.0625 * (ce(s["corr"], mixed, mixed["propagated"])
                                        + ce(w["corr"][nx:], weak, weak_kept))
        return terms
