"""Backbones on tiny configurations: registry, endpoint shapes, dilation layout,
serialization, gradients."""

import numpy as np
import pytest

import keras
from keras import ops

from iseg.backbones import (
    BACKBONES,
    ENDPOINTS,
    ResNetBlock,
    backbone_normalization,
    build_backbone,
    endpoint_channels,
)

TINY = {
    "resnet18": dict(depths=(1, 1, 1, 2), widths=(4, 8, 8, 8), stem_width=8),
    "resnet50": dict(depths=(1, 1, 2, 3), widths=(4, 4, 8, 8), stem_width=8),
    "resnet50_d8": dict(depths=(2, 2, 2, 3), widths=(4, 4, 8, 8), stem_width=4),
    "resnet101_d16": dict(depths=(2, 2, 2, 3), widths=(4, 4, 8, 8), stem_width=4),
    "convnext_tiny": dict(depths=(1, 1, 2, 1), widths=(8, 8, 16, 16)),
    "swin_tiny": dict(depths=(2, 2, 2, 2), embed_dim=8, num_heads=(1, 2, 2, 4)),
}


def _ceil(n, s):
    return -(-n // s)


def _expected_sizes(name, n):
    """Endpoint sizes written from each architecture's description."""
    if name.startswith("resnet"):
        stem = _ceil(n, 2)
        c2 = _ceil(stem, 2)
        c3 = _ceil(c2, 2)
        if name.endswith("_d8"):
            return dict(stem=stem, c2=c2, c3=c3, c4=c3, c5=c3)
        c4 = _ceil(c3, 2)
        if name.endswith("_d16"):
            return dict(stem=stem, c2=c2, c3=c3, c4=c4, c5=c4)
        return dict(stem=stem, c2=c2, c3=c3, c4=c4, c5=_ceil(c4, 2))
    if name.startswith("convnext"):  # valid 4x4/4 then 2x2/2 convs: floor
        c2 = n // 4
        return dict(stem=c2, c2=c2, c3=c2 // 2, c4=c2 // 4, c5=c2 // 8)
    c2 = _ceil(n, 4)  # swin pads to the patch and to even sizes: ceil
    return dict(stem=c2, c2=c2, c3=_ceil(c2, 2), c4=_ceil(c2, 4), c5=_ceil(c2, 8))


_MODELS = {}


def _tiny(name):
    if name not in _MODELS:
        keras.utils.set_random_seed(0)
        _MODELS[name] = build_backbone(name, **TINY[name])
    return _MODELS[name]


def test_registry_names_and_unknown_name():
    expected = {
        "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
        "resnet50_d8", "resnet101_d8", "resnet50_d16", "resnet101_d16",
        "convnext_tiny", "convnext_small", "convnext_base", "convnext_large", "convnext_xlarge",
        "swin_tiny", "swin_small", "swin_base", "swin_large", "swin_base_w12", "swin_large_w12",
    }
    assert expected <= set(BACKBONES.names())
    with pytest.raises(ValueError, match="resnet50_d8"):
        build_backbone("resnet51")


def test_unknown_and_invalid_options():
    with pytest.raises(ValueError, match="Unknown option 'widht'"):
        build_backbone("resnet50", widht=3)
    with pytest.raises(ValueError, match="output_stride 32 only"):
        build_backbone("swin_tiny", output_stride=8, **TINY["swin_tiny"])
    with pytest.raises(ValueError, match="output_stride must be 8, 16 or 32"):
        build_backbone("resnet18", output_stride=4, **TINY["resnet18"])
    with pytest.raises(ValueError, match="stride_in"):
        build_backbone("resnet18", stride_in="middle", **TINY["resnet18"])


@pytest.mark.parametrize("name", sorted(TINY))
def test_endpoint_shapes_odd_and_even(name):
    model = _tiny(name)
    channels = model.endpoint_channels
    assert set(model.output) == set(ENDPOINTS)
    assert endpoint_channels(model) == channels
    for n in (33, 32):
        out = model(np.random.default_rng(0).normal(size=(2, n, n, 3)).astype("float32"))
        sizes = _expected_sizes(name, n)
        for key in ENDPOINTS:
            assert tuple(out[key].shape) == (2, sizes[key], sizes[key], channels[key]), (key, n)


def test_d8_on_513_gives_65_and_reference_channels():
    # static shapes from compute_output_shape: no forward pass needed
    model = build_backbone("resnet50_d8", input_shape=(513, 513, 3), depths=(2, 2, 2, 3))
    shapes = {k: tuple(v.shape) for k, v in model.output.items()}
    assert shapes == {
        "stem": (None, 257, 257, 128), "c2": (None, 129, 129, 256),
        "c3": (None, 65, 65, 512), "c4": (None, 65, 65, 1024), "c5": (None, 65, 65, 2048),
    }
    even = build_backbone("resnet50_d8", input_shape=(512, 512, 3), depths=(2, 2, 2, 3))
    assert [tuple(even.output[k].shape[1:3]) for k in ENDPOINTS] == [
        (256, 256), (128, 128), (64, 64), (64, 64), (64, 64)
    ]
    small = build_backbone("resnet50_d8", **TINY["resnet50_d8"])
    assert tuple(small(np.zeros((1, 65, 65, 3), "float32"))["c5"].shape[1:3]) == (9, 9)


def _layout(model):
    """{block name: (stride of its strided conv, dilation of its 3x3 conv)}."""
    out = {}
    for block in model.layers:
        if isinstance(block, ResNetBlock):
            strides = [c.strides[0] for c in block.convs]
            out[block.name] = (max(strides), block.convs[1].dilation_rate[0])
    return out


def test_dilation_layout_d8_slim_style():
    # REFERENCE.md: stride in the last block of conv2..conv4; for OS8 the stride of
    # conv3's last block becomes dilation 2, conv4 runs at 2 and its last block at 4,
    # conv5 at 4 x multi-grid (1, 2, 4).
    model = build_backbone("resnet50_d8", depths=(3, 4, 6, 3), widths=(2, 2, 2, 2), stem_width=2)
    lay = _layout(model)
    assert lay["conv2_block3"] == (2, 1)
    assert [lay[f"conv3_block{j}"] for j in range(1, 5)] == [(1, 1)] * 3 + [(1, 2)]
    assert [lay[f"conv4_block{j}"] for j in range(1, 7)] == [(1, 2)] * 5 + [(1, 4)]
    assert [lay[f"conv5_block{j}"] for j in range(1, 4)] == [(1, 4), (1, 8), (1, 16)]
    assert model.get_layer("conv2_block3").shortcut == "avg_pool"
    assert model.get_layer("conv2_block1").shortcut == "conv"


def test_dilation_layout_torch_style_os8_os16_os32():
    kw = dict(depths=(3, 4, 6, 3), widths=(2, 2, 2, 2), stem_width=2, stride_in="first")
    lay = _layout(build_backbone("resnet50_d8", **kw))
    assert lay["conv3_block1"] == (2, 1)
    assert all(lay[f"conv4_block{j}"] == (1, 2) for j in range(1, 7))
    assert [lay[f"conv5_block{j}"] for j in range(1, 4)] == [(1, 4), (1, 8), (1, 16)]
    lay = _layout(build_backbone("resnet50_d16", **kw))
    assert lay["conv4_block1"] == (2, 1)
    assert [lay[f"conv5_block{j}"] for j in range(1, 4)] == [(1, 2), (1, 4), (1, 8)]
    lay = _layout(build_backbone("resnet50", depths=(3, 4, 6, 3), widths=(2, 2, 2, 2)))
    assert [lay[f"conv{s}_block1"][0] for s in (2, 3, 4, 5)] == [1, 2, 2, 2]
    assert all(d == 1 for _, d in lay.values())


def test_stride_in_1x1_option_moves_the_stride():
    model = build_backbone("resnet50", stride_conv="1x1", **TINY["resnet50"])
    block = model.get_layer("conv3_block1")
    assert [c.strides[0] for c in block.convs] == [2, 1, 1]


@pytest.mark.parametrize("name", ["resnet50_d8", "convnext_tiny", "swin_tiny"])
def test_keras_round_trip(name, tmp_path):
    keras.utils.set_random_seed(1)
    extra = {"input_convention": "caffe"} if name.startswith("resnet") else {}
    model = build_backbone(name, drop_path_rate=0.1, **extra, **TINY[name])
    x = np.random.default_rng(1).normal(size=(1, 33, 33, 3)).astype("float32")
    before = model(x)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    after = loaded(x)
    for key in ENDPOINTS:
        np.testing.assert_allclose(np.asarray(before[key]), np.asarray(after[key]), atol=1e-6)
    assert endpoint_channels(loaded) == model.endpoint_channels


def _gradients(model, x):
    def loss_fn(outputs):
        return sum(ops.mean(ops.square(outputs[k])) for k in ENDPOINTS)

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn(model(x, training=True))
        return tape.gradient(loss, model.trainable_variables)
    if backend == "jax":
        import jax

        trainable = [v.value for v in model.trainable_variables]
        frozen = [v.value for v in model.non_trainable_variables]

        def f(tv):
            out, _ = model.stateless_call(tv, frozen, x, training=True)
            return loss_fn(out)

        return jax.grad(f)(trainable)
    pytest.skip(f"gradient check not written for backend {backend}")


@pytest.mark.parametrize("name", ["resnet50_d8", "resnet18", "convnext_tiny", "swin_tiny"])
def test_gradients_reach_every_trainable_weight(name):
    model = _tiny(name)
    x = np.random.default_rng(2).normal(size=(2, 32, 32, 3)).astype("float32")
    grads = _gradients(model, x)
    assert len(grads) == len(model.trainable_variables) > 0
    dead = [
        v.path for v, g in zip(model.trainable_variables, grads)
        if g is None or not np.any(np.asarray(g) != 0)
    ]
    assert not dead


def test_drop_path_is_identity_at_inference_and_scales_in_training():
    from iseg.backbones import DropPath

    layer = DropPath(0.5, seed=3)
    x = np.ones((64, 2, 2, 1), "float32")
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
    y = np.asarray(layer(x, training=True))
    per_sample = y.reshape(64, -1)
    assert set(np.unique(per_sample)) <= {0.0, 2.0}
    assert np.all(per_sample.min(1) == per_sample.max(1))  # whole sample kept or dropped
    assert 0 < (per_sample[:, 0] == 0).sum() < 64


def test_backbone_normalization():
    # every supported weight source expects (or is converted to) ImageNet mean/std input
    for name in ("convnext_tiny", "swin_base_w12", "resnet50_d8", "resnet50"):
        assert backbone_normalization(name) == "imagenet"
    assert backbone_normalization("resnet50", weights="imagenet") == "imagenet"
    with pytest.raises(ValueError, match="Unknown backbone"):
        backbone_normalization("vgg16")


@pytest.mark.parametrize("name", ["resnet50_d8", "swin_tiny"])
def test_traced_with_unknown_spatial_size(name):
    # a graph traced for [None, None, None, 3] takes the dynamic-shape paths (padding,
    # shift mask, window partition) and must agree with the eager call
    if keras.backend.backend() != "tensorflow":
        pytest.skip("tf.function tracing with unknown sizes is TensorFlow-specific")
    import tensorflow as tf

    model = _tiny(name)
    fn = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)],
    )
    x = np.random.default_rng(4).normal(size=(1, 33, 35, 3)).astype("float32")
    traced, eager = fn(x), model(x)
    for key in ENDPOINTS:
        np.testing.assert_allclose(np.asarray(traced[key]), np.asarray(eager[key]), atol=1e-5)
    assert traced["c2"].shape[1:3] == tuple(
        _expected_sizes(name, 33)["c2"] if i == 0 else _expected_sizes(name, 35)["c2"]
        for i in range(2)
    )


def test_same_padding_equals_symmetric_on_odd_sizes_only():
    # TF SAME (the original) pads bottom/right on even sizes; on odd sizes it is symmetric
    from iseg.backbones import ResNetStem

    sym = ResNetStem("deep", 4, padding="symmetric")
    same = ResNetStem("deep", 4, padding="same")
    for layer in (sym, same):
        layer.build((None, None, None, 3))
    same.set_weights(sym.get_weights())
    rng = np.random.default_rng(8)
    odd = rng.normal(size=(1, 33, 33, 3)).astype("float32")
    even = rng.normal(size=(1, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(sym(odd)), np.asarray(same(odd)), atol=1e-5)
    assert np.abs(np.asarray(sym(even)) - np.asarray(same(even))).max() > 1e-3
