"""CAA head: registry, output shapes with/without CAR and JPU, composition, round trip."""

import numpy as np
import pytest
import keras

from iseg.heads import HEADS, build_head
from iseg.heads.caa import CAAHead

SMALL = dict(channels=8, end_channels=6, guide_filters=4, mlp_hidden=4, jpu_filters=4)


def endpoints(seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"c2": (2, 17, 17, 3), "c3": (2, 9, 9, 5), "c4": (2, 5, 5, 6), "c5": (2, 9, 9, 7)}
    return {k: rng.normal(size=s).astype("float32") for k, s in shapes.items()}


def test_registered():
    assert "caa" in HEADS
    assert isinstance(build_head("caa", 3, **SMALL), CAAHead)


@pytest.mark.parametrize("use_car", [False, True])
def test_shapes_and_composition(use_car):
    eps = endpoints()
    head = build_head("caa", 3, car=dict(filters=5) if use_car else None, **SMALL)
    out = head(eps, training=False)
    assert out["logits"].shape == (2, 9, 9, 3)
    # feature: CAR's projection z (min(16, 5) ch) or the 2*channels concat before the end conv
    assert out["feature"].shape == (2, 9, 9, 5 if use_car else 16)
    # the composition of the module docstring, rebuilt from the head's own sublayers
    x = eps["c5"]
    y = head.caa_conv(head.caa(head.entry_conv(x, training=False), training=False), training=False)
    y = np.concatenate([y, head.image_level(x, training=False)], axis=-1)
    if use_car:
        y, z = head.car(y, training=False)
        np.testing.assert_allclose(out["feature"], z, atol=1e-5)
    else:
        np.testing.assert_allclose(out["feature"], y, atol=1e-5)
        y = head.end_conv(y, training=False)
    np.testing.assert_allclose(out["logits"], head.classifier(y), atol=1e-5)


def test_jpu_variant_reads_c3_c4_c5():
    eps = endpoints()
    # c3 9x9 (OS8), c4 5x5 (OS16), c5 3x3 (OS32)
    eps["c5"] = np.random.default_rng(3).normal(size=(2, 3, 3, 7)).astype("float32")
    head = build_head("caa", 4, use_jpu=True, **SMALL)
    out = head(eps, training=True)
    assert out["logits"].shape == (2, 9, 9, 4)  # OS8 (c3) resolution
    assert head.jpu.input_convs[2].conv.kernel.shape == (3, 3, 7, 4)
    with pytest.raises(ValueError, match="endpoint 'c3'"):
        build_head("caa", 4, use_jpu=True, **SMALL)({"c4": eps["c4"], "c5": eps["c5"]})


def test_round_trip(tmp_path):
    use_jpu = True  # the fuller configuration (JPU, CAR, grouped CAA); keeps CI time low
    eps = endpoints(1)
    eps["c5"] = eps["c5"][:, :3, :3]
    inputs = {k: keras.Input(v.shape[1:], name=k) for k, v in eps.items()}
    head = build_head("caa", 3, car=dict(filters=5), use_jpu=use_jpu, group_size=2, **SMALL)
    model = keras.Model(inputs, head(inputs)["logits"])
    path = tmp_path / "caa_head.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded(eps), model(eps), atol=1e-5)
    assert loaded.get_layer(head.name).get_config() == head.get_config()


def test_trains_inside_segmentation_model_with_car():
    from iseg.models.builder import build_model

    tiny = dict(depths=(1, 1, 1, 1), widths=(8, 8, 8, 8), stem_width=8, output_stride=8)
    model = build_model("caa", "resnet18", 3, input_shape=(33, 33, 3), backbone_options=tiny,
                        head_options=dict(SMALL), car={}, aux_weight=0.0)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(2, 33, 33, 3)).astype("float32")
    y = rng.integers(0, 3, size=(2, 33, 33)).astype("int32")
    logs = model.train_on_batch(x, y, return_dict=True)
    for name in ("ce", "car_intra", "car_inter_c2c", "car_inter_c2p"):
        assert np.isfinite(logs[name]) and logs[name] > 0, name
    assert model.predict_on_batch(x).shape == (2, 33, 33, 3)
