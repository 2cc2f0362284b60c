"""The fit engine (`iseg.training.fit`): train.py on JAX / PyTorch with TensorFlow
blocked, checkpoints and resume, evaluation, and the settings it refuses."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from iseg.errors import CheckpointMismatchError, ConfigError
from iseg.training import fit
from iseg.training.config import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# As if TensorFlow were not installed: `import tensorflow` fails (each attempt's stack is
# recorded); `importlib.util.find_spec("tensorflow")` gives a spec without a file.
BLOCK_TF = textwrap.dedent('''
    import importlib.machinery, json, os, sys, traceback
    class _NoTF:
        def create_module(self, spec):
            with open(os.environ["TF_ATTEMPTS"], "a") as f:
                f.write(json.dumps("".join(traceback.format_stack())) + "\\n")
            raise ModuleNotFoundError(f"No module named {spec.name!r}", name=spec.name)
        def exec_module(self, module):
            pass
    class _BlockTF:
        def find_spec(self, name, path=None, target=None):
            if name == "tensorflow" or name.startswith("tensorflow."):
                return importlib.machinery.ModuleSpec(name, _NoTF())
            return None
    sys.meta_path.insert(0, _BlockTF())
''')


def _train(tmp_path, backend, *flags):
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(BLOCK_TF)
    # the second run reuses the first one's compiled JAX programs
    env = dict(os.environ, KERAS_BACKEND=backend, TF_ATTEMPTS=str(tmp_path / "attempts"),
               PYTHONPATH=os.pathsep.join([ROOT, str(hook)]), JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    cmd = [sys.executable, os.path.join(ROOT, "train.py"),
           f"--flagfile={ROOT}/configs/demo/shapes.cfg", f"--data_dir={tmp_path / 'data'}",
           f"--model_dir={tmp_path / 'run'}", "--crop_size=32,32", "--batch_size=2",
           "--checkpoint_every=2", "--eval_steps=2", "--eval_batch_size=2", "--noprogress",
           *flags]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _tf_import_attempts(tmp_path):
    path = tmp_path / "attempts"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("backend", ["jax", pytest.param("torch", marks=pytest.mark.slow)])
def test_train_resume_evaluate_without_tensorflow(tmp_path, backend):
    first = _train(tmp_path, backend, "--steps=4", "--export_at_end=false",
                   "--overlays_at_end=0", "--car")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Done: 4 steps" in first.stdout
    second = _train(tmp_path, backend, "--steps=6", "--overlays_at_end=1", "--eval_every=5",
                    "--car")
    # the model's own loss: cross-entropy and the CAR terms
    line = [x for x in second.stderr.splitlines() if "steps 6-6: mean " in x]
    assert line and all(f" {term} " in line[0] for term in (
        "loss", "ce", "car_intra", "car_inter_c2c", "car_inter_c2p")), second.stderr[-2000:]
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from" in second.stderr and "(step 4)" in second.stderr
    assert "Done: 6 steps" in second.stdout
    run = tmp_path / "run"
    assert fit.checkpoint_steps(str(run)) == [2, 4, 6]
    with np.load(run / "fit_checkpoints" / "ckpt-6" / "optimizer.npz") as data:
        iterations = [data[f"v{i:05d}"] for i, p in enumerate(data["paths"])
                      if str(p).endswith("iteration")]
        assert int(data["step"]) == 6 and [int(v) for v in iterations] == [6]
    for step in (4, 5, 6):
        scores = json.loads((run / "eval" / f"val_whole_step{step}_results.json").read_text())
        assert scores["num_images"] == 4 and 0.0 <= scores["miou"] <= 1.0
        present = [v for v in scores["per_class_iou"].values() if v is not None]
        assert scores["miou"] == pytest.approx(np.mean(present))
    assert (run / "model.keras").is_file() and (run / "overlays" / "overlay_000.png").is_file()
    # iseg imports no TensorFlow: the only attempts are Keras' own probes for an
    # installed TensorFlow (keras.src.utils.module_utils.LazyModule)
    for stack in _tf_import_attempts(tmp_path):
        assert "keras/src/utils/module_utils.py" in stack, stack


def test_engine_loop_needs_the_tensorflow_backend(tmp_path):
    result = _train(tmp_path, "jax", "--engine=loop", "--steps=1")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "train.py: error: --engine=loop needs the TensorFlow backend (KERAS_BACKEND is jax); "
        "use --engine=fit or auto")


@pytest.mark.parametrize("change, flag", [
    (dict(strategy="mirrored"), "--strategy=mirrored"),
    (dict(resample="device"), "--resample=device"),
    (dict(eval_mode="slide"), "--eval_mode=slide"),
    (dict(eval_scales=(0.5, 1.0)), "--eval_scales=0.5,1"),
    (dict(grad_accum_steps=2), "--grad_accum_steps=2"),
    (dict(semi="unimatch"), "--semi=unimatch"),
])
def test_unsupported_settings_name_the_flag(change, flag):
    fit.check_fit_config(TrainConfig())
    with pytest.raises(ConfigError) as e:
        fit.check_fit_config(TrainConfig(**change))
    assert str(e.value).startswith(f"{flag} is not supported by the fit engine (")
    assert str(e.value).endswith("); use --engine=loop on the TensorFlow backend")


def test_checkpoint_round_trip(tmp_path):
    import keras

    from iseg.models import build_model_from_name

    cfg = TrainConfig(optimizer="adam", steps=10)

    def fresh():
        keras.utils.set_random_seed(len(os.listdir(tmp_path)))
        model = build_model_from_name("demo_tiny", 3, aux_weight=0.0)
        from iseg.training.config import optimizer_for
        return model, optimizer_for(cfg, model)

    model, optimizer = fresh()
    for v in optimizer.variables:  # distinct, non-zero optimizer state
        v.assign(np.random.default_rng(1).random(v.shape).astype(v.dtype))
    path = fit.save_checkpoint(str(tmp_path), model, optimizer, 7, keep=1)
    fit.save_checkpoint(str(tmp_path), model, optimizer, 8, keep=1)
    assert fit.checkpoint_steps(str(tmp_path)) == [8] and not os.path.exists(path)
    other, other_opt = fresh()
    assert fit.restore_checkpoint(str(tmp_path / "fit_checkpoints" / "ckpt-8"), other,
                                  other_opt) == 8
    for a, b in zip(model.weights + optimizer.variables, other.weights + other_opt.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_numpy_confusion_matches_tensorflow():
    from iseg.metrics import batch_confusion_matrix, numpy_confusion_matrix

    rng = np.random.default_rng(0)
    labels = rng.integers(-1, 7, (3, 9, 11))
    labels[0, 0, :5] = 255
    preds = rng.integers(0, 6, (3, 9, 11))
    want = batch_confusion_matrix(labels, preds, 5, 255).numpy()
    np.testing.assert_array_equal(numpy_confusion_matrix(labels, preds, 5, 255), want)
    assert want.sum() == ((labels >= 0) & (labels < 5) & (preds < 5)).sum()


def test_another_model_is_refused(tmp_path):
    from iseg.models import build_model_from_name
    from iseg.training import config as config_lib

    cfg = TrainConfig(optimizer="sgd", steps=10)
    meta = config_lib.DatasetMeta(num_classes=3, class_names=list("abc"), palette=[])
    model = build_model_from_name("demo_tiny", 3, aux_weight=0.0)
    other = build_model_from_name("demo_tiny", 4, aux_weight=0.0)
    path = fit.save_checkpoint(str(tmp_path), model, config_lib.optimizer_for(cfg, model), 2)
    config_lib.write_run_config(str(tmp_path), cfg, meta, model)
    with pytest.raises(ConfigError, match="holds checkpoints of another model .*num_classes"):
        config_lib.check_same_model(str(tmp_path), other)
    with pytest.raises(CheckpointMismatchError) as e:
        fit.restore_checkpoint(path, other, config_lib.optimizer_for(cfg, other))
    assert str(e.value).startswith(f"cannot load {path} into this model: ")
    assert "\n" not in str(e.value)


def test_resumed_run_repeats_the_uninterrupted_one(tmp_path):
    """A run killed after its step-2 checkpoint and resumed ends with the same losses and
    weights as the uninterrupted run: data position, weights and optimizer state are all
    restored (fit engine on this process' backend)."""
    import shutil

    from iseg.datasets.synthetic import generate_shapes

    generate_shapes(str(tmp_path / "data"), num_train=6, num_val=2, image_size=(24, 24),
                    num_shards=1)

    def run(model_dir):
        cfg = TrainConfig(model="demo_tiny", aux_weight=0.0, data_dir=str(tmp_path / "data"),
                          model_dir=str(tmp_path / model_dir), crop_size=(24, 24),
                          batch_size=2, steps=4, checkpoint_every=2, optimizer="adam",
                          lr=1e-3, evaluate_at_end=False, progress=False)
        return fit.train(cfg)

    whole = run("a")
    assert whole["step"] == 4 and len(whole["losses"]) == 4
    assert all(np.isfinite(whole["losses"]))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "fit_checkpoints" / "ckpt-4")
    resumed = run("b")
    assert resumed["step"] == 4 and len(resumed["losses"]) == 2
    assert resumed["losses"] == pytest.approx(whole["losses"][2:], rel=1e-5)
    for a, b in zip(whole["model"].weights, resumed["model"].weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
