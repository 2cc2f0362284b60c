"""CPS + CutMix: the loss terms of the student / peer pair on a tiny model equal a NumPy
computation for a fixed seed; two training steps move both networks."""

import numpy as np
import tensorflow as tf

from iseg.semi import mixing
from iseg.semi.methods.cps import CPS
from semi_method_testutil import B, H, W, context, pixel_ce, snapshot, tiny_model
from semi_method_testutil import train_two_steps, zipped_batch


def test_cps_terms_equal_numpy():
    student, peer = tiny_model(0), tiny_model(1)
    ctx, batch, seed = context(student, peer=peer), zipped_batch(0, streams=2), tf.constant([2, 8])
    method = CPS({"weight": 1.5})
    assert method.teacher == "peer" and method.unlabeled_streams == 2
    restore_s, restore_p = snapshot(student), snapshot(peer)
    terms = method.loss_terms(ctx, batch, seed)
    assert set(terms) == {"ce", "peer_ce", "cps"}
    restore_s()
    restore_p()

    mask = mixing.cps_box_mask(seed, B, H, W).numpy()
    assert 0 < mask.mean() < 1
    u0, u1 = batch["u_image"].numpy(), batch["u_image2"].numpy()
    ignore = np.where(mask, batch["u_ignore2"].numpy(), batch["u_ignore"].numpy())

    def logits(net, x):  # training mode, as the method (and the official code) predicts
        return net(ctx.normalize(tf.constant(x, tf.float32)), training=True)["logits"].numpy()

    # pseudo-labels: each network's predictions on u0 and u1 mixed by the mask, argmax
    y1 = np.where(mask, logits(student, u1).argmax(-1), logits(student, u0).argmax(-1))
    y2 = np.where(mask, logits(peer, u1).argmax(-1), logits(peer, u0).argmax(-1))
    x = np.where(mask[..., None], u1, u0)
    valid = ~ignore
    cross = sum((pixel_ce(logits(net, x), y) * valid).sum() / valid.sum()
                for net, y in ((student, y2), (peer, y1)))
    np.testing.assert_allclose(float(terms["cps"]), 1.5 * cross, rtol=1e-4)
    labeled = batch["label"].numpy() != 255
    for name, net in (("ce", student), ("peer_ce", peer)):
        sup = (pixel_ce(logits(net, batch["image"].numpy()), batch["label"].numpy())
               * labeled).sum() / labeled.sum()
        np.testing.assert_allclose(float(terms[name]), sup, rtol=1e-4)


def test_cps_two_steps_train_both_networks():
    student, peer = tiny_model(0), tiny_model(1)
    variables = student.trainable_variables + peer.trainable_variables
    before = [v.numpy() for v in variables]
    train_two_steps(CPS(), context(student, peer=peer), zipped_batch(1, streams=2), variables)
    moved = [not np.array_equal(a, v.numpy()) for a, v in zip(before, variables)]
    n = len(student.trainable_variables)
    assert any(moved[:n]) and any(moved[n:])


def test_registry_builds_the_three_methods():
    from iseg.semi.methods import build_method, names

    assert {"augseg", "cps", "imas"} <= set(names())
    assert build_method("imas", {"weight": 2.0}).options == {"tau": 0.95, "weight": 2.0,
                                                             "ema_alpha": 0.996}
    assert build_method("augseg").options["ema_alpha"] == 0.999
    assert build_method("cps").options == {"weight": 1.0}


def test_cps_rows_use_the_published_recipe():
    from test_configs import CONFIGS, load

    rows = sorted((CONFIGS / "semi").glob("*/cps_r50_*.cfg"))
    assert len(rows) == 7
    epochs = {"1_16": (32, 128), "1_8": (34, 137), "1_4": (40, 160), "1_2": (None, 240)}
    for path in rows:
        cfg, voc = load(path), path.parent.name == "voc"
        part = path.stem.split("_", 2)[2]
        total = 10582 if voc else 2975
        labeled = total // int(part.split("_")[1])  # CPS: 10582 // 8 labeled, the rest not
        steps = max(labeled, total - labeled) // 8 * epochs[part][0 if voc else 1]
        assert (cfg.semi, cfg.semi_options, cfg.model) == (
            "cps", {} if voc else {"weight": 5.0}, "deeplabv3plus_resnet50_d16"), path
        assert cfg.head_options["output_stride"] == 16 and cfg.eval_mode == "slide", path
        assert (cfg.batch_size, cfg.unlabeled_batch_size, cfg.lr, cfg.steps, cfg.l2) == (
            8, 8, 0.01 if voc else 0.16, steps, 5e-5), path
        assert cfg.crop_size == ((512, 512) if voc else (800, 800)) and not cfg.brightness
        assert cfg.labeled_list.endswith(f"/{part}/labeled.txt"), path
