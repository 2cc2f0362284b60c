"""Every registered head assembled into a SegmentationModel by zoo name, on a tiny ResNet-D8:
shapes for odd and even inputs, aux / CAR loss terms, gradients to every weight, round trip."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from iseg.heads import HEADS
from iseg.models import build_model_from_name, parse_model_name

TINY_BACKBONE = dict(depths=(1, 1, 1, 1), widths=(4, 4, 8, 8), stem_width=8)
TINY_HEAD = {
    "fcn": dict(channels=16),
    "nl": dict(channels=16, key_filters=4),
    "deeplabv3": dict(channels=8),
    "deeplabv3plus": dict(channels=8, low_level_channels=4),
    "ocr": dict(channels=16, key_filters=8, region_channels=8),
    "upernet": dict(channels=8),
    "danet": dict(channels=16),
    "ccnet": dict(channels=16),
    "caa": dict(channels=16, end_channels=8, guide_filters=4, mlp_hidden=4),
    "ksac": dict(channels=8, low_level_channels=4),
    "hfgd": dict(context_channels=8, num_heads=2, fpn_channels=4),
    "card": dict(channels=8, num_heads=2, decoder_channels=8, low_level_channels=4),
}
NO_CAR = {"hfgd"}  # refuses CAR
CAR_ALWAYS = {"card"}  # the zoo name turns CAR on
HEAD_NAMES = [h for h in HEADS.names() if h != "fcn_aux"]


def tiny(name, **kw):
    head = parse_model_name(name)["head"]
    return build_model_from_name(
        name,
        num_classes=4,
        backbone_options=TINY_BACKBONE,
        head_options=TINY_HEAD[head],
        aux_options=dict(channels=8),
        **kw,
    )


def batch(size, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(2, *size, 3)).astype("float32")
    y = rng.integers(0, 4, size=(2, *size)).astype("int32")
    y[:, -4:] = 255
    return x, y


def test_every_head_has_tiny_options():
    assert sorted(TINY_HEAD) == sorted(HEAD_NAMES)


@pytest.mark.parametrize("head", HEAD_NAMES)
@pytest.mark.parametrize("car", [False, True])
def test_head_in_model_shapes_terms_and_gradients(head, car):
    if car and head in NO_CAR:
        with pytest.raises(ValueError, match=f"{head}: CAR is not supported"):
            tiny(f"{head}_resnet50_d8", car={})
        return
    model = tiny(f"{head}_resnet50_d8", **({"car": {}} if car else {}))
    car = car or head in CAR_ALWAYS
    # odd and even sizes (the CAR variant shares the body: one size is enough there)
    for size in [(32, 32), (33, 33)][car:]:
        x, y = batch(size)
        assert model(x).shape == (2, *size, 4)
    with tf.GradientTape() as tape:
        out = model(x, training=True)
        terms = model.loss_terms(y, out)
        loss = model.compute_loss(x, y, out)
    expected = {"ce", "aux"} | ({"car_intra", "car_inter_c2c", "car_inter_c2p"} if car else set())
    expected |= {"high_level"} if head == "hfgd" else set()
    assert set(terms) == expected
    assert all(np.isfinite(float(v)) for v in terms.values())
    if car:
        from iseg.losses.car import car_multi_rate_losses

        features = [out["feature"], *out.get("extra_features", [])]
        assert len(features) == (2 if head == "danet" else 1)
        expected_intra = sum(
            float(car_multi_rate_losses(f, y, 4, model.head.car_pooling_rates)["intra"])
            for f in features
        )
        assert float(terms["car_intra"]) == pytest.approx(expected_intra, rel=1e-5)
    grads = tape.gradient(loss, model.trainable_weights)
    missing = [w.path for w, g in zip(model.trainable_weights, grads) if g is None]
    assert not missing, f"no gradient reaches {missing}"


def test_round_trip_keeps_car_and_aux(tmp_path):
    model = tiny("nl_resnet50_d8", car={}, aux_weight=0.2)
    x, _ = batch((33, 33))
    path = tmp_path / "nl.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(np.asarray(restored(x)), np.asarray(model(x)), atol=1e-5)
    assert restored.car == model.car and restored.car.pooling_rates == (1,)
    assert restored.aux_weight == pytest.approx(0.2)
    assert len(restored.weights) == len(model.weights)


def test_unknown_model_name_lists_choices():
    with pytest.raises(ValueError, match=r"Unknown model 'fcn_resnet7'.*deeplabv3.*resnet50_d8"):
        parse_model_name("fcn_resnet7")
