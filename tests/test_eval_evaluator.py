"""Evaluator: scores equal a numpy oracle on padded batches; files; empty split."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from iseg.evaluation import Evaluator, write_results
from iseg.errors import EmptyDatasetError

K = 3


def _model():
    inp = keras.Input((None, None, 3))
    model = keras.Model(inp, keras.layers.Conv2D(K, 1, name="cls")(inp))
    model.get_layer("cls").set_weights([np.random.default_rng(0).normal(size=(1, 1, 3, K)),
                                        np.zeros(K)])
    return model


def _dataset(n=5, batch=2):
    rng = np.random.default_rng(1)
    sizes = [(9, 7), (6, 11), (8, 8), (5, 5), (10, 4)][:n]
    items = []
    for i, (h, w) in enumerate(sizes):
        img = rng.normal(size=(h, w, 3)).astype(np.float32)
        lab = rng.integers(0, K, (h, w)).astype(np.int32)
        lab[0, 0] = 255
        items.append((img, lab, f"img_{i}.jpg"))

    def gen():
        for img, lab, name in items:
            yield {"image": img, "height": img.shape[0], "width": img.shape[1],
                   "filename": name}, lab

    sig = ({"image": tf.TensorSpec([None, None, 3], tf.float32),
            "height": tf.TensorSpec([], tf.int32), "width": tf.TensorSpec([], tf.int32),
            "filename": tf.TensorSpec([], tf.string)}, tf.TensorSpec([None, None], tf.int32))
    ds = tf.data.Dataset.from_generator(gen, output_signature=sig).padded_batch(
        batch, padding_values=({"image": 0.0, "height": 0, "width": 0, "filename": ""}, 255))
    return ds, items


def test_scores_match_numpy_oracle_and_files_are_written(tmp_path):
    model = _model()
    ds, items = _dataset()
    cm = np.zeros((K, K), np.int64)
    for img, lab, _ in items:
        pred = np.argmax(model(img[None]).numpy()[0], -1)
        for t, p in zip(lab.ravel(), pred.ravel()):
            if t != 255:
                cm[t, p] += 1
    ev = Evaluator(model, K, class_names=["x", "y", "z"], palette=[(1, 2, 3)] * K,
                   denormalize_fn=lambda x: (np.asarray(x) + 1) * 127.5)
    scores = ev.evaluate(ds, prediction_dir=str(tmp_path / "pred"), max_predictions=-1,
                         num_samples=2)
    np.testing.assert_array_equal(scores["confusion_matrix"], cm)
    iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
    assert scores["miou"] == pytest.approx(iou.mean())
    assert scores["num_images"] == 5 and len(scores["samples"]) == 2
    png = Image.open(tmp_path / "pred" / "img_1.png")
    assert png.size == (11, 6) and png.mode == "P"
    path = write_results(scores, str(tmp_path), name="val", save_confusion=True, step=3)
    assert path == str(tmp_path / "val_results.json")
    assert "mIoU" in (tmp_path / "val_results.txt").read_text()
    record = json.loads((tmp_path / "val_results.json").read_text())
    assert record["step"] == 3 and record["per_class_iou"]["y"] == pytest.approx(iou[1])
    assert (tmp_path / "val_confusion.csv").read_text().startswith("gt\\pred,x,y,z")


def test_empty_split_is_an_error():
    ds, _ = _dataset()
    with pytest.raises(EmptyDatasetError, match="'val' yielded no images"):
        Evaluator(_model(), K).evaluate(ds.take(0))


def test_make_evaluator_reads_the_config_and_the_models_normalization():
    from iseg.datasets.pipeline import normalize
    from iseg.evaluation import make_evaluator
    from iseg.training.config import DatasetMeta, TrainConfig

    model = _model()
    model.normalization = "imagenet"
    meta = DatasetMeta(num_classes=K, class_names=["x", "y", "z"], palette=[(1, 2, 3)] * K,
                       ignore_label=7)
    cfg = TrainConfig(crop_size=(9, 12), eval_mode="slide", eval_stride_ratio=0.5,
                      eval_scales=(0.5, 1.0), eval_flip=True)
    ev = make_evaluator(cfg, model, meta)
    assert ev.options == dict(mode="slide", scales=(0.5, 1.0), flip=True, crop_size=(9, 12),
                              stride=(5, 6), align_corners=True)
    assert ev.ignore_label == 7 and ev.class_names == ["x", "y", "z"]
    pixels = np.array([[[[0.0, 100.0, 255.0]]]], np.float32)
    np.testing.assert_allclose(ev.denormalize_fn(normalize(pixels, "imagenet")), pixels,
                               atol=1e-4)
    cfg = TrainConfig(crop_size=(9, 12), eval_crop_size=(4, 4), eval_stride_ratio=0.5)
    assert make_evaluator(cfg, model, meta).options["stride"] == (2, 2)


def test_evaluation_does_not_import_the_training_engine():
    import subprocess
    import sys

    code = ("import sys, iseg.evaluation; "
            "assert not [m for m in sys.modules if m.startswith('iseg.training')], "
            "sorted(m for m in sys.modules if m.startswith('iseg.'))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_results_are_named_by_evaluation_and_never_replaced(tmp_path):
    from iseg.evaluation.evaluator import results_name

    assert results_name("val", dict(mode="whole", scales=[1.0], flip=False), 2000) == (
        "val_whole_step2000")
    assert results_name("test", dict(mode="slide", scales=[0.5, 1.0, 1.75], flip=True),
                        40) == "test_slide_scales0.5-1-1.75_flip_step40"
    assert results_name("val") == "val_whole"
    ds, _ = _dataset()
    single = Evaluator(_model(), K).evaluate(ds)
    multi = Evaluator(_model(), K, scales=(0.5, 1.0), flip=True).evaluate(ds)
    paths = [write_results(s, str(tmp_path), step=7) for s in (single, multi, single)]
    assert [p.rsplit("/", 1)[1] for p in paths] == [
        "val_whole_step7_results.json", "val_whole_scales0.5-1_flip_step7_results.json",
        "val_whole_step7-2_results.json"]
    first = (tmp_path / "val_whole_step7_results.json").read_bytes()
    write_results(multi, str(tmp_path), step=7)
    assert (tmp_path / "val_whole_step7_results.json").read_bytes() == first
    assert (tmp_path / "val_whole_scales0.5-1_flip_step7-2_results.json").is_file()


class _Terminal:
    """A stderr stand-in that says it is a terminal and keeps what is written."""

    def __init__(self, tty=True):
        self.text, self.tty = "", tty

    def write(self, s):
        self.text += s

    def flush(self):
        pass

    def isatty(self):
        return self.tty


@pytest.mark.parametrize("tty,progress,shown", [(True, True, True), (True, False, False),
                                                (False, True, False)])
def test_progress_bar_on_a_terminal_only(monkeypatch, tty, progress, shown):
    term = _Terminal(tty)
    monkeypatch.setattr("sys.stderr", term)
    ds, _ = _dataset()
    Evaluator(_model(), K).evaluate(ds, progress=progress, total_images=5)
    assert ("5/5" in term.text and "images/s" in term.text
            and "evaluating val" in term.text) == shown, term.text
