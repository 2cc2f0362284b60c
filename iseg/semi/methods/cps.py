"""CPS with CutMix (Chen et al., "Cross Pseudo Supervision", CVPR 2021; official code
charlesCXK/TorchSemiSeg, ``exp.*/*.CPS+CutMix``).

Two networks of the same architecture (the student and its peer, whose head starts from a
different initialisation) supervise each other. Two unlabeled batches u0, u1 are mixed by
CPS's 3-box XOR mask M (`iseg.semi.mixing.cps_box_mask`): ``x = u0 (1 - M) + u1 M``. Each
network's hard pseudo-label of x is the argmax of its predictions on u0 and u1 mixed by M
(no gradient; training mode, as the official code predicts under ``no_grad`` without
``eval()``). No threshold, no colour augmentation:

    L = L_sup(student) + L_sup(peer) + weight * (CE(f1(x), y2) + CE(f2(x), y1)),

each CE the mean over the non-padded pixels. The official code's two SGD optimisers with
one schedule are one optimizer over both networks' variables here. VOC weight 1.0,
Cityscapes 5.0.
"""

import tensorflow as tf

from iseg.semi import mixing, pseudo
from iseg.semi.methods.base import SemiMethod


class CPS(SemiMethod):
    name = "cps"
    teacher = "peer"
    unlabeled_streams = 2
    defaults = {"weight": 1.0}

    def loss_terms(self, ctx, batch, seed):
        u0, u1 = batch["u_image"], batch["u_image2"]
        shape = tf.shape(u0)
        mask = mixing.cps_box_mask(seed, shape[0], shape[1], shape[2])
        mixed = mixing.paste(mask, {"image": u0, "ignore": batch["u_ignore"]},
                             {"image": u1, "ignore": batch["u_ignore2"]})
        x0, x1 = ctx.normalize(u0), ctx.normalize(u1)

        def pseudo_label(network):
            first, second = (pseudo.pseudo_labels(tf.nn.softmax(network(x)["logits"]))[0]
                             for x in (x0, x1))
            return tf.where(mask, second, first)

        y1, y2 = pseudo_label(ctx.student), pseudo_label(ctx.peer)
        x = ctx.normalize(mixed["image"])
        cross = sum(pseudo.unsup_ce(network(x)["logits"], target, ~mixed["ignore"],
                                    mixed["ignore"], normaliser="non_ignored")
                    for network, target in ((ctx.student, y2), (ctx.peer, y1)))
        x_l = ctx.normalize(batch["image"])
        terms = dict(ctx.supervised(batch["label"], ctx.student(x_l)))
        peer = ctx.peer_model.loss_terms(batch["label"], ctx.peer(x_l), training=True)
        terms.update({f"peer_{k}": v for k, v in peer.items()})
        terms["cps"] = float(self.options["weight"]) * cross
        return terms
