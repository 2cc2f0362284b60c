"""The model-zoo rows (`configs/common/car_recipe.cfg`) build the original code's choices,
read back from the built model: no classifier dropout, Glorot-uniform conv kernels, BN
epsilon 1e-3, the original aux heads, cross-entropy over all pixels; and the original's EMA
class centres (one buffer shared by the pooling rates) as an option."""

import dataclasses
import os
import sys

import keras
import numpy as np
import pytest

from iseg.losses.car import CARLoss, pool_features
from iseg.models import parse_model_name
from iseg.ops import resize_labels
from iseg.training.config import DatasetMeta, build_model_from_config

sys.path.insert(0, os.path.dirname(__file__))
from test_configs import CONFIGS, ZOO, load  # noqa: E402

META = DatasetMeta(num_classes=4, class_names=list("abcd"), palette=[(0, 0, 0)] * 4)
TINY_BACKBONE = {
    "resnet": dict(depths=(1, 1, 1, 1), widths=(4, 4, 8, 8), stem_width=8),
    "convnext": dict(depths=(1, 1, 1, 1), widths=(8, 8, 16, 16)),
}
TINY_HEAD = {
    "fcn": dict(channels=8, end_channels=8),
    "nl": dict(channels=8, key_filters=4),
    "deeplabv3": dict(channels=8, end_channels=8),
    "caa": dict(channels=8, end_channels=8, guide_filters=4, mlp_hidden=4, jpu_filters=4),
}
ROWS = ("fcn_r50_d8_car", "nl_r50_d8_car", "deeplabv3_r50_d8_car", "caa_r101_d8_car",
        "caa_convnext_l_jpu_car")
ADAM_AUX = CONFIGS / "pascal_context" / "caa_convnext_l_jpu_car_adam40k_aux.cfg"


def build_row(path, **overrides):
    """The model of a flag file at a tiny width (the recipe's options kept)."""
    cfg = dataclasses.replace(load(path), **overrides)
    kwargs = parse_model_name(cfg.model)
    family = "convnext" if kwargs["backbone"].startswith("convnext") else "resnet"
    cfg = dataclasses.replace(
        cfg, backbone_weights=None,
        backbone_options={**cfg.backbone_options, **TINY_BACKBONE[family]},
        head_options={**cfg.head_options, **TINY_HEAD[kwargs["head"]]})
    keras.utils.set_random_seed(0)
    return build_model_from_config(cfg, META)


def sublayers(model):
    layers = [model.head] + ([model.aux_head] if model.aux_head is not None else [])
    return [sub for layer in layers for sub in layer._flatten_layers(include_self=True)]


@pytest.fixture(scope="module", params=ROWS)
def row(request):
    return build_row(CONFIGS / "pascal_context" / f"{request.param}.cfg", aux_weight=0.2)


def test_no_dropout_before_the_classifier(row):
    assert row.head.dropout.rate == 0.0 and row.aux_head.dropout.rate == 0.0
    default = build_row(CONFIGS / "pascal_context" / "fcn_r50_d8.cfg", head_options={})
    assert default.head.dropout.rate == 0.1  # ours, outside the recipe


def test_conv_kernels_are_glorot_uniform(row):
    convs = [layer for layer in sublayers(row)
             if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]
    assert len(convs) > 4
    for layer in convs:
        init = getattr(layer, "depthwise_initializer", None) or layer.kernel_initializer
        assert type(init).__name__ in ("GlorotUniform", "SharedGlorotUniform"), layer.path
    # the values: the CAR end conv's kernel fills the Glorot-uniform range
    kernel = np.asarray(row.head.car.end_conv.conv.kernel)
    receptive = kernel.shape[0] * kernel.shape[1]
    limit = np.sqrt(6.0 / (receptive * (kernel.shape[2] + kernel.shape[3])))
    assert limit * 0.8 < np.abs(kernel).max() <= limit


def test_head_batch_norms_use_epsilon_1e3(row):
    bns = [layer for layer in sublayers(row)
           if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) > 2
    assert {(bn.epsilon, bn.momentum) for bn in bns} == {(1e-3, 0.9997)}


def _head_and_aux_inputs(model, size=33):
    x = np.random.default_rng(0).normal(size=(1, size, size, 3)).astype("float32")
    endpoints = model.backbone(x)
    return endpoints, model.head(endpoints, training=False)


