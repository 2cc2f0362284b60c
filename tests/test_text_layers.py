"""FACLSTM layers: the ConvLSTM cell against a NumPy loop, attention weights, the decoder,
the models' outputs, losses and `.keras` round trips."""

import keras
import numpy as np
import pytest

from iseg.text import CRNN, FACLSTM, ConvLSTMCell, FocusedAttention, FocusedAttentionDecoder
from iseg.text.layers import focus_features

TINY = dict(max_length=4, image_size=(16, 24), encoder_options=dict(
    stages=((4, 1, (2, 2)), (8, 1, (2, 1)))))
FAC = dict(TINY, decoder_filters=6, attention_units=5, embed_dim=3, mask_filters=4)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _conv_same(x, kernel):
    """Plain 'same' convolution by a loop over the kernel offsets."""
    kh, kw = kernel.shape[:2]
    n, h, w, _ = x.shape
    pad = np.pad(x, [(0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)])
    out = np.zeros((n, h, w, kernel.shape[-1]))
    for i in range(kh):
        for j in range(kw):
            out += pad[:, i:i + h, j:j + w, :] @ kernel[i, j]
    return out


def test_convlstm_cell_matches_numpy_loop():
    rng = np.random.default_rng(0)
    cell = ConvLSTMCell(3, kernel_size=3, forget_bias=1.0)
    xs = rng.normal(size=(4, 2, 5, 6, 2)).astype("float32")  # T, N, H, W, C
    cell.build(xs[0].shape)
    cell.bias.assign(rng.normal(size=(12,)).astype("float32"))
    gate_bias = rng.normal(size=(2, 12)).astype("float32")
    kernel, bias = np.asarray(cell.kernel), np.asarray(cell.bias)
    h = c = np.zeros((2, 5, 6, 3))
    kh, kc = cell.initial_state(xs[0])
    for x in xs:
        z = _conv_same(np.concatenate([x, h], -1), kernel) + bias + gate_bias[:, None, None]
        i, f, g, o = np.split(z, 4, axis=-1)
        c = _sigmoid(f + 1.0) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
        kh, kc = cell(x, kh, kc, gate_bias=gate_bias)
        np.testing.assert_allclose(np.asarray(kh), h, atol=1e-5)
        np.testing.assert_allclose(np.asarray(kc), c, atol=1e-5)


def test_attention_weights_sum_to_one_over_the_map():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(3, 4, 7, 8)).astype("float32")
    hidden = rng.normal(size=(3, 4, 7, 5)).astype("float32")
    att = FocusedAttention(6)
    att.build(features.shape[:-1] + (6,), hidden.shape, features.shape)
    glimpse, alpha = att(att.keys(features), hidden, features)
    alpha = np.asarray(alpha)
    assert alpha.shape == (3, 4, 7)
    np.testing.assert_allclose(alpha.sum(axis=(1, 2)), 1.0, atol=1e-5)
    assert (alpha > 0).all() and alpha.std() > 1e-4  # depends on the position
    np.testing.assert_allclose(np.asarray(glimpse), features * alpha[..., None] * 28, atol=1e-5)


def test_focus_modes():
    f, m = np.full((1, 2, 2, 1), 2.0), np.array([0.0, 0.5, 1.0, 0.25]).reshape(1, 2, 2, 1)
    np.testing.assert_allclose(focus_features(f, m, "residual"), 2 * (1 + m))
    np.testing.assert_allclose(focus_features(f, m, "multiply"), 2 * m)
    np.testing.assert_allclose(focus_features(f, m, "none"), f)
    with pytest.raises(ValueError, match="focus must be one of"):
        focus_features(f, m, "add")


def test_decoder_teacher_forcing_shapes_and_causality():
    rng = np.random.default_rng(2)
    dec = FocusedAttentionDecoder(5, filters=4, attention_units=3, embed_dim=2)
    features = rng.normal(size=(2, 3, 6, 7)).astype("float32")
    dec.build(features.shape)
    prev = np.array([[5, 1, 2, 3], [5, 4, 4, 0]], "int32")
    logits, alpha = dec(features, prev)
    assert logits.shape == (2, 4, 5) and alpha.shape == (2, 4, 3, 6)
    changed = prev.copy()
    changed[:, 2] = 1  # the input of step 2 cannot change steps 0 and 1
    logits2, _ = dec(features, changed)
    np.testing.assert_allclose(np.asarray(logits)[:, :2], np.asarray(logits2)[:, :2], atol=1e-6)
    assert not np.allclose(np.asarray(logits)[:, 2], np.asarray(logits2)[:, 2])


@pytest.mark.parametrize("pooling,units", [("avg", 0), ("max", 0), ("avg", 7)])
def test_decoder_classifier_reads_pooled_state_and_context(pooling, units):
    rng = np.random.default_rng(4)
    dec = FocusedAttentionDecoder(5, filters=4, attention_units=3, embed_dim=2,
                                  pooling=pooling, classifier_units=units)
    features = rng.normal(size=(2, 3, 6, 7)).astype("float32")
    dec.build(features.shape)
    constants, state = dec.start(features)
    logits, alpha, (h, _, _) = dec.step(np.array([5, 2], "int32"), constants, state)
    h, alpha = np.asarray(h), np.asarray(alpha)
    pooled = h.mean(axis=(1, 2)) if pooling == "avg" else h.max(axis=(1, 2))
    read = np.concatenate([pooled, (features * alpha[..., None]).sum(axis=(1, 2))], axis=-1)
    if units:
        w1, b1 = (np.asarray(v) for v in dec.classifier_hidden.weights)
        read = np.maximum(read @ w1 + b1, 0)
    w2, b2 = (np.asarray(v) for v in dec.classifier.weights)
    np.testing.assert_allclose(np.asarray(logits), read @ w2 + b2, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls,options", [(FACLSTM, FAC), (FACLSTM, dict(FAC, encoder="resnet")),
                                         (FACLSTM, dict(FAC, classifier_units=8)),
                                         (CRNN, dict(TINY, hidden=6, num_layers=1))])
