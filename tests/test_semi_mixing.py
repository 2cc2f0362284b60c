"""Box masks and mixers of semi-supervised training against NumPy loops written after the
official code (UniMatch ``obtain_cutmix_box``, CPS ``BoxMaskGenerator``, AugSeg
``cut_mix_label_adaptive``, iMAS ``cut_mix_by_hardness``) given the same draws."""

import numpy as np
import tensorflow as tf

from iseg.semi import mixing as M

H, W = 10, 12


def _np(params):
    return {k: v.numpy() for k, v in params.items()}


def _batch(seed, b=6, k=4):
    rng = np.random.default_rng(seed)
    return {"image": rng.uniform(0, 255, (b, H, W, 3)).astype(np.float32),
            "label": rng.integers(0, k, (b, H, W)).astype(np.int32),
            "conf": rng.uniform(0, 1, (b, H, W)).astype(np.float32),
            "ignore": rng.uniform(size=(b, H, W)) < 0.2}


def _tf(batch):
    return {k: tf.constant(v) for k, v in batch.items()}


def _assert_batches_equal(ours, ref):
    assert set(ours) == set(ref)
    for key in ref:
        np.testing.assert_array_equal(ours[key].numpy(), ref[key], err_msg=key)


def test_box_mask_and_paste():
    boxes = tf.constant([[1, 2, 4, 7], [0, 0, 0, 5]])
    mask = M.box_mask(boxes, H, W).numpy()
    ref = np.zeros((2, H, W), bool)
    ref[0, 1:4, 2:7] = True
    np.testing.assert_array_equal(mask, ref)
    a, b = _batch(0, 2), _batch(1, 2)
    out = M.paste(tf.constant(ref), _tf(a), _tf(b))
    _assert_batches_equal(out, {k: np.where(ref.reshape(ref.shape + (1,) * (a[k].ndim - 3)),
                                            b[k], a[k]) for k in a})


def test_unimatch_box_equals_official_loop():
    seed, n = tf.constant([2, 5]), 64
    ours = M.unimatch_box(seed, n, H, W).numpy()
    p = _np(M.unimatch_params(seed, n, H, W))
    ref = np.zeros((n, H, W), bool)
    for i in range(n):
        if not p["apply"][i]:
            continue
        for t in range(p["ratio"].shape[1]):  # redrawn until inside (float32 as drawn)
            w = int(np.sqrt(p["size"][i, 0] / p["ratio"][i, t]))
            h = int(np.sqrt(p["size"][i, 0] * p["ratio"][i, t]))
            x, y = p["x"][i, t], p["y"][i, t]
            if x + w <= W and y + h <= H:
                ref[i, y:y + h, x:x + w] = True
                break
    np.testing.assert_array_equal(ours, ref)
    assert 0 < ref.any((1, 2)).sum() < n


def test_unimatch_box_statistics():
    n, h, w = 4000, 40, 48
    mask = M.unimatch_box(tf.constant([7, 1]), n, h, w).numpy()
    has = mask.any((1, 2))
    assert abs(has.mean() - 0.5) < 0.03
    pixels = mask.sum((1, 2))[has]
    rows, cols = mask.any(2).sum(1)[has], mask.any(1).sum(1)[has]
    np.testing.assert_array_equal(pixels, rows * cols)  # one rectangle
    area = pixels / (h * w)
    assert area.max() <= 0.4 and area.min() >= 0.015 and area.mean() > 0.15
    # h / w = r in [0.3, 1 / 0.3] before each side is truncated to an integer
    assert np.all((rows + 1) / cols >= 0.3) and np.all(rows / (cols + 1) <= 1 / 0.3)


def test_cps_box_mask_equals_box_mask_generator():
    seed, n = tf.constant([3, 3]), 16
    ours = M.cps_box_mask(seed, n, H, W).numpy()
    p = _np(M.cps_params(seed, n))
    props = p["props"]
    y_props = np.exp(p["aspect"] * np.log(props))
    x_props = props / y_props
    fac = np.sqrt(1.0 / 3)
    sizes = np.round(np.stack([y_props * fac, x_props * fac], 2) * np.array((H, W))[None, None])
    positions = np.round((np.array((H, W)) - sizes) * p["position"])
    rects = np.append(positions, positions + sizes, axis=2)
    ref = np.zeros((n, H, W))  # invert: start from 0
    for i in range(n):
        for y0, x0, y1, x1 in rects[i]:
            ref[i, int(y0):int(y1), int(x0):int(x1)] = 1 - ref[i, int(y0):int(y1), int(x0):int(x1)]
    np.testing.assert_array_equal(ours, ref.astype(bool))


def test_cps_box_statistics():
    h, w = 64, 80
    p = M.cps_params(tf.constant([1, 9]), 3000)
    boxes = M.cps_boxes(p, h, w).numpy().reshape(-1, 4)
    assert boxes.min() >= 0 and boxes[:, 2].max() <= h and boxes[:, 3].max() <= w
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (h * w)
    assert 0.25 / 3 * 0.85 < area.min() and area.max() < 0.5 / 3 * 1.15
    props = p["props"].numpy()
    assert 0.25 <= props.min() < 0.251 and 0.499 < props.max() < 0.5


