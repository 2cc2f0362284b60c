"""HFGD: multi-head axial attention oracle, Semantic FPN wiring, head shapes and round trip,
and the gradient routing of the stop-gradients (TF)."""

import numpy as np
import pytest
import tensorflow as tf

import keras

from iseg.layers import MultiHeadAxialAttention, SemanticFPN
from iseg.models import build_model
from iseg.ops import resize

K = 3
BACKBONE = dict(depths=(1, 1, 1, 1), widths=(4, 4, 8, 8), stem_width=8)
HEAD = dict(context_channels=8, num_heads=2, fpn_channels=4)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_multihead_axial_attention_matches_loop_oracle():
    layer = MultiHeadAxialAttention(filters=4, num_heads=2)
    x = np.random.default_rng(0).normal(size=(1, 3, 4, 6)).astype("float32")
    got = np.asarray(layer(x))
    q, k, v = (
        np.einsum("nhwc,cd->nhwd", x, np.asarray(c.kernel[0, 0])) + np.asarray(c.bias)
        for c in (layer.query_conv, layer.key_conv, layer.value_conv)
    )
    np.testing.assert_array_equal(layer.query_conv.kernel, layer.key_conv.kernel)  # shared init
    want = np.zeros_like(got)
    for head in range(2):
        qh, kh = q[0, ..., 2 * head : 2 * head + 2], k[0, ..., 2 * head : 2 * head + 2]
        vh = v[0, ..., 3 * head : 3 * head + 3]
        mid = np.zeros_like(vh)
        for a in range(3):  # column attention: query (a, w) over keys (b, w)
            for w in range(4):
                att = _softmax(np.array([qh[a, w] @ kh[b, w] for b in range(3)]) / np.sqrt(2))
                mid[a, w] = sum(att[b] * vh[b, w] for b in range(3))
        for h in range(3):  # row attention on the column result, with the same q, k
            for a in range(4):
                att = _softmax(np.array([qh[h, a] @ kh[h, b] for b in range(4)]) / np.sqrt(2))
                want[0, h, a, 3 * head : 3 * head + 3] = sum(att[b] * mid[h, b] for b in range(4))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_semantic_fpn_sums_upsampled_levels():
    rng = np.random.default_rng(1)
    feats = [rng.normal(size=(1, s, s, 3)).astype("float32") for s in (8, 4, 2)]
    block = SemanticFPN(5)
    got = np.asarray(block(feats))
    assert [len(c) for c in block.level_convs] == [1, 1, 2]
    total = block.level_convs[0][0](feats[0])
    total += resize(block.level_convs[1][0](feats[1]), (8, 8), align_corners=False)
    top = resize(block.level_convs[2][0](feats[2]), (4, 4), align_corners=False)
    total += resize(block.level_convs[2][1](top), (8, 8), align_corners=False)
    np.testing.assert_allclose(got, np.asarray(block.fuse(total)), atol=1e-5)


def _model(**head):
    keras.utils.set_random_seed(0)
    return build_model(
        "hfgd", "resnet18", K, backbone_options=BACKBONE, head_options={**HEAD, **head},
        aux_weight=0.0, input_shape=(64, 64, 3),
    )


def _data():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(2, 64, 64, 3)).astype("float32")
    y = rng.integers(0, K, size=(2, 64, 64)).astype("int32")
    return x, y


@pytest.mark.parametrize("output_stride", [4, 2])
def test_hfgd_shapes_and_round_trip(tmp_path, output_stride):
    model = _model(output_stride=output_stride)
    x, _ = _data()
    out = model(x, training=True)
    assert tuple(out["logits"].shape) == tuple(out["high_level_logits"].shape) == (2, 64, 64, K)
    size = 64 // output_stride
    assert tuple(out["feature"].shape) == (2, size, size, 8)
    head_out = model.head(model.backbone(x), training=True)
    assert "high_level_logits" not in model.head(model.backbone(x))  # inference: no branch
    assert tuple(head_out["high_level_logits"].shape) == (2, 2, 2, K)
    model.save(tmp_path / "m.keras")
    back = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(np.asarray(back(x)), np.asarray(model(x)), atol=1e-5)
    assert back.head.output_stride == output_stride
    with pytest.raises(ValueError, match="output_stride must be 2 or 4"):
        _model(output_stride=8)


def _groups(model):
    head = model.head
    return {
        "backbone": model.backbone.trainable_weights,
        "context": head.context.trainable_weights,
        "tokens": head.classifier.trainable_weights,
        "upsampler": (head.fpn.trainable_weights + head.semantic_fpn.trainable_weights
                      + head.up_projection.trainable_weights),
    }


def _grads(model, term):
    x, y = _data()
    groups = _groups(model)
    variables = [v.value for vs in groups.values() for v in vs]  # tf.Variables
    with tf.GradientTape() as tape:
        terms = model.loss_terms(y, model(x, training=True))
    zero = tf.UnconnectedGradients.ZERO
    grads = tape.gradient(terms[term], variables, unconnected_gradients=zero)
    out, i = {}, 0
    for name, vs in groups.items():
        out[name] = [g.numpy() for g in grads[i : i + len(vs)]]
        i += len(vs)
    return out


def _norm(grads):
    return sum(float(np.abs(g).sum()) for g in grads)


def test_hfgd_gradient_routing():
    model = _model()
    up = _grads(model, "ce")
    assert _norm(up["backbone"]) == _norm(up["context"]) == _norm(up["tokens"]) == 0.0
    assert all(np.abs(g).sum() > 0 for g in up["upsampler"] if g.ndim > 1)
    high = _grads(model, "high_level")
    assert _norm(high["upsampler"]) == 0.0
    for name in ("backbone", "context", "tokens"):
        assert _norm(high[name]) > 0, name


def test_hfgd_gradient_scale_multiplies_the_upsampler_gradient():
    full = _model(gradient_scale=1.0)
    scaled = _model(gradient_scale=0.25)
    scaled.set_weights(full.get_weights())
    a, b = _grads(full, "ce"), _grads(scaled, "ce")
    assert _norm(a["backbone"]) > 0
    for name in ("backbone", "context", "tokens"):
        for ga, gb in zip(a[name], b[name]):
            np.testing.assert_allclose(gb, 0.25 * ga, rtol=1e-4, atol=1e-7)
    for ga, gb in zip(a["upsampler"], b["upsampler"]):
        np.testing.assert_allclose(gb, ga, rtol=1e-4, atol=1e-7)