def test_model_outputs_loss_and_keras_round_trip(cls, options, tmp_path):
    rng = np.random.default_rng(3)
    model = cls(**options)
    images = rng.uniform(-1, 1, size=(2, 16, 24, 1)).astype("float32")
    tokens = np.array([[3, 7, 0, -1, -1], [12, 0, -1, -1, -1]], "int32")
    mask = np.zeros((2, 16, 24), "float32")
    mask[:, 4:12, 2:10] = 1
    out = model({"images": images, "tokens": tokens}, training=True)
    boxes = np.zeros((2, 4, 4), "float32")
    boxes[0, :2] = [[2, 4, 8, 12], [9, 3, 15, 13]]
    y = {"tokens": tokens, "mask": mask, "boxes": boxes,
         "mask_weight": np.array([1.0, 0.0], "float32")}
    loss = float(model.compute_loss(y=y, y_pred=out))
    assert np.isfinite(loss) and loss > 0
    if cls is FACLSTM:
        assert out["logits"].shape == (2, 5, 37) and out["mask_logits"].shape == (2, 4, 12, 1)
        # ce: the mean CE over the 5 label positions that are not padding
        logp = np.asarray(keras.ops.log_softmax(out["logits"]))
        ce = -np.mean([logp[0, 0, 3], logp[0, 1, 7], logp[0, 2, 0], logp[1, 0, 12],
                       logp[1, 1, 0]])
        np.testing.assert_allclose(float(model.ce_tracker.result()), ce, rtol=1e-5)
    tokens_out, scores = model.recognize(images)
    assert np.asarray(scores).shape == (2,)
    assert ((np.asarray(scores) > 0) & (np.asarray(scores) <= 1)).all()
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(np.asarray(loaded.recognize(images)[0]), np.asarray(tokens_out))


def test_mask_loss_against_numpy():
    model = FACLSTM(**dict(FAC, mask_loss_weight=1.0))
    model.build(model.input_shape_for())
    rng = np.random.default_rng(4)
    mask = (rng.uniform(size=(2, 16, 24)) > 0.7).astype("float32")
    logits = rng.normal(size=(2, 4, 12, 1)).astype("float32")
    weight = np.array([1.0, 0.0], "float32")
    target = mask[0].reshape(4, 4, 12, 2).mean(axis=(1, 3))  # encoder stride (4, 2)
    p = _sigmoid(logits[0, ..., 0])
    expected = -np.mean(target * np.log(p) + (1 - target) * np.log(1 - p))
    np.testing.assert_allclose(float(model.mask_loss(mask, weight, logits)), expected, rtol=1e-4)


def test_unknown_model_and_charset_errors():
    from iseg.text import build_text_model
    from iseg.text.charset import Charset

    with pytest.raises(ValueError, match="Unknown text model 'lstm'. Valid text models: crnn, "
                                         "faclstm"):
        build_text_model("lstm")
    with pytest.raises(ValueError, match="classifier_units must be >= 0, got -3"):
        build_text_model("faclstm", classifier_units=-3)
    with pytest.raises(ValueError, match="repeated characters 'a'"):
        Charset("abca")
    with pytest.raises(ValueError, match="characters '#' are not in the charset"):
        Charset().encode("ab#", 5)
    with pytest.raises(ValueError, match="more than max_length=2"):
        Charset().encode("abc", 2)
    np.testing.assert_array_equal(Charset().encode("Ab1", 5), [11, 12, 2, 0, -1, -1])
    assert Charset().decode([11, 12, 2, 0, 5, -1]) == "ab1"


def test_attention_loss_against_numpy():
    model = FACLSTM(**FAC)
    model.build(model.input_shape_for())
    rng = np.random.default_rng(5)
    att = rng.uniform(0.1, 1, size=(2, 5, 4, 12)).astype("float32")
    att /= att.sum(axis=(2, 3), keepdims=True)
    boxes = np.zeros((2, 4, 4), "float32")
    boxes[0, :2] = [[2, 4, 8, 12], [9, 0, 15, 16]]
    boxes[1, :1] = [[0, 0, 4, 4]]
    tokens = np.array([[3, 7, 0, -1, -1], [12, 0, -1, -1, -1]], "int32")
    weight = np.array([1.0, 1.0], "float32")
    terms = []
    for n, t in [(0, 0), (0, 1), (1, 0)]:  # the three characters; stride (4, 2)
        x0, y0, x1, y1 = boxes[n, t]
        cx, cy = (x0 + x1) / 4, (y0 + y1) / 8
        sx, sy = max((x1 - x0) / 8, 0.5), max((y1 - y0) / 16, 0.5)
        g = np.array([[np.exp(-((j + 0.5 - cx) ** 2) / (2 * sx ** 2)
                              - ((i + 0.5 - cy) ** 2) / (2 * sy ** 2)) for j in range(12)]
                      for i in range(4)])
        g /= g.sum()
        terms.append(-(g * np.log(att[n, t] + 1e-8)).sum())
    got = float(model.attention_loss(boxes, tokens, weight, att))
    np.testing.assert_allclose(got, np.mean(terms), rtol=1e-4)
    # images without boxes (weight 0) do not count
    got0 = float(model.attention_loss(boxes, tokens, np.array([1.0, 0.0], "float32"), att))
    np.testing.assert_allclose(got0, np.mean(terms[:2]), rtol=1e-4)
