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
MODELS = {
    "fcn_resnet50_d8_car": dict(channels=16),
    "caa_resnet50_d8_car": dict(channels=16, end_channels=8, guide_filters=4, mlp_hidden=4),
}


def main():
    assert keras.backend.backend() == os.environ["KERAS_BACKEND"], keras.backend.backend()
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(2, 33, 33, 3)).astype("float32")
    y = rng.integers(0, 3, size=(2, 33, 33)).astype("int32")
    y[:, :4] = 255
    for name, head_options in MODELS.items():
        model = build_model_from_name(
            name, 3, backbone_options=BACKBONE, head_options=head_options,
            aux_options=dict(channels=8),
        )
        logits = keras.ops.convert_to_numpy(model(x))
        assert logits.shape == (2, 33, 33, 3) and np.isfinite(logits).all(), name
        before = [keras.ops.convert_to_numpy(w).copy() for w in model.trainable_weights]
        model.compile(optimizer=keras.optimizers.SGD(0.05))
        hist = model.fit(x, y, batch_size=2, epochs=1, verbose=0).history
        assert np.isfinite(hist["loss"][0]), (name, hist)
        if name.endswith("_car"):
            assert "car_intra" in hist, (name, sorted(hist))
        moved = sum(
            not np.allclose(b, keras.ops.convert_to_numpy(w))
            for b, w in zip(before, model.trainable_weights)
        )
        assert moved > 0.9 * len(before), (name, moved, len(before))
        print(f"{name}: ok loss={hist['loss'][0]:.4f}")
    print("backend smoke ok")


if __name__ == "__main__":
    sys.exit(main())
