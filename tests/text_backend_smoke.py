"""Smoke run of the text recognizers on whatever KERAS_BACKEND is set: build, forward,
one `fit` step, greedy and beam decoding.

Run by tests/test_text_backends.py in a subprocess (the backend is fixed at import time).
"""

import os
import sys

import keras
import numpy as np

from iseg.text import CRNN, FACLSTM

TINY = dict(max_length=4, image_size=(16, 24), encoder_options=dict(
    stages=((4, 1, (2, 2)), (8, 1, (2, 1)))))
MODELS = {
    "faclstm": (FACLSTM, dict(decoder_filters=6, attention_units=5, embed_dim=3,
                              mask_filters=4, classifier_units=7)),
    "crnn": (CRNN, dict(hidden=6, num_layers=1, encoder="resnet")),
}


def main():
    assert keras.backend.backend() == os.environ["KERAS_BACKEND"], keras.backend.backend()
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, size=(2, 16, 24, 1)).astype("float32")
    tokens = np.array([[3, 7, 0, -1, -1], [12, 0, -1, -1, -1]], "int32")
    mask = np.zeros((2, 16, 24), "float32")
    mask[:, 4:12, 2:10] = 1
    boxes = np.zeros((2, 4, 4), "float32")
    boxes[0, :2] = [[2, 4, 8, 12], [9, 3, 15, 13]]
    boxes[1, :1] = [[4, 2, 12, 14]]
    x = {"images": images, "tokens": tokens}
    y = {"tokens": tokens, "mask": mask, "boxes": boxes,
         "mask_weight": np.ones((2,), "float32")}
    for name, (cls, options) in MODELS.items():
        model = cls(**TINY, **options)
        out = model(x, training=True)
        assert np.isfinite(keras.ops.convert_to_numpy(out["logits"])).all(), name
        before = [keras.ops.convert_to_numpy(w).copy() for w in model.trainable_weights]
        model.compile(optimizer=keras.optimizers.SGD(0.05))
        hist = model.fit(x, y, batch_size=2, epochs=1, verbose=0).history
        assert np.isfinite(hist["loss"][0]), (name, hist)
        moved = sum(not np.allclose(b, keras.ops.convert_to_numpy(w))
                    for b, w in zip(before, model.trainable_weights))
        assert moved > 0.9 * len(before), (name, moved, len(before))
        for beam in (1, 2) if cls is FACLSTM else (1,):
            read, scores = model.recognize(images, beam_width=beam)
            read = keras.ops.convert_to_numpy(read)
            assert read.shape[0] == 2 and read.min() >= -1, (name, read)
            assert np.isfinite(keras.ops.convert_to_numpy(scores)).all(), name
        print(f"{name}: ok loss={hist['loss'][0]:.4f}")
    print("text backend smoke ok")


if __name__ == "__main__":
    sys.exit(main())
