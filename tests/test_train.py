"""Training loop: repeatability, resume after a kill, NaN stop, accumulation, summaries."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from iseg.errors import EmptyDatasetError, TrainingDivergedError
from iseg.training.summaries import read_events

sys.path.insert(0, os.path.dirname(__file__))
from test_train_support import run_toy, toy_train_fn  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _weights(model):
    return [np.array(v) for v in model.weights]


def test_seeded_runs_repeat_the_first_20_losses(tmp_path):
    a = run_toy(tmp_path / "a", steps=20)
    b = run_toy(tmp_path / "b", steps=20)
    assert len(a["losses"]) == 20
    np.testing.assert_array_equal(a["losses"], b["losses"])
    assert a["losses"][-1] < a["losses"][0]  # it learns
    c = run_toy(tmp_path / "c", steps=3, seed=2)
    assert c["losses"][:3] != a["losses"][:3]


def test_tensorboard_scalars_images_and_results(tmp_path):
    r = run_toy(tmp_path, steps=4, log_every=2, evaluate_at_end=True, eval_every=2)
    scalars, images = read_events(str(tmp_path / "logs"))
    assert [s for s, _ in scalars["miou"]] == [2, 4]  # periodic + final evaluation
    for tag in ("loss", "loss/ce", "loss/aux", "learning_rate", "images_per_second", "miou"):
        assert tag in scalars, tag
    assert [s for s, _ in scalars["loss"]] == [2, 4]
    np.testing.assert_allclose(scalars["loss/ce"][-1][1] + scalars["loss/aux"][-1][1],
                               r["losses"][-1], rtol=1e-5)
    assert images  # input / ground truth / prediction overlays
    # one results file per evaluation, named by split, mode and step
    assert sorted(os.listdir(tmp_path / "eval")) == [
        "val_whole_step2_results.json", "val_whole_step2_results.txt",
        "val_whole_step4_results.json", "val_whole_step4_results.txt"]
    assert "mIoU" in (tmp_path / "eval" / "val_whole_step4_results.txt").read_text()
    assert sorted(os.listdir(tmp_path / "checkpoints"))[0] == "checkpoint"


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    # examples >= 12 are NaN: batches of 4 without shuffling -> step 4 is the first bad one
    data = toy_train_fn(shuffle=False, nan_from=12)
    with pytest.raises(TrainingDivergedError, match=r"at step 4\b.*ckpt-2"):
        run_toy(tmp_path, data=data, steps=10, checkpoint_every=2)
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-2")


def test_empty_training_split_is_an_error(tmp_path):
    with pytest.raises(EmptyDatasetError, match="no batches"):
        run_toy(tmp_path, data=toy_train_fn(empty=True), steps=2)


def test_gradient_accumulation_equals_the_big_batch(tmp_path):
    # no BN: per-batch statistics would differ. 2 x batch 2 == 1 x batch 4, same data order.
    big = run_toy(tmp_path / "big", use_bn=False, steps=2, batch_size=4,
                  data=toy_train_fn(shuffle=False))
    acc = run_toy(tmp_path / "acc", use_bn=False, steps=2, batch_size=2, grad_accum_steps=2,
                  data=toy_train_fn(shuffle=False))
    assert acc["step"] == 2 and len(acc["losses"]) == 2
    for x, y in zip(_weights(big["model"]), _weights(acc["model"])):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(acc["losses"], big["losses"], rtol=1e-5)


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_mixed_precision_trains(tmp_path, precision):
    r = run_toy(tmp_path, steps=3, mixed_precision=precision)
    assert np.all(np.isfinite(r["losses"]))
    assert r["model"].conv1.compute_dtype == precision
    assert r["model"].conv1.kernel.dtype == "float32"


KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from iseg.training import checkpoints
from test_train_support import run_toy

save = checkpoints.TrainCheckpointer.save

def save_then_die(self, step):
    if step == 8:  # killed while writing ckpt-8: partial files, state file untouched
        with open(os.path.join(self.directory, "ckpt-8.index"), "wb") as f:
            f.write(b"partial")
        os.kill(os.getpid(), signal.SIGKILL)
    return save(self, step)

checkpoints.TrainCheckpointer.save = save_then_die
run_toy({model_dir!r}, steps=12, checkpoint_every=2)
"""


def test_killed_run_resumes_exactly(tmp_path):
    ref = run_toy(tmp_path / "ref", steps=12, checkpoint_every=2)
    model_dir = tmp_path / "killed"
    code = KILL_SCRIPT.format(tests=os.path.dirname(__file__), model_dir=str(model_dir))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    latest = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
    assert latest.endswith("ckpt-6")
    # the same flags again: resumes from step 6 and reproduces the uninterrupted run
    resumed = run_toy(model_dir, steps=12, checkpoint_every=2)
    assert len(resumed["losses"]) == 6
    np.testing.assert_allclose(resumed["losses"], ref["losses"][6:], rtol=1e-5)
    for x, y in zip(_weights(ref["model"]), _weights(resumed["model"])):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    # keep the last 3 (default keep_checkpoints)
    kept = sorted(f for f in os.listdir(model_dir / "checkpoints") if f.endswith(".index"))
    assert kept == ["ckpt-10.index", "ckpt-12.index", "ckpt-8.index"]
    # a finished run restarted does nothing
    again = run_toy(model_dir, steps=12, checkpoint_every=2)
    assert again["losses"] == [] and again["step"] == 12
