"""CARD head: layout, the CAR hook, the zoo name turning CAR on, round trip, gradients."""

import numpy as np
import pytest
import tensorflow as tf

import keras

from iseg.heads import build_head
from iseg.layers import ContextModule
from iseg.models import build_model_from_name, parse_model_name

K = 4
TINY = dict(channels=8, num_heads=2, decoder_channels=6, low_level_channels=3)


def _endpoints(seed=0):
    rng = np.random.default_rng(seed)
    sizes = {"c2": (16, 12, 5), "c3": (8, 6, 6), "c4": (4, 3, 7), "c5": (2, 2, 9)}
    return {k: rng.normal(size=(2, *s)).astype("float32") for k, s in sizes.items()}


@pytest.mark.parametrize("use_car", [False, True])
def test_card_layout_and_car_hook(use_car):
    head = build_head("card", K, car=dict(filters=5) if use_car else None, **TINY)
    eps = _endpoints()
    out = head(eps, training=True)
    assert tuple(out["logits"].shape) == (2, 16, 12, K)  # at c2's size
    # CAR: the feature is z (F channels), the CAR end conv feeds the classifier;
    # without CAR the decoder output (decoder_channels) goes to the classifier directly.
    assert out["feature"].shape[-1] == (5 if use_car else 6)
    assert head.classifier.kernel.shape[-2] == (5 if use_car else 6)
    assert (head.car is not None) == use_car and head.end_conv is None
    mixer = head.token_mixer
    manual = head.decoder.low_level_conv(eps["c2"])
    assert manual.shape[-1] == 3 and mixer(eps["c5"]).shape[-1] == 8


def test_card_zoo_name_turns_car_on_and_round_trips(tmp_path):
    assert parse_model_name("card_resnet18")["car"] == {}
    assert "car" not in parse_model_name("upernet_resnet18")
    keras.utils.set_random_seed(0)
    model = build_model_from_name(
        "card_resnet18", K, backbone_options=dict(depths=(1, 1, 1, 1), widths=(4, 4, 8, 8),
                                                  stem_width=8),
        head_options=TINY, car=dict(filters=5), aux_weight=0.0,
    )
    assert model.head.use_car and model.car_loss is not None
    x = np.random.default_rng(1).uniform(-1, 1, size=(1, 64, 64, 3)).astype("float32")
    model.save(tmp_path / "card.keras")
    back = keras.saving.load_model(tmp_path / "card.keras")
    np.testing.assert_allclose(np.asarray(back(x)), np.asarray(model(x)), atol=1e-5)


@pytest.mark.parametrize("mixer", ["axial", "caa"])
def test_card_gradient_reaches_every_weight(mixer):
    head = build_head("card", K, car=dict(filters=5), mixer=mixer, **TINY)
    eps = _endpoints(3)
    head(eps)
    rng = np.random.default_rng(5)
    with tf.GradientTape() as tape:
        out = head(eps, training=True)
        loss = sum(tf.reduce_mean(t * rng.normal(size=t.shape).astype("float32"))
                   for t in (out["logits"], out["feature"]))
    grads = tape.gradient(loss, head.trainable_weights)
    for w, g in zip(head.trainable_weights, grads):
        assert g is not None and np.abs(g.numpy()).max() > 0, w.path


def test_context_module_rejects_unknown_mixer():
    with pytest.raises(ValueError, match="unknown mixer 'conv'. Valid mixers: axial, caa"):
        ContextModule(8, mixer="conv")
