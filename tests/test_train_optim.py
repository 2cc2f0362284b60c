"""Schedules, optimizer construction, weight-decay exclusions and layer-wise LR decay."""

import math

import keras
import numpy as np
import pytest

from iseg.training.optimizers import (
    build_optimizer,
    layer_ids,
    no_decay_variables,
    lr_scales,
    prepare_optimizer,
)
from iseg.training.schedules import WarmupDecay


def test_poly_cosine_constant_and_warmup_follow_their_formulas():
    base, end, total = 0.01, 1e-4, 100
    poly = WarmupDecay(base, total, "poly", end_lr=end, power=0.9)
    cos = WarmupDecay(base, total, "cosine", end_lr=end)
    const = WarmupDecay(base, total, "constant")
    for t in (0, 1, 37, 99, 100, 150):
        tc = min(t, total)
        assert float(poly(t)) == pytest.approx((base - end) * (1 - tc / total) ** 0.9 + end,
                                               rel=1e-5)
        assert float(cos(t)) == pytest.approx(
            end + 0.5 * (base - end) * (1 + math.cos(math.pi * tc / total)), rel=1e-5)
        assert float(const(t)) == pytest.approx(base)
    warm = WarmupDecay(base, total, "poly", warmup_steps=10, warmup_ratio=0.1)
    for t in (0, 5, 10, 20):
        factor = 1 - (1 - min(t / 10, 1)) * (1 - 0.1)
        assert float(warm(t)) == pytest.approx(factor * base * (1 - t / total) ** 0.9, rel=1e-5)
    # with gradient accumulation the optimizer passes micro-steps
    acc = WarmupDecay(base, total, "poly", accum_steps=4)
    assert float(acc(4 * 37 + 3)) == pytest.approx(float(poly(37)) if end == 0 else
                                                   base * (1 - 37 / total) ** 0.9, rel=1e-5)
    restored = WarmupDecay.from_config(warm.get_config())
    assert float(restored(7)) == pytest.approx(float(warm(7)))
    with pytest.raises(ValueError, match="Valid schedules: poly, cosine, constant"):
        WarmupDecay(base, total, "step")


class _Toy(keras.Model):
    def __init__(self):
        super().__init__()
        self.backbone = keras.Sequential([
            keras.layers.Conv2D(2, 1, name="stem_conv"),
            keras.layers.Conv2D(2, 1, name="stage0_block0"),
            keras.layers.Conv2D(2, 1, name="stage0_block1"),
            keras.layers.Conv2D(2, 1, name="stage1_block0"),
            keras.layers.LayerNormalization(name="stage1_block0_norm"),
        ], name="backbone")
        self.head = keras.layers.Conv2D(2, 1, name="head")
        self.pos = self.add_weight(shape=(4, 4), name="relative_position_bias_table")

    def call(self, x):
        return self.head(self.backbone(x))


def _toy():
    m = _Toy()
    m(np.zeros((1, 2, 2, 2), np.float32))
    return m


def test_no_decay_excludes_bias_norm_and_position_bias():
    m = _toy()
    names = {v.path for v in no_decay_variables(m.trainable_variables)}
    assert any("bias" in n and "head" in n for n in names)
    assert any("gamma" in n for n in names) and any("beta" in n for n in names)
    assert any("relative_position" in n for n in names)
    assert not any(n.endswith("kernel") for n in names)


def test_decoupled_weight_decay_skips_excluded_variables():
    m = _toy()
    opt = build_optimizer("adamw", 0.1, weight_decay=0.5)
    prepare_optimizer(opt, m)
    before = [np.array(v) for v in m.trainable_variables]
    opt.apply([keras.ops.zeros_like(v) for v in m.trainable_variables], m.trainable_variables)
    skip = {id(v) for v in no_decay_variables(m.trainable_variables)}
    for v, b in zip(m.trainable_variables, before):
        excluded = id(v) in skip
        if excluded:
            np.testing.assert_allclose(np.array(v), b)
        else:  # zero gradient: only decay moves it, by lr * wd
            np.testing.assert_allclose(np.array(v), b * (1 - 0.1 * 0.5), rtol=1e-5)