def test_nl_aux_head_is_the_original():
    model = build_row(CONFIGS / "pascal_context" / "nl_r50_d8_car.cfg", aux_weight=0.2)
    assert model.aux_weight == 0.2
    aux = model.aux_head
    assert (aux.in_key, aux.conv.filters, aux.conv.kernel_size) == ("c4", 512, 3)
    endpoints, _ = _head_and_aux_inputs(model)
    assert aux.conv.conv.kernel.shape[-2] == endpoints["c4"].shape[-1]


def test_caa_aux_head_reads_the_jpu_output_with_weight_0_2():
    model = build_row(ADAM_AUX)
    assert model.aux_weight == 0.2 and model.head.jpu is not None
    aux = model.aux_head
    assert (aux.in_key, aux.conv.filters, aux.conv.kernel_size) == ("head_input", 512, 3)
    endpoints, out = _head_and_aux_inputs(model)
    jpu = model.head.jpu([endpoints[k] for k in model.head.jpu_keys])
    np.testing.assert_allclose(np.asarray(out["head_input"]), np.asarray(jpu), atol=1e-6)
    # the model's aux logits are the aux head on the JPU output
    x = np.random.default_rng(1).normal(size=(1, 33, 33, 3)).astype("float32")
    got = model(x, training=True)["aux_logits"]
    want = model._upsample(aux({"head_input": model.head(model.backbone(x), training=True)[
        "head_input"]}, training=True)["logits"], (33, 33))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dataset", ZOO)
def test_cross_entropy_divides_by_all_pixels(dataset):
    model = build_row(CONFIGS / dataset / "fcn_r50_d8_car.cfg")
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 5, 6, 4)).astype("float32")
    labels = rng.integers(0, 4, size=(2, 5, 6)).astype("int32")
    labels[:, :2] = 255
    ce = float(model.loss_terms(labels, {"logits": logits}, training=False)["ce"])
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    valid = labels != 255
    picked = np.take_along_axis(logp, np.where(valid, labels, 0)[..., None], -1)[..., 0]
    assert ce == pytest.approx(-(picked * valid).sum() / labels.size, rel=1e-5)


def test_no_recipe_row_combines_ema_with_several_rates():
    for path in sorted(CONFIGS.rglob("*_car*.cfg")):
        car = load(path).car_options
        assert not (car.get("use_ema_centers") and len(car.get("pooling_rates", (1,))) > 1)


def _ema_oracle(z, labels, rates, start, decay, num_classes):
    """The original's `last_class_center`: one buffer, moved once per rate."""
    centers = start.copy()
    for rate in rates:
        pooled = np.asarray(pool_features(z, rate))
        y = np.asarray(resize_labels(labels, pooled.shape[1:3], True)).reshape(-1)
        f = pooled.reshape(-1, pooled.shape[-1])
        for k in range(num_classes):
            if (y == k).any():
                centers[k] += (1 - decay) * (f[y == k].mean(0) - centers[k])
    return centers


@pytest.mark.parametrize("shared", [True, False])
def test_shared_ema_centres_follow_the_original(shared):
    rng = np.random.default_rng(3)
    z = rng.normal(size=(2, 6, 6, 5)).astype("float32")
    labels = rng.integers(0, 3, size=(2, 6, 6)).astype("int32")
    labels[0, :2] = 255
    layer = CARLoss(3, pooling_rates=(1, 2), use_ema_centers=True, ema_decay=0.7,
                    shared_ema_centers=shared)
    layer.build(z.shape)
    assert len(layer.ema_centers) == (1 if shared else 2)
    start = [np.asarray(b).copy() for b in layer.ema_centers]
    layer(z, labels)
    if shared:
        want = _ema_oracle(z, labels, (1, 2), start[0], 0.7, 3)
        np.testing.assert_allclose(np.asarray(layer.ema_centers[0]), want, rtol=1e-5, atol=1e-6)
    else:
        for rate, s, buffer in zip((1, 2), start, layer.ema_centers):
            want = _ema_oracle(z, labels, (rate,), s, 0.7, 3)
            np.testing.assert_allclose(np.asarray(buffer), want, rtol=1e-5, atol=1e-6)
