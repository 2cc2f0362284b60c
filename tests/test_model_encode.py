"""`SegmentationModel.encode` / `decode` (the split the semi-supervised engine uses) and the
endpoints each head declares it reads."""

import keras
import numpy as np
import pytest

from iseg.heads import HEADS, build_head
from iseg.models import build_model_from_name
from iseg.ops import spatial_shape

K = 3
# Tiny options for the heads the shared head tests do not size (test_heads.OPTIONS).
TINY = {
    "caa": dict(channels=8, end_channels=6, guide_filters=4, mlp_hidden=4, jpu_filters=4),
    "card": dict(channels=8, num_heads=2, decoder_channels=6, low_level_channels=3),
    "hfgd": dict(context_channels=8, num_heads=2, fpn_channels=4),
    "ksac": dict(channels=6, low_level_channels=3),
    "fcn_aux": dict(channels=8),
}
# one head per declared-key layout
LAYOUTS = [
    ("caa", {}), ("caa", dict(use_jpu=True)), ("card", {}), ("ccnet", {}), ("danet", {}),
    ("deeplabv3", {}), ("deeplabv3plus", {}), ("fcn", {}), ("fcn_aux", {}),
    ("hfgd", {}), ("hfgd", dict(output_stride=2)), ("ksac", {}), ("nl", {}), ("ocr", {}),
    ("upernet", {}),
]


def _model(aux_weight=0.4):
    # demo_tiny (DeepLabV3+ on a small ResNet) without dropout so training outputs repeat
    keras.utils.set_random_seed(0)
    return build_model_from_name(
        "demo_tiny", K, head_options=dict(dropout=0.0), aux_weight=aux_weight,
        aux_options=dict(channels=8, dropout=0.0), input_shape=(32, 32, 3),
    )


def _images(seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (2, 32, 32, 3)).astype("float32")


@pytest.mark.parametrize("training", [False, True])
def test_decode_of_encode_is_call(training):
    model = _model()
    x = _images()
    want = model(x, training=training)
    got = model.decode(model.encode(x, training=training), spatial_shape(x), training=training)
    if not training:
        want, got = {"logits": want}, {"logits": got}
    assert set(got) == set(want) and ("aux_logits" in got) == training
    for key in want:
        np.testing.assert_allclose(np.asarray(got[key]), np.asarray(want[key]), atol=1e-5)


def test_perturbing_the_head_endpoints_changes_the_logits():
    model = _model(aux_weight=0)
    assert model.head_endpoints() == ["c5", "c2"]  # DeepLabV3+: ASPP input, low-level
    x = _images(1)
    endpoints = model.encode(x)
    clean = np.asarray(model.decode(endpoints, (32, 32)))
    drop = keras.layers.SpatialDropout2D(0.5, seed=1)  # UniMatch's Dropout2d(0.5)
    for key in model.head_endpoints():
        perturbed = {**endpoints, key: drop(endpoints[key], training=True)}
        assert np.abs(np.asarray(model.decode(perturbed, (32, 32))) - clean).max() > 1e-3
    # an endpoint the head does not read changes nothing
    unread = {**endpoints, "c3": drop(endpoints["c3"], training=True)}
    np.testing.assert_array_equal(np.asarray(model.decode(unread, (32, 32))), clean)


def _pyramid():
    rng = np.random.default_rng(0)
    shapes = {"stem": (32, 5), "c2": (16, 6), "c3": (8, 7), "c4": (4, 10), "c5": (4, 12)}
    return {k: rng.normal(size=(1, s, s, c)).astype("float32") for k, (s, c) in shapes.items()}


def test_layouts_cover_every_registered_head():
    assert {name for name, _ in LAYOUTS} == set(HEADS.names())


@pytest.mark.parametrize("name,options", LAYOUTS)
def test_head_reads_exactly_its_declared_endpoints(name, options):
    from test_heads import OPTIONS

    head = build_head(name, K, **{**OPTIONS.get(name, {}), **TINY.get(name, {}), **options})
    eps = _pyramid()
    keys = head.endpoint_keys()
    assert len(set(keys)) == len(keys) and set(keys) <= set(eps)
    head({k: eps[k] for k in keys})  # the declared endpoints suffice
    for key in keys:  # and each one is read
        with pytest.raises(ValueError, match=f"reads the backbone endpoint '{key}'"):
            head({k: eps[k] for k in keys if k != key})


def test_undeclared_head_is_reported():
    from iseg.heads.base import Head

    class Bare(Head):
        pass

    with pytest.raises(ValueError, match="Bare does not declare the endpoints it reads"):
        Bare(K).endpoint_keys()
