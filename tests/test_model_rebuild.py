"""A saved model is the network that was trained: a backbone built from a weight file
(timm safetensors, keras.applications .h5) reloads from `.keras` and from a checkpoint + run
record (predict / evaluate / export) as the same network, without the weight file."""

import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from iseg.backbones import weights as weights_lib
from iseg.backbones.safetensors import write_safetensors
from iseg.cli.evaluate import load_model_for_inference
from iseg.cli.predict import Predictor
from iseg.datasets.pipeline import normalize
from iseg.models import SegmentationModel
from iseg.training.checkpoints import model_checkpoint, restore_model
from iseg.training.config import (
    DatasetMeta,
    TrainConfig,
    read_run_config,
    rebuild_model,
    write_run_config,
)

sys.path.insert(0, os.path.dirname(__file__))
from test_backbones_weights import _random_model, _randomize_norms, _timm_resnet  # noqa: E402

META = DatasetMeta(num_classes=3, class_names=["a", "b", "c"],
                   palette=[(255, 0, 0), (0, 255, 0), (0, 0, 255)])
TINY = dict(depths=(1, 1, 1, 1), widths=(4, 4, 8, 8))
HEAD = dict(channels=8, end_channels=8)


def _timm_weights(tmp_path):
    """A timm "resnet50d"-layout file for the D8 zoo backbone: the file switches the
    backbone's own layout (stride in the last block, epsilon 1.001e-5) to timm's."""
    src = _random_model("resnet50_d8", stem_width=6, stride_in="first", avg_down=True,
                        bn_epsilon=1e-5, **TINY)
    path = tmp_path / "resnet.safetensors"
    write_safetensors(path, _timm_resnet(src))
    return "resnet50_d8", path


def _tiny_keras_app(weights=None, include_top=True, input_shape=None, **kwargs):
    """keras.applications' own ResNet v1 code (1x1 stride, conv biases, Caffe input) at the
    TINY size, standing in for ResNet50 so the file is small."""
    from keras.src.applications.resnet import ResNet, stack_residual_blocks_v1

    def stacks(x):
        for i, (width, stride) in enumerate(zip(TINY["widths"], (1, 2, 2, 2))):
            x = stack_residual_blocks_v1(x, width, 1, stride1=stride, name=f"conv{i + 2}")
        return x

    return ResNet(stacks, False, True, include_top=include_top, weights=weights,
                  input_shape=input_shape, name="resnet50", **kwargs)


def _keras_app_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(weights_lib, "_keras_app", lambda name, builder: (_tiny_keras_app, {}))
    ref = _tiny_keras_app(include_top=False, input_shape=(None, None, 3))
    _randomize_norms(ref, np.random.default_rng(3))
    path = tmp_path / "resnet50.weights.h5"
    ref.save_weights(path)
    return "resnet50", path


@pytest.fixture(params=["timm", "keras_app"])
def trained(request, tmp_path, monkeypatch):
    """(model, backbone name, weight file): a model built from a weight file."""
    if request.param == "timm":
        name, path = _timm_weights(tmp_path)
    else:
        name, path = _keras_app_weights(tmp_path, monkeypatch)
    keras.utils.set_random_seed(1)
    model = SegmentationModel(name, "fcn", 3, backbone_options=TINY, head_options=HEAD,
                              backbone_weights=str(path), aux_weight=0)
    model.build((None, None, None, 3))
    rng = np.random.default_rng(2)  # non-trivial head BN statistics
    for v in model.head.non_trainable_weights:
        v.assign(rng.uniform(0.5, 1.5, v.shape).astype("float32"))
    return model, name, path


def _images(seed=0):
    return np.random.default_rng(seed).normal(size=(2, 37, 29, 3)).astype("float32")


def test_keras_reload_is_the_trained_network(tmp_path, trained):
    model, _, weight_file = trained
    x = _images()
    want = np.asarray(model(x))
    model.save(tmp_path / "model.keras")
    os.remove(weight_file)  # the reload must not need it
    restored = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(np.asarray(restored(x)), want, rtol=1e-5, atol=1e-5)


def _write_run(model_dir, model, name, weight_file):
    cfg = TrainConfig(head="fcn", backbone=name, backbone_options=dict(TINY),
                      head_options=dict(HEAD), backbone_weights=str(weight_file),
                      aux_weight=0.0, model_dir=str(model_dir), dataset="voc2012")
    write_run_config(str(model_dir), cfg, META, model)
    tf.train.CheckpointManager(model_checkpoint(model), str(model_dir / "checkpoints"),
                               max_to_keep=1).save(checkpoint_number=7)
    return cfg


def test_checkpoint_and_run_record_rebuild_the_trained_network(tmp_path, trained):
    model, name, weight_file = trained
    cfg = _write_run(tmp_path / "run", model, name, weight_file)
    os.remove(weight_file)
    x = _images(1)
    want = np.asarray(model(x))

    # predict --model=<model_dir>: the run record's rebuild + the checkpoint
    rebuilt = rebuild_model(read_run_config(str(tmp_path / "run")))
    restore_model(rebuilt, str(tmp_path / "run"))
    np.testing.assert_allclose(np.asarray(rebuilt(x)), want, rtol=1e-5, atol=1e-5)
    image = np.random.default_rng(4).integers(0, 256, (21, 26, 3), dtype=np.uint8)
    labels = np.argmax(np.asarray(model(normalize(image[None], model.normalization))), -1)[0]
    np.testing.assert_array_equal(Predictor(str(tmp_path / "run")).predict(image), labels)

    # evaluate / export: the flags still name the (now missing) weight file
    loaded, _ = load_model_for_inference(cfg)
    np.testing.assert_allclose(np.asarray(loaded(x)), want, rtol=1e-5, atol=1e-5)
