"""CW-BASS (confidence-weighted, boundary-aware semi-supervised segmentation), as its
released code does it (psychofict/CW-BASS main.py; docs/semi_supervised.md).

One online mean-teacher loop (the paper's two stages are not in the code):
- teacher: an EMA copy of the student with a fixed alpha (0.999) on the weights, batch-norm
  statistics copied from the student;
- the teacher (inference mode) and the student see the same unlabeled tensor (no strong
  augmentation in the online loop as coded);
- pseudo-labels: the teacher's argmax; kept where conf > tau, tau the dynamic threshold
  clip(0.6 / (1 + exp(-0.5 (cbar - 0.5))), 0.3, 0.8) of the batch-mean confidence;
- L_u = sum_valid conf^gamma CE / #valid + 0.5 * (CE over the Sobel boundary of the
  one-hot pseudo-label and valid) / #(boundary and valid), gamma = 1;
- optional confidence decay (off): conf <- 0.9 conf before the weighting;
- L = L_sup + lambda_u * r_t * L_u, r_t = min(1, t / ramp_steps), the linear ramp over the
  first 5 epochs; `ramp_steps` None: the first 5/80 of the run (VOC's 5 of 80 epochs).
The labeled and unlabeled batches go through the student in separate forward passes, as
coded (separate batch-norm statistics).
"""

import tensorflow as tf

from iseg.semi import pseudo
from iseg.semi.methods.base import SemiMethod


class CWBASS(SemiMethod):
    name = "cwbass"
    teacher = "ema"
    defaults = {
        "ema_alpha": 0.999,
        "gamma": 1.0,
        "base_threshold": 0.6,
        "beta": 0.5,
        "boundary_weight": 0.5,
        "lambda_u": 1.0,
        "ramp_steps": None,
        "confidence_decay": False,
        "decay_factor": 0.9,
    }

    def ema(self):
        """A fixed alpha on the weights; batch-norm statistics copied (as coded)."""
        return dict(alpha=float(self.options["ema_alpha"]), ramp=False, copy_bn=True)

    def ramp(self, step, total_steps):
        """r_t = min(1, t / ramp_steps) (1 when ramp_steps is 0)."""
        ramp_steps = self.options["ramp_steps"]
        if ramp_steps is None:
            ramp_steps = round(total_steps * 5 / 80)
        if ramp_steps <= 0:
            return tf.constant(1.0)
        return tf.minimum(1.0, tf.cast(step, tf.float32) / float(ramp_steps))

    def unsupervised(self, ctx, u_image, ignore):
        """(L_cw, L_b): the two parts of L_u on one unlabeled batch (unweighted)."""
        o = self.options
        x = ctx.normalize(u_image)
        label, conf = pseudo.pseudo_labels(tf.nn.softmax(ctx.teacher(x), axis=-1))
        boundary = pseudo.sobel_boundary(label, ctx.num_classes)
        tau = pseudo.dynamic_threshold(conf, ignore, o["base_threshold"], o["beta"])
        valid = tf.logical_and(conf > tau, tf.logical_not(ignore))
        if o["confidence_decay"]:
            conf = conf * float(o["decay_factor"])
        logits = ctx.student(x, training=True)["logits"]
        return pseudo.cwbass_terms(logits, label, conf, valid, boundary, o["gamma"])

    def loss_terms(self, ctx, batch, seed):
        o = self.options
        terms = ctx.supervised(batch["label"],
                               ctx.student(ctx.normalize(batch["image"]), training=True))
        weighted, edge = self.unsupervised(ctx, batch["u_image"], batch["u_ignore"])
        w = float(o["lambda_u"]) * self.ramp(ctx.step, ctx.total_steps)
        terms["unsup_cw"] = w * weighted
        terms["unsup_boundary"] = w * float(o["boundary_weight"]) * edge
        return terms
