"""KSAC head: registry, rates per output stride, shapes with/without CAR, round trip."""

import numpy as np
import pytest
import keras

from iseg.heads import HEADS, build_head
from iseg.heads.ksac import KSACHead, ksac_rates

SMALL = dict(channels=6, low_level_channels=3)


def endpoints(seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"c2": (2, 17, 17, 3), "c5": (2, 9, 9, 7)}
    return {k: rng.normal(size=s).astype("float32") for k, s in shapes.items()}


def test_registered_and_rates():
    assert "ksac" in HEADS
    assert ksac_rates(16) == (6, 12, 18) and ksac_rates(8) == (12, 24, 36)
    assert ksac_rates(8, (6, 12, 18, 24)) == (6, 12, 18, 24)
    with pytest.raises(ValueError, match="output_stride"):
        ksac_rates(4)
    head = build_head("ksac", 3, output_stride=16, **SMALL)
    assert isinstance(head, KSACHead) and head.ksac.rates == (6, 12, 18)


@pytest.mark.parametrize("use_car", [False, True])
@pytest.mark.parametrize("separable", [False, True])
def test_shapes(use_car, separable):
    eps = endpoints()
    head = build_head("ksac", 3, car=dict(filters=4) if use_car else None, separable=separable,
                      rates=(1, 2), **SMALL)
    out = head(eps, training=True)
    assert out["logits"].shape == (2, 17, 17, 3)  # c2 (OS4) resolution
    assert out["feature"].shape == (2, 17, 17, 4 if use_car else 6)
    assert head.car_pooling_rates == (2,)
    # exactly one 3x3 atrous kernel in the KSAC module
    kernels = [w for w in head.ksac.trainable_weights if len(w.shape) == 4 and w.shape[0] == 3]
    assert [tuple(w.shape) for w in kernels] == [(3, 3, 7, 6)]


def test_round_trip(tmp_path):
    eps = endpoints(1)
    inputs = {k: keras.Input(v.shape[1:], name=k) for k, v in eps.items()}
    head = build_head("ksac", 3, car=dict(filters=4), fusion="sum", rates=(1, 2), **SMALL)
    model = keras.Model(inputs, head(inputs)["logits"])
    path = tmp_path / "ksac_head.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded(eps), model(eps), atol=1e-5)
    assert loaded.get_layer(head.name).get_config() == head.get_config()


def test_trains_inside_segmentation_model_with_car():
    from iseg.models.builder import build_model

    tiny = dict(depths=(1, 1, 1, 1), widths=(8, 8, 8, 8), stem_width=8, output_stride=8)
    model = build_model("ksac", "resnet18", 3, input_shape=(33, 33, 3), backbone_options=tiny,
                        head_options=dict(channels=8, low_level_channels=4, rates=(1, 2)),
                        car={}, aux_weight=0.0)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(2, 33, 33, 3)).astype("float32")
    y = rng.integers(0, 3, size=(2, 33, 33)).astype("int32")
    logs = model.train_on_batch(x, y, return_dict=True)
    for name in ("ce", "car_intra", "car_inter_c2c", "car_inter_c2p"):
        assert np.isfinite(logs[name]) and logs[name] > 0, name
    assert model.predict_on_batch(x).shape == (2, 33, 33, 3)
