"""Baseline heads: shapes (odd and even sizes), the CAR hook, layouts, errors.

Round trips: test_heads_serialization.py; gradients and JAX: test_heads_training.py.
"""

import numpy as np
import pytest
import keras

from iseg.heads import HEADS, build_head
from iseg.layers.car import CARBlock

K = 5
WIDTHS = {"c2": 6, "c3": 7, "c4": 10, "c5": 12}
# Tiny widths for every head.
OPTIONS = {
    "fcn": dict(channels=16, end_channels=8),
    "deeplabv3": dict(channels=8, rates=(2, 3, 4)),
    "deeplabv3plus": dict(channels=8, low_level_channels=4, rates=(2, 3, 4)),
    "nl": dict(channels=16, key_filters=4),
    "ocr": dict(channels=16, key_filters=8),
    "upernet": dict(channels=8),
    "danet": dict(channels=16),
    "ccnet": dict(channels=16),
}
MAIN_HEADS = sorted(OPTIONS)
OS4_HEADS = ("deeplabv3plus", "upernet")  # logits at c2's resolution
# Per-head CAR settings (METHODS.md 2(b); deeplabv3plus inferred: OS4 like UPerNet).
CAR_SETTINGS = {
    "fcn": (512, (1,)),
    "nl": (512, (1,)),
    "deeplabv3": (256, (1,)),
    "deeplabv3plus": (256, (2,)),
    "ocr": (512, (2,)),
    "upernet": (512, (2,)),
    "danet": (512, (1,)),
    "ccnet": (512, (1,)),
}


def _endpoints(size, n=2, seed=0):
    """D8-like endpoints: c3..c5 at `size`, c2 at twice the resolution (odd stays odd)."""
    rng = np.random.default_rng(seed)
    s2 = 2 * size - 1 if size % 2 else 2 * size
    shapes = {"c2": s2, "c3": size, "c4": size, "c5": size}
    return {
        k: rng.normal(size=(n, shapes[k], shapes[k], WIDTHS[k])).astype("float32")
        for k in WIDTHS
    }


def _head(name, **extra):
    return build_head(name, K, **dict(OPTIONS.get(name, {}), **extra))


def _model(head):
    inputs = {k: keras.Input((None, None, c), name=k) for k, c in WIDTHS.items()}
    return keras.Model(inputs, head(inputs))


def test_all_heads_registered():
    for name in MAIN_HEADS + ["fcn_aux"]:
        assert name in HEADS
    with pytest.raises(ValueError, match="Valid heads"):
        build_head("no_such_head", K)


def _check_shapes(name, out, size, eps):
    res = eps["c2"].shape[1] if name in OS4_HEADS else size
    assert tuple(out["logits"].shape) == (2, res, res, K)
    assert tuple(out["feature"].shape[:3]) == (2, res, res)
    if name == "ocr":
        assert tuple(out["aux_logits"].shape) == (2, size, size, K)
        assert build_head("ocr", K).provides_aux_logits
    else:
        assert "aux_logits" not in out


@pytest.mark.parametrize("variant", ["car", "mmseg"])
@pytest.mark.parametrize("name", MAIN_HEADS)
def test_head_shapes_with_and_without_car(name, variant):
    """Odd (9) and even (8) feature maps; with CAR the feature has min(Cin, F) channels
    (Cin = the width the head's own end conv reads) and the end conv is replaced."""
    plain = _head(name, variant=variant)
    head = _head(name, variant=variant, car=dict(filters=8))
    for size in (9, 8):
        eps = _endpoints(size)
        out_plain = plain(eps, training=False)
        _check_shapes(name, out_plain, size, eps)
        out = head(eps, training=False)
        _check_shapes(name, out, size, eps)
        cin = out_plain["feature"].shape[-1]
        assert out["feature"].shape[-1] == min(cin, 8)
    assert plain.car is None and plain.end_conv is not None
    assert head.end_conv is None
    assert isinstance(head.car, CARBlock) and head.car.end_conv is not None
    assert head.car.end_conv.kernel_size == 1
    # A projection wider than Cin keeps Cin channels; without the CAR end conv the
    # classifier reads z directly.
    if variant == "car":
        wide = _head(name, car=dict(filters=1000, apply_end_conv=False))
        eps = _endpoints(9)
        out = wide(eps, training=False)
        assert out["feature"].shape[-1] == cin
        assert wide.car.end_conv is None and wide.classifier.kernel.shape[-2] == cin


