"""The text SavedModel runs in a fresh process that cannot import iseg and
reads the same words as the Keras model; the predict CLI reads a folder with it."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from iseg.text import CRNN, FACLSTM
from iseg.text.export import export_text_model, is_text_export
from iseg.text.pipeline import prepare_image

TINY = dict(max_length=4, image_size=(16, 24), charset="abc",
            encoder_options=dict(stages=((4, 1, (2, 2)), (8, 1, (2, 1)))))

LOADER = """
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "iseg":
            raise ImportError(f"{name} is blocked")
sys.meta_path.insert(0, Block())
sys.path = [p for p in sys.path if p not in ("", ".") and "h5-faclstm" not in p]
import numpy as np
import tensorflow as tf
m = tf.saved_model.load(sys.argv[1])
images = np.load(sys.argv[2])
out = m.signatures["serving_default"](images=tf.constant(images))
pngs = [open(p, "rb").read() for p in sys.argv[4:]]
enc = m.signatures["serve_encoded"](encoded=tf.constant(pngs))
json.dump({"words": [w.decode() for w in out["words"].numpy()],
           "scores": out["scores"].numpy().tolist(),
           "enc_words": [w.decode() for w in enc["words"].numpy()],
           "enc_scores": enc["scores"].numpy().tolist(),
           "iseg_imported": any(k.split(".")[0] == "iseg" for k in sys.modules)},
          open(sys.argv[3], "w"))
"""


def _expected(model, images, beam_width):
    x = tf.stack([prepare_image(tf.constant(im), model.image_size, model.channels)[0]
                  for im in images])
    tokens, scores = model.recognize(x, beam_width)
    return [model.charset.decode(t) for t in np.asarray(tokens)], np.asarray(scores)


@pytest.mark.parametrize("cls,options,beam", [
    (FACLSTM, dict(decoder_filters=6, attention_units=5, embed_dim=3, mask_filters=4), 2),
    (CRNN, dict(hidden=6, num_layers=1), 1)])
def test_export_runs_in_a_fresh_process_without_iseg(tmp_path, cls, options, beam):
    import keras

    keras.utils.set_random_seed(0)
    model = cls(**TINY, **options)
    path = export_text_model(model, str(tmp_path / "export"), beam_width=beam)
    assert is_text_export(path)
    meta = json.loads(open(os.path.join(path, "export.json")).read())
    assert meta["charset"] == "abc" and meta["beam_width"] == beam
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 20, 31, 3), dtype=np.uint8)  # any size
    np.save(tmp_path / "images.npy", images)
    files = []
    for i, (h, w) in enumerate([(10, 40), (30, 18)]):  # encoded images of different sizes
        files.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(files[-1])
    r = subprocess.run([sys.executable, "-c", LOADER, path, str(tmp_path / "images.npy"),
                        str(tmp_path / "out.json"), *files], capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
                       cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["iseg_imported"] is False
    words, scores = _expected(model, images, beam)
    assert out["words"] == words
    np.testing.assert_allclose(out["scores"], scores, rtol=1e-4)
    enc_words, enc_scores = _expected(model, [np.asarray(Image.open(f)) for f in files], beam)
    assert out["enc_words"] == enc_words
    np.testing.assert_allclose(out["enc_scores"], enc_scores, rtol=1e-4)


def test_predict_cli_reads_a_folder(tmp_path):
    from iseg.cli import predict

    model = FACLSTM(**TINY, decoder_filters=6, attention_units=5, embed_dim=3, mask_filters=4)
    path = export_text_model(model, str(tmp_path / "export"))
    (tmp_path / "in").mkdir()
    images = []
    for i in range(3):
        buf = io.BytesIO()
        im = np.random.default_rng(i).integers(0, 256, (12, 30 + i, 3), dtype=np.uint8)
        Image.fromarray(im).save(buf, format="PNG")
        (tmp_path / "in" / f"w{i}.png").write_bytes(buf.getvalue())
        images.append(im)
    predict.run(["predict", f"--model={path}", f"--input={tmp_path / 'in'}",
                 f"--output={tmp_path / 'out'}"])
    lines = (tmp_path / "out" / "predictions.tsv").read_text().splitlines()
    words, scores = _expected(model, images, 1)
    assert [ln.split("\t")[0] for ln in lines] == ["w0.png", "w1.png", "w2.png"]
    assert [ln.split("\t")[1] for ln in lines] == words
    np.testing.assert_allclose([float(ln.split("\t")[2]) for ln in lines], scores, atol=1e-4)
