"""Predictor over the three model formats, folder prediction outputs, bad inputs."""

import os
import sys

import numpy as np
import pytest
from PIL import Image

from iseg.cli.predict import Predictor, list_images, predict_folder
from iseg.export import export_saved_model, save_keras
from iseg.datasets.pipeline import normalize

sys.path.insert(0, os.path.dirname(__file__))
from test_train_support import META, tiny_model_fn  # noqa: E402


@pytest.fixture(scope="module")
def model():
    m = tiny_model_fn(width=4)(None, META)
    rng = np.random.default_rng(0)
    for v in m.weights:
        v.assign(rng.normal(size=v.shape).astype(np.float32) * 0.5 + (v.path.endswith(
            "variance") and 1.0))
    return m


def test_savedmodel_and_keras_predictors_match_the_model(tmp_path, model):
    image = np.random.default_rng(1).integers(0, 256, (13, 17, 3), dtype=np.uint8)
    expected = np.argmax(model(normalize(image[None], "minus_one_to_one"),
                               training=False), -1)[0]
    exported = export_saved_model(model, str(tmp_path / "export"), palette=META.palette,
                                  class_names=META.class_names)
    keras_file = save_keras(model, str(tmp_path / "k" / "model.keras"))
    for path in (exported, keras_file):
        p = Predictor(path)
        np.testing.assert_array_equal(p.predict(image), expected)
    assert Predictor(exported).palette[2] == [0, 0, 255]


def test_predict_folder_writes_palette_pngs_and_overlays(tmp_path, model):
    inp = tmp_path / "in"
    inp.mkdir()
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 256, (9, 14, 3), dtype=np.uint8)).save(inp / "x.jpg")
    Image.fromarray(rng.integers(0, 256, (11, 5, 3), dtype=np.uint8)).save(inp / "y.png")
    (inp / "notes.txt").write_text("not an image")
    p = Predictor(save_keras(model, str(tmp_path / "model.keras")))
    written = predict_folder(p, str(inp), str(tmp_path / "out"), progress=False)
    assert written == ["x", "y"]
    label = Image.open(tmp_path / "out" / "y.png")
    assert label.mode == "P" and label.size == (5, 11)
    from iseg.datasets.specs import voc_colormap  # no run_config.json beside: VOC colours
    assert label.getpalette()[:9] == [c for rgb in voc_colormap(3) for c in rgb]
    image = np.asarray(Image.open(inp / "y.png"))
    np.testing.assert_array_equal(np.asarray(label), p.predict(image))
    assert Image.open(tmp_path / "out" / "x_overlay.jpg").size == (14, 9)


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_images(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        list_images(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Predictor(str(tmp_path / "empty"))