@pytest.mark.parametrize("name", MAIN_HEADS)
def test_default_car_settings(name):
    head = build_head(name, K)
    filters, rates = CAR_SETTINGS[name]
    assert head.car_filters == filters
    assert tuple(head.car_pooling_rates) == rates
    assert head.get_config()["car"] is None
    resolved = build_head(name, K, car={}).get_config()["car"]
    assert (resolved["filters"], resolved["pooling_rates"]) == (filters, list(rates))


def test_danet_has_one_car_block_per_branch():
    eps = _endpoints(9)
    head = _head("danet", car=dict(filters=8))
    out = head(eps)
    assert head.car_cam is not None and head.cam_out_conv is None
    assert [f.shape[-1] for f in out["extra_features"]] == [8]


def test_fcn_aux_head():
    eps = _endpoints(9)
    head = build_head("fcn_aux", K, channels=8)
    out = head(eps, training=False)
    assert set(out) == {"logits"}
    assert tuple(out["logits"].shape) == (2, 9, 9, K)
    assert head.conv.kernel_size == 3 and head.conv.filters == 8
    assert head.dropout_rate == 0.1
    with pytest.raises(ValueError, match="never takes CAR"):
        build_head("fcn_aux", K, car={})


def test_variant_and_endpoint_errors():
    with pytest.raises(ValueError, match="unknown variant 'torch'.*car, mmseg"):
        build_head("fcn", K, variant="torch")
    eps = _endpoints(9)
    del eps["c2"]
    with pytest.raises(ValueError, match="upernet reads the backbone endpoint 'c2'"):
        _head("upernet")(eps)
    with pytest.raises(ValueError, match="output_stride"):
        build_head("deeplabv3", K, output_stride=4)


def test_layout_details():
    assert build_head("deeplabv3", K, output_stride=8).rates == (12, 24, 36)
    assert build_head("deeplabv3", K, output_stride=16).rates == (6, 12, 18)
    v3 = build_head("deeplabv3", K)
    assert v3.aspp.filters == 256 and v3.aspp.projection is None
    assert v3.end_conv.kernel_size == 1
    v3m = build_head("deeplabv3", K, variant="mmseg")
    assert v3m.aspp.filters == 512 and v3m.end_conv.kernel_size == 3
    plus = build_head("deeplabv3plus", K, variant="mmseg")
    assert plus.aspp.separable and plus.aspp.projection.kernel_size == 3
    assert not plus.align_corners
    up = build_head("upernet", K)
    assert up.ppm.kernel_size == 3 and up.align_corners
    assert build_head("upernet", K, variant="mmseg").ppm.kernel_size == 1
    assert build_head("danet", K).cam.transposed
    assert not build_head("danet", K, variant="mmseg").cam.transposed
    ocr = build_head("ocr", K, variant="mmseg")
    assert ocr.region_key == "c4" and ocr.region_channels == 256
    fcn = build_head("fcn", K)
    assert fcn.end_conv.filters == 256 and fcn.end_conv.kernel_size == 1


def test_fcn_hrnet_layout():
    # mmseg fcn_hr*: c5 (the HRNetV2 concat) -> ConvBNAct(width, 1x1) -> classifier
    head = build_head("fcn", K, variant="mmseg", channels=12, num_convs=1, kernel_size=1,
                      concat_input=False, dropout=0.0)
    eps = _endpoints(5)
    out = head(eps, training=True)
    assert head.convs == [] and head.end_conv.kernel_size == 1 and head.end_conv.name == "conv_0"
    want = head.classifier(head.end_conv(eps["c5"], training=True))
    np.testing.assert_allclose(np.asarray(out["logits"]), np.asarray(want), atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["feature"]), eps["c5"])  # CAR's hook
    assert out["classifier_input"].shape[-1] == 12  # SAR's feature: the 1x1 conv output
    with pytest.raises(ValueError, match="num_convs must be at least 1"):
        build_head("fcn", K, variant="mmseg", num_convs=0)


def test_nl_car_attention_is_residual_with_shared_init():
    eps = _endpoints(9)
    head = _head("nl")
    head(eps)
    att = head.attention
    assert att.residual and not att.scale and att.key_filters == 4
    assert att.value_conv.filters == 16
    # q and k start identical however the head is built (eagerly, or in a functional model
    # where Keras defers variable creation).
    for built in (head, _model(_head("nl")).layers[-1]):
        q, k = built.attention.query_conv, built.attention.key_conv
        np.testing.assert_array_equal(q.kernel.numpy(), k.kernel.numpy())
        assert np.abs(q.kernel.numpy()).max() > 0
