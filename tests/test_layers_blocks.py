"""ASPP, PPM, FPN, the DeepLabV3+ low-level fusion: structure and values; `.keras` round
trip of every layer of this group."""

import numpy as np
import pytest
import keras

from iseg import ops as iops
from iseg.layers import (
    ASPP,
    FPN,
    PPM,
    ChannelAttention,
    CrissCrossAttention,
    LowLevelFusion,
    NonLocal2d,
    ObjectContext,
    PositionAttention,
    SelfAttention,
    SeparableConvBNAct,
    adaptive_avg_pool2d,
)

RNG = np.random.default_rng(1)


def _x(size, channels=6, n=2):
    return RNG.normal(size=(n,) + size + (channels,)).astype("float32")


@pytest.mark.parametrize("size", [(9, 9), (8, 8)])
def test_aspp_branches_and_concat(size):
    x = _x(size)
    layer = ASPP(4, rates=(2, 3, 5))
    y = layer(x, training=False).numpy()
    assert y.shape == (2,) + size + (20,)
    # Concat order: image pooling, 1x1, then the atrous branches.
    parts = [layer.image_branch, layer.pixel_branch] + layer.atrous_branches
    for i, branch in enumerate(parts):
        np.testing.assert_allclose(
            y[..., 4 * i : 4 * (i + 1)], branch(x, training=False).numpy(), rtol=1e-5, atol=1e-6
        )
    assert [b.dilation_rate for b in layer.atrous_branches] == [2, 3, 5]
    # Image-level branch is constant over space.
    assert np.allclose(y[..., :4], y[:, :1, :1, :4])


def test_aspp_separable_with_projection():
    x = _x((9, 9))
    layer = ASPP(4, rates=(2, 4), separable=True, projection_filters=5, projection_kernel_size=3)
    y = layer(x, training=False)
    assert y.shape == (2, 9, 9, 5)
    assert all(isinstance(b, SeparableConvBNAct) for b in layer.atrous_branches)
    dw = layer.atrous_branches[0].depthwise
    assert dw.depthwise and dw.dilation_rate == 2
    assert layer.projection.kernel_size == 3
    with pytest.raises(ValueError, match="at least one branch"):
        ASPP(4, rates=(), image_pooling=False, pixel_level=False)


@pytest.mark.parametrize("size", [(9, 9), (8, 8), (7, 10)])
def test_ppm_matches_pool_conv_upsample(size):
    x = _x(size)
    layer = PPM(3, bins=(1, 2, 3, 6), kernel_size=1, align_corners=False)
    y = layer(x, training=False).numpy()
    assert y.shape == (2,) + size + (6 + 4 * 3,)
    np.testing.assert_allclose(y[..., :6], x)
    for i, (b, conv) in enumerate(zip(layer.bins, layer.branch_convs)):
        pooled = adaptive_avg_pool2d(x, b)
        branch = iops.resize(conv(pooled, training=False), size, "bilinear", False).numpy()
        np.testing.assert_allclose(y[..., 6 + 3 * i : 9 + 3 * i], branch, rtol=1e-5, atol=1e-5)
    # The bin-1 branch is constant over space.
    assert np.allclose(y[..., 6:9], y[:, :1, :1, 6:9], atol=1e-6)
    assert PPM(3, kernel_size=3).branch_convs[0].kernel_size == 3


def test_fpn_top_down_matches_manual():
    feats = [_x((17, 17), 3), _x((9, 9), 5), _x((5, 5), 4)]
    layer = FPN(4, process_top=False, align_corners=True)
    outs = [o.numpy() for o in layer(feats, training=False)]
    assert [o.shape for o in outs] == [(2, 17, 17, 4), (2, 9, 9, 4), (2, 5, 5, 4)]
    np.testing.assert_allclose(outs[-1], feats[-1])  # top passed through
    lat1 = layer.lateral_convs[1](feats[1], training=False) + iops.resize(
        feats[2], (9, 9), "bilinear", True
    )
    lat0 = layer.lateral_convs[0](feats[0], training=False) + iops.resize(
        lat1, (17, 17), "bilinear", True
    )
    np.testing.assert_allclose(
        outs[1], layer.output_convs[1](lat1, training=False).numpy(), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        outs[0], layer.output_convs[0](lat0, training=False).numpy(), rtol=1e-5, atol=1e-5
    )
    full = FPN(4)
    assert [o.shape[-1] for o in full(feats)] == [4, 4, 4]
    assert len(full.lateral_convs) == 3
    with pytest.raises(ValueError, match="coarsest input must have 4 channels"):
        FPN(4, process_top=False)([feats[0], _x((5, 5), 3)])


@pytest.mark.parametrize("separable,num_convs", [(False, 1), (True, 1), (False, 2)])
def test_low_level_fusion_matches_manual(separable, num_convs):
    x, low = _x((5, 5), 6), _x((17, 17), 3)
    layer = LowLevelFusion(4, low_level_filters=2, separable=separable, align_corners=True,
                           num_convs=num_convs)
    out = layer([x, low], training=False).numpy()
    assert out.shape == (2, 17, 17, 4)
    projected = layer.low_level_conv(low, training=False)
    up = iops.resize(x, (17, 17), "bilinear", True)
    want = np.concatenate([up, projected], -1)
    for conv in layer.decoder_convs:
        want = conv(want, training=False).numpy()
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    assert len(layer.decoder_convs) == num_convs
    assert isinstance(layer.decoder_convs[0], SeparableConvBNAct) == separable


def _single_input_layers():
    return [
        ASPP(4, rates=(2, 3)),
        ASPP(4, rates=(2,), separable=True, projection_filters=4, projection_kernel_size=3),
        SeparableConvBNAct(4, dilation_rate=2),
        SelfAttention(3, residual=True),
        NonLocal2d(),
        PPM(3, kernel_size=3),
        PositionAttention(),
        ChannelAttention(transposed=True),
        CrissCrossAttention(),
    ]


@pytest.mark.parametrize("index", range(9))
def test_layer_keras_round_trip(tmp_path, index):
    layer = _single_input_layers()[index]
    inp = keras.Input((None, None, 8))
    model = keras.Model(inp, layer(inp))
    for w in model.weights:  # non-trivial values everywhere (zero-initialised gammas too)
        if "variance" not in w.path:
            w.assign(RNG.normal(0, 0.3, tuple(w.shape)).astype("float32"))
    x = _x((9, 9), 8)
    path = tmp_path / "layer.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)
    assert loaded.layers[-1].get_config() == layer.get_config()


def test_multi_input_layers_keras_round_trip(tmp_path):
    c2, c3, c5 = (keras.Input((None, None, c)) for c in (3, 5, 4))
    logits = keras.Input((None, None, 5))
    fpn_out = FPN(4, process_top=False)([c2, c3, c5])
    ctx = ObjectContext(key_filters=4)([c5, logits])
    fused = LowLevelFusion(4, low_level_filters=2, separable=True)([c5, c2])
    model = keras.Model([c2, c3, c5, logits], fpn_out + [ctx, fused])
    data = [_x((17, 17), 3), _x((9, 9), 5), _x((9, 9), 4), _x((9, 9), 5)]
    path = tmp_path / "multi.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    for a, b in zip(model(data), loaded(data)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