def _official_augseg(unl, lab, params, rho):
    """cut_mix_label_adaptive as the official loop (numpy, same draws); the labeled
    ground truth's ignore pixels become ignored pixels."""
    perm = params["perm"]
    mix = {k: v.copy() for k, v in unl.items()}
    for i in range(len(perm)):
        if params["inject"][i] > rho[i]:
            y0, x0, y1, x1 = params["label_boxes"][i]
            gt = lab["label"][perm[i], y0:y1, x0:x1]
            mix["image"][i, y0:y1, x0:x1] = lab["image"][perm[i], y0:y1, x0:x1]
            mix["label"][i, y0:y1, x0:x1] = np.where(gt == 255, mix["label"][i, y0:y1, x0:x1], gt)
            mix["conf"][i, y0:y1, x0:x1] = 1.0
            mix["ignore"][i, y0:y1, x0:x1] = gt == 255
    out = {k: v.copy() for k, v in unl.items()}
    for i in range(len(perm)):
        y0, x0, y1, x1 = params["mix_boxes"][i]
        for key in out:
            out[key][i, y0:y1, x0:x1] = mix[key][perm[i], y0:y1, x0:x1]
    return out


def test_augseg_mix_equals_official_loop():
    unl, lab = _batch(0), _batch(1)
    lab = {"image": lab["image"], "label": np.where(lab["ignore"], 255, lab["label"])}
    rho = np.array([0.1, 0.9, 0.0, 0.5, 1.0, 0.3], np.float32)
    seed = tf.constant([4, 2])
    ours, params = M.augseg_mix(seed, _tf(unl), _tf(lab), tf.constant(rho))
    params = _np(params)
    assert (params["inject"] > rho).any() and (params["inject"] <= rho).any()
    _assert_batches_equal(ours, _official_augseg(unl, lab, params, rho))


def _centred(boxes, n_axis, cut, low):
    """Boxes along one axis are [clip(c - cut//2), clip(c + cut//2)) with c in [low, n)."""
    lo, hi = boxes
    inner = (lo > 0) & (hi < n_axis)
    assert np.all(hi[inner] - lo[inner] == 2 * (cut // 2))
    assert np.all(lo >= 0) and np.all(hi <= n_axis)
    centre = np.where(lo > 0, lo + cut // 2, hi - cut // 2)
    assert centre.min() >= low and centre.max() < n_axis


def test_augseg_box_draws():
    h, w, n = 64, 48, 400
    lams, injected = [], []
    for s in range(30):
        p = _np(M.augseg_params(tf.constant([s, 1]), n, h, w))
        for key, lam in (("label_boxes", p["label_lam"]), ("mix_boxes", p["mix_lam"])):
            b = p[key]
            _centred((b[:, 0], b[:, 2]), h, int(h * np.sqrt(1 - lam)), h // 8)
            _centred((b[:, 1], b[:, 3]), w, int(w * np.sqrt(1 - lam)), w // 8)
        lams.append((p["label_lam"], p["mix_lam"]))
        injected.append(p["inject"] > 0.3)
        assert sorted(p["perm"]) == list(range(n))
    lams = np.array(lams)
    assert abs(lams[:, 0].mean() - 0.8) < 0.06 and abs(lams[:, 1].mean() - 0.5) < 0.08
    assert abs(np.mean(injected) - 0.7) < 0.02  # probability 1 - rho


def test_injection_confidence():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 5, 6)).astype(np.float32)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    ref = np.zeros(3)
    for i in range(3):
        vals = [(1 + (q * np.log(q + 1e-10)).sum() / np.log(6)) * q.max()
                for q in p[i].reshape(-1, 6)]
        ref[i] = np.mean(vals)
    np.testing.assert_allclose(M.injection_confidence(tf.constant(p)).numpy(), ref, rtol=1e-5)


def test_imas_mix_equals_official_loop():
    batch = _batch(2)
    hardness = np.array([0.4, 0.1, 0.9, 0.0, 0.7, 0.2], np.float32)
    ours, params = M.imas_mix(tf.constant([6, 6]), _tf(batch), tf.constant(hardness))
    params = _np(params)
    order = np.argsort(hardness)
    pairs = dict(zip(order, order[::-1]))
    index = [pairs[i] for i in range(len(hardness))]
    np.testing.assert_array_equal(params["partner"], index)
    ref = {k: v.copy() for k, v in batch.items()}
    for i in range(len(index)):
        y0, x0, y1, x1 = params["boxes"][i]
        for key in ref:
            ref[key][i, y0:y1, x0:x1] = batch[key][index[i], y0:y1, x0:x1]
    _assert_batches_equal(ours, ref)


def test_imas_draws():
    h, w = 64, 48
    hardness = tf.constant([0.1, 0.3, 0.2, 0.6])
    vs, triggers = [], []
    for s in range(300):
        p = _np(M.imas_params(tf.constant([s, 3]), hardness, h, w))
        b = p["boxes"]
        _centred((b[:, 0], b[:, 2]), h, int(h * p["v"]), h // 16)
        _centred((b[:, 1], b[:, 3]), w, int(w * p["v"]), w // 16)
        vs.append(p["v"])
        triggers.append(p["trigger"])
    assert 0.1 <= min(vs) < 0.15 and 0.85 < max(vs) <= 0.9
    assert abs(np.mean(triggers) - 0.3) < 0.08  # probability mean(h)


def test_mixers_in_a_tf_function_equal_eager():
    unl, lab = _tf(_batch(0)), _tf(_batch(1))
    lab = {"image": lab["image"], "label": lab["label"]}
    h = tf.constant([0.4, 0.1, 0.9, 0.0, 0.7, 0.2])
    mixers = {
        "unimatch": lambda s: M.unimatch_box(s, 6, H, W),
        "cps": lambda s: M.cps_box_mask(s, 6, H, W),
        "augseg": lambda s: M.augseg_mix(s, unl, lab, h)[0]["image"],
        "imas": lambda s: M.imas_mix(s, unl, h)[0]["label"],
    }
    for name, mixer in mixers.items():
        seed = tf.constant([1, 2])
        np.testing.assert_array_equal(tf.function(mixer)(seed).numpy(), mixer(seed).numpy(),
                                      err_msg=name)
