"""SavedModel export loads without iseg in a fresh process and matches the Keras model;
`.keras` round trip."""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from iseg.evaluation.inference import predict_logits
from iseg.export import export_saved_model, save_keras
from iseg.datasets.pipeline import normalize
from iseg.training.config import DatasetMeta, TrainConfig, build_model_from_config

sys.path.insert(0, os.path.dirname(__file__))
from files_testutil import checksums  # noqa: E402

META = DatasetMeta(num_classes=3, class_names=["a", "b", "c"],
                   palette=[(255, 0, 0), (0, 255, 0), (0, 0, 255)])

LOADER = """
import json, sys
import numpy as np
import tensorflow as tf
m = tf.saved_model.load(sys.argv[1])
images = np.load(sys.argv[2])
out = m.signatures["serving_default"](images=tf.constant(images))
pngs = tf.stack([tf.io.encode_png(im) for im in images])
enc = m.signatures["serve_encoded"](encoded=pngs)
np.savez(sys.argv[3], labels=out["labels"].numpy(), probs=out["probabilities"].numpy(),
         enc_labels=enc["labels"].numpy(), enc_probs=enc["probabilities"].numpy())
print(json.dumps({"iseg_imported": any(k == "iseg" or k.startswith("iseg.")
                                       for k in sys.modules)}))
"""


@pytest.fixture(scope="module")
def model():
    cfg = TrainConfig(head="fcn", backbone="resnet18", aux_weight=0.0,
                      backbone_options=dict(depths=(1, 1, 1, 1), widths=(4, 4, 8, 8),
                                            stem_width=8),
                      head_options=dict(channels=8, end_channels=8))
    m = build_model_from_config(cfg, META)
    rng = np.random.default_rng(0)  # non-trivial BN statistics
    for v in m.non_trainable_weights:
        v.assign(np.abs(rng.normal(size=v.shape)).astype(np.float32) + 0.5)
    return m


def test_saved_model_in_a_fresh_process_matches_keras(tmp_path, model):
    scales, flip = (0.75, 1.0), True  # multi-scale + flip baked into the graph
    path = export_saved_model(model, str(tmp_path / "export"), scales=scales, flip=flip,
                              class_names=META.class_names, palette=META.palette)
    meta = json.loads(open(os.path.join(path, "export.json")).read())
    assert meta["palette"][1] == [0, 255, 0] and meta["scales"] == list(scales)
    images = np.random.default_rng(1).integers(0, 256, (2, 27, 38, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    r = subprocess.run([sys.executable, "-c", LOADER, path, str(tmp_path / "images.npy"),
                        str(tmp_path / "out.npz")], capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
                       cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"iseg_imported": False}
    out = np.load(tmp_path / "out.npz")
    x = normalize(images, model.normalization)
    logits = predict_logits(lambda t: model(t, training=False), x, scales=scales, flip=flip)
    probs = tf.nn.softmax(logits).numpy()
    assert out["labels"].shape == (2, 27, 38) and out["probs"].shape == (2, 27, 38, 3)
    np.testing.assert_allclose(out["probs"], probs, atol=1e-5)
    np.testing.assert_allclose(out["enc_probs"], probs, atol=1e-5)
    agree = np.mean(out["labels"] == probs.argmax(-1))
    assert agree > 0.999


def test_keras_file_round_trip(tmp_path, model):
    path = save_keras(model, str(tmp_path / "m" / "model.keras"))
    loaded = keras.saving.load_model(path)
    x = np.random.default_rng(2).normal(size=(1, 33, 33, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded(x, training=False), model(x, training=False),
                               atol=1e-5)


BAD_IMAGES = [
    ((1, 9, 9, 1), "a channel count other than 3"),
    ((1, 9, 9, 4), "a channel count other than 3"),
    ((0, 9, 9, 3), "an empty batch"),
    ((2, 0, 0, 3), "an empty (0-pixel) image"),
    ((1, 9, 0, 3), "an empty (0-pixel) image"),
    ((9, 9, 3), "a batch of rank other than 4"),
    ((1, 1, 9, 9, 3), "a batch of rank other than 4"),
]


def test_saved_model_signatures_reject_bad_images(tmp_path, model):
    path = export_saved_model(model, str(tmp_path / "export"))
    before = checksums(path)
    loaded = tf.saved_model.load(path)
    serve = loaded.signatures["serve_images"]
    for shape, reason in BAD_IMAGES:
        shown = " ".join(str(d) for d in shape)
        with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(
                f"[images must be uint8 [N, H, W, 3] with N, H, W > 0; got] [{reason}] "
                f"[of shape] [{shown}]")):
            serve(images=tf.zeros(shape, tf.uint8))
    assert serve(images=tf.zeros((1, 9, 9, 3), tf.uint8))["labels"].shape == (1, 9, 9)
    encoded = loaded.signatures["serve_encoded"]
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(
            "[encoded must hold at least one image; got an empty batch]")):
        encoded(encoded=tf.constant([], tf.string))
    gray = tf.io.encode_png(tf.zeros((5, 6, 1), tf.uint8))  # decoded to RGB: accepted
    assert encoded(encoded=tf.stack([gray]))["labels"].shape == (1, 5, 6)
    assert checksums(path) == before
