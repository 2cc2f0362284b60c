"""Smoke run on whatever KERAS_BACKEND is set: build, forward, one train step.

Run by tests/test_backends.py in a subprocess (the backend is fixed at import time).
Exits non-zero with a message on any failure.
"""

import os
import sys

import keras
import numpy as np

from iseg.models import build_model_from_name

BACKBONE = dict(depths=(1, 1, 1, 1), widths=(4, 4, 8, 8), stem_width=8)
MODELS = {  # name: (head options, CAR options); card_* has CAR on by default
    "fcn_resnet50_d8": (dict(channels=16), {}),
    "caa_resnet50_d8": (dict(channels=16, end_channels=8, guide_filters=4, mlp_hidden=4), {}),
    "hfgd_resnet18": (dict(context_channels=8, num_heads=2, fpn_channels=4), None),
    # CARD also carries SAR and the SDN neck (on c5 and c2, guided by c5 and c3)
    "card_resnet18": (dict(channels=8, num_heads=2, decoder_channels=8, low_level_channels=4),
                      dict(filters=8)),
}


def check_gradient_scale():
    """A training step through GradientScale: scale 0 freezes what lies before it."""
    from iseg.layers import GradientScale

    for scale, moves in ((0.0, False), (0.5, True)):
        inputs = keras.Input((4,))
        first = keras.layers.Dense(3, name="first")
        y = keras.layers.Dense(2, name="second")(GradientScale(scale)(first(inputs)))
        model = keras.Model(inputs, y)
        x = np.ones((2, 4), "float32")
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(model(x)),
            keras.ops.convert_to_numpy(model.get_layer("second")(first(x))),
        )
        before = keras.ops.convert_to_numpy(first.kernel).copy()
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        model.fit(x, np.ones((2, 2), "float32"), verbose=0)
        moved = not np.allclose(before, keras.ops.convert_to_numpy(first.kernel))
        assert moved == moves, (scale, moved)
    print("gradient scale: ok")


def check_correlation_head():
    """CorrMatch's correlation head: forward (rows of A sum to 1) and a training step that
    moves the projection; the logits input gets no gradient."""
    from iseg.layers import CorrelationHead

    feature, logits = keras.Input((4, 4, 6)), keras.Input((8, 8, 3))
    out, affinity = CorrelationHead(3, channels=8, name="corr")(feature, logits)
    model = keras.Model([feature, logits], out)
    rng = np.random.default_rng(0)
    x = [rng.normal(size=(2, 4, 4, 6)).astype("float32"),
         rng.normal(size=(2, 8, 8, 3)).astype("float32")]
    rows = keras.ops.convert_to_numpy(keras.Model([feature, logits], affinity)(x)).sum(-1)
    np.testing.assert_allclose(rows, 1.0, atol=1e-5)
    before = [keras.ops.convert_to_numpy(w).copy() for w in model.trainable_weights]
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(x, np.ones((2, 4, 4, 3), "float32"), verbose=0)
    moved = {w.path for b, w in zip(before, model.trainable_weights)
             if not np.allclose(b, keras.ops.convert_to_numpy(w))}
    # all but two biases without gradient: the projection conv's (BN removes it) and
    # f2's (it adds a constant to each softmax row)
    assert moved == {w.path for w in model.trainable_weights} - {
        "corr/proj/conv/bias", "corr/f2/bias"}, moved
    print("correlation head: ok")


def main():
    assert keras.backend.backend() == os.environ["KERAS_BACKEND"], keras.backend.backend()
    check_gradient_scale()
    check_correlation_head()
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(2, 33, 33, 3)).astype("float32")
    y = rng.integers(0, 3, size=(2, 33, 33)).astype("int32")
    y[:, :4] = 255
    for name, (head_options, car) in MODELS.items():
        model = build_model_from_name(
            name, 3, backbone_options=BACKBONE, head_options=head_options,
            aux_options=dict(channels=8), car=car,
            sar={} if name.startswith("card") else None,
            neck="sdn" if name.startswith("card") else None,
        )
        logits = keras.ops.convert_to_numpy(model(x))
        assert logits.shape == (2, 33, 33, 3) and np.isfinite(logits).all(), name
        before = [keras.ops.convert_to_numpy(w).copy() for w in model.trainable_weights]
        model.compile(optimizer=keras.optimizers.SGD(0.05))
        hist = model.fit(x, y, batch_size=2, epochs=1, verbose=0).history
        assert np.isfinite(hist["loss"][0]), (name, hist)
        if car is not None:
            assert "car_intra" in hist, (name, sorted(hist))
        if name.startswith("card"):
            assert model.neck is not None and model.neck.keys == ["c5", "c2"], name
            assert "sar_anchor" in hist and "sar_pull" in hist, (name, sorted(hist))
        if name.startswith("hfgd"):
            assert "high_level" in hist, (name, sorted(hist))
        moved = sum(
            not np.allclose(b, keras.ops.convert_to_numpy(w))
            for b, w in zip(before, model.trainable_weights)
        )
        assert moved > 0.9 * len(before), (name, moved, len(before))
        print(f"{name}: ok loss={hist['loss'][0]:.4f}")
    print("backend smoke ok")


if __name__ == "__main__":
    sys.exit(main())
