"""SegmentationModel on stand-in backbone/head instances (the named ones have own tests)."""

import keras
import numpy as np
import pytest

from iseg.heads.base import Head
from iseg.layers import ConvBNAct
from iseg.losses import pixel_cross_entropy
from iseg.models import SegmentationModel


def toy_backbone(width=8):
    inp = keras.Input((None, None, 3))
    stem = keras.layers.Conv2D(width, 3, strides=2, padding="same")(inp)
    c2 = keras.layers.Conv2D(width, 3, strides=2, padding="same")(stem)
    c3 = keras.layers.Conv2D(width, 3, strides=2, padding="same")(c2)
    c4 = keras.layers.Conv2D(width, 3, padding="same")(c3)
    c5 = keras.layers.Conv2D(width * 2, 3, padding="same")(c4)
    return keras.Model(inp, {"stem": stem, "c2": c2, "c3": c3, "c4": c4, "c5": c5})


@keras.saving.register_keras_serializable(package="iseg_test")
class ToyHead(Head):
    def __init__(self, num_classes, **kwargs):
        super().__init__(num_classes, **kwargs)
        self.body = ConvBNAct(8, 3, name="body")
        self._init_end(ConvBNAct(8, 1, name="end"))

    def call(self, endpoints, training=None):
        return self._classify(self.body(endpoints["c5"], training=training), training)


def make(**kw):
    model = SegmentationModel(toy_backbone(), ToyHead(3), num_classes=3, aux_weight=0, **kw)
    model.build((None, None, None, 3))
    return model


def batch(n=2, size=(33, 35), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n, *size, 3)).astype("float32")
    y = rng.integers(0, 3, size=(n, *size)).astype("int32")
    y[:, :3] = 255
    return x, y


def test_inference_logits_at_input_size_float32():
    model = make()
    x, _ = batch()
    out = model(x)
    assert out.shape == (2, 33, 35, 3)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"


def test_training_outputs_and_loss_terms():
    model = make(l2_weight_decay=1e-3)
    x, y = batch()
    out = model(x, training=True)
    assert set(out) == {"logits", "feature"}
    assert out["feature"].shape == (2, 5, 5, 8)  # input of the end conv, OS8 of 33x35
    terms = model.loss_terms(y, out)
    assert set(terms) == {"ce", "l2"}
    np.testing.assert_allclose(
        float(terms["ce"]), float(pixel_cross_entropy(y, out["logits"])), rtol=1e-6
    )
    kernels = [w for w in model.trainable_weights if w.path.endswith("kernel")]
    assert len(kernels) == 5 + 3  # 5 backbone convs, body, end conv, classifier
    l2 = sum(float(np.sum(np.square(np.asarray(w)))) for w in kernels)
    assert float(terms["l2"]) == pytest.approx(1e-3 * l2, rel=1e-5)


def test_fit_reports_terms_and_reduces_loss():
    model = make()
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    x, y = batch(4)
    hist = model.fit(x, y, batch_size=4, epochs=8, verbose=0)
    assert {"loss", "ce"} <= set(hist.history)
    assert hist.history["ce"][-1] < hist.history["ce"][0]


def test_unknown_reduction_is_reported():
    model = make(loss_reduction="median")
    x, y = batch()
    with pytest.raises(ValueError, match="median"):
        model.loss_terms(y, model(x, training=True))


def test_keras_round_trip(tmp_path):
    model = make(ignore_label=7, class_weights=[1.0, 2.0, 0.5])
    x, _ = batch()
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(np.asarray(restored(x)), np.asarray(model(x)), atol=1e-5)
    assert restored.ignore_label == 7 and restored.class_weights == [1.0, 2.0, 0.5]


def test_car_terms_match_functional_losses_and_train():
    from iseg.losses.car import car_multi_rate_losses

    head = ToyHead(3, car=dict(filters=4, pooling_rates=(1, 2), intra_loss_rate=2.0,
                               inter_loss_rate=0.5))
    model = SegmentationModel(toy_backbone(), head, num_classes=3, aux_weight=0)
    model.build((None, None, None, 3))
    x, y = batch()
    out = model(x, training=True)
    assert out["feature"].shape == (2, 5, 5, 4)  # CAR's linear projection z
    terms = model.loss_terms(y, out)
    ref = car_multi_rate_losses(out["feature"], y, 3, pooling_rates=(1, 2))
    assert float(terms["car_intra"]) == pytest.approx(2.0 * float(ref["intra"]), rel=1e-5)
    assert float(terms["car_inter_c2c"]) == pytest.approx(0.5 * float(ref["inter_c2c"]), rel=1e-5)
    assert float(terms["car_inter_c2p"]) == pytest.approx(0.5 * float(ref["inter_c2p"]), rel=1e-5)
    assert float(ref["intra"]) > 0 and float(ref["inter_c2p"]) > 0
    # inference carries no CAR loss and returns the logits only
    assert model(x).shape == (2, 33, 35, 3)
    model.compile(optimizer=keras.optimizers.SGD(1e-2))
    hist = model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert {"car_intra", "car_inter_c2c", "car_inter_c2p"} <= set(hist.history)


def test_car_ema_centres_are_model_state(tmp_path):
    head = ToyHead(3, car=dict(filters=4, use_ema_centers=True, ema_decay=0.5))
    model = SegmentationModel(toy_backbone(), head, num_classes=3, aux_weight=0)
    model.build((None, None, None, 3))
    (buffer,) = model.car_loss.ema_centers
    assert any(w is buffer for w in model.non_trainable_weights) and tuple(buffer.shape) == (3, 4)
    before = np.asarray(buffer).copy()
    x, y = batch()
    model.compile(optimizer=keras.optimizers.SGD(1e-2))
    model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    after = np.asarray(buffer)
    assert not np.allclose(before, after)
    path = tmp_path / "ema.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(np.asarray(restored.car_loss.ema_centers[0]), after)