def test_layer_wise_lr_decay_scales_sgd_updates():
    m = _toy()
    ids, n = layer_ids(m)
    by_name = {v.path.split("/", 1)[1]: ids[id(v)] for v in m.trainable_variables}
    assert n == 3  # (stage0, block0), (stage0, block1), (stage1, block0)
    assert by_name["backbone/stem_conv/kernel"] == 0
    assert by_name["backbone/stage0_block1/kernel"] == 2
    assert by_name["backbone/stage1_block0_norm/gamma"] == 3
    assert by_name["head/kernel"] == 4 and by_name["relative_position_bias_table"] == 4
    opt = build_optimizer("sgd", 1.0, momentum=0.0, layer_decay=0.5)
    prepare_optimizer(opt, m, layer_decay=0.5)
    before = {v.path: np.array(v) for v in m.trainable_variables}
    opt.apply([keras.ops.ones_like(v) for v in m.trainable_variables], m.trainable_variables)
    for v in m.trainable_variables:
        step = before[v.path] - np.array(v)
        np.testing.assert_allclose(step, 0.5 ** (n + 1 - ids[id(v)]), rtol=1e-6,
                                   err_msg=v.path)


def _sgd_step(opt, variables, seed=0):
    """Apply one random gradient; return the gradients and the variables' moves."""
    rng = np.random.default_rng(seed)
    grads = [rng.normal(size=v.shape).astype(np.float32) for v in variables]
    before = [np.array(v) for v in variables]
    opt.apply([keras.ops.convert_to_tensor(g) for g in grads], variables)
    return grads, [b - np.array(v) for b, v in zip(before, variables)]


@pytest.mark.parametrize("layer_decay", [None, 0.5])
def test_head_lr_multiplier_trains_everything_outside_the_backbone_faster(layer_decay):
    m, lr = _toy(), 0.1
    extra_head = keras.layers.Dense(2, name="method_head")
    extra_head.build((None, 3))
    extra_backbone = keras.Variable(np.ones((3,), np.float32), name="peer_backbone_w")
    extra = extra_head.trainable_variables + [extra_backbone]
    opt = build_optimizer("sgd", lr, momentum=0.0, layer_decay=layer_decay,
                          head_lr_multiplier=10.0)
    prepare_optimizer(opt, m, layer_decay, extra, head_lr_multiplier=10.0,
                      extra_backbone_variables=[extra_backbone])
    variables = m.trainable_variables + extra
    grads, moves = _sgd_step(opt, variables)
    ids, n = layer_ids(m)
    backbone = {id(v) for v in m.backbone.trainable_variables} | {id(extra_backbone)}
    for v, g, move in zip(variables, grads, moves):
        decay = (layer_decay ** (n + 1 - ids[id(v)]) if layer_decay and id(v) in ids
                 else 1.0)
        expected = lr * decay * (1.0 if id(v) in backbone else 10.0) * g
        np.testing.assert_allclose(move, expected, rtol=1e-5, atol=1e-7, err_msg=v.path)
    # the model's head kernel, bias and position table, the method layer's kernel and bias
    assert sum(id(v) not in backbone for v in variables) == 5
    # multiplier 1 leaves every rate at the base rate (no scales at all)
    assert lr_scales(m, None, 1.0, extra) == {}


def test_optimizer_options():
    sgd = build_optimizer("sgd", 0.1, momentum=0.8, nesterov=True, clip_norm=1.0,
                          grad_accum_steps=4)
    assert sgd.momentum == 0.8 and sgd.nesterov and sgd.global_clipnorm == 1.0
    assert sgd.gradient_accumulation_steps == 4
    assert isinstance(build_optimizer("adam", 0.1, loss_scale=True),
                      keras.optimizers.LossScaleOptimizer)
    with pytest.raises(ValueError, match="Valid optimizers: sgd, adam, adamw"):
        build_optimizer("lamb", 0.1)
