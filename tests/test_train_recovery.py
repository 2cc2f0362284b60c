"""Checkpoints after a diverging loss or damage on disk: only finite weights are saved, a
NaN stop names a checkpoint that resumes, a truncated latest checkpoint falls back to the
newest readable one (a warning names the file), `--checkpoint` chooses one."""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from iseg.errors import CheckpointUnreadableError, TrainingDivergedError
from iseg.training import checkpoints as ckpt_lib

sys.path.insert(0, os.path.dirname(__file__))
from files_testutil import checksums  # noqa: E402
from test_train_support import META, run_toy, tiny_model_fn  # noqa: E402

DATA = ".data-00000-of-00001"


def _listed(model_dir):
    state = tf.train.get_checkpoint_state(str(model_dir / "checkpoints"))
    return [os.path.basename(p) for p in state.all_model_checkpoint_paths]


def _truncate(path):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def test_nan_stop_names_a_checkpoint_that_resumes(tmp_path):
    # a huge learning rate (after warm-up) blows the weights up: some step's update gives
    # weights whose loss, at the next step, is not finite
    diverge = dict(lr=1e8, warmup_steps=5, schedule="constant", checkpoint_every=1,
                   use_bn=False)
    with pytest.raises(TrainingDivergedError) as e:
        run_toy(tmp_path, steps=12, **diverge)
    step = int(str(e.value).split(" at step ")[1].split(";")[0])
    bad, good = f"ckpt-{step - 1}", f"ckpt-{step - 2}"
    assert str(e.value).endswith(
        f"training stopped. Last good checkpoint: {tmp_path}/checkpoints/{good} ({bad}, "
        "whose weights gave this loss, is no longer the latest)")
    assert _listed(tmp_path)[-1] == good and bad not in _listed(tmp_path)
    assert os.path.isfile(tmp_path / "checkpoints" / f"{bad}.index")  # kept, not deleted
    for name in _listed(tmp_path):  # every listed checkpoint holds finite weights
        reader = tf.train.load_checkpoint(str(tmp_path / "checkpoints" / name))
        for key, dtype in reader.get_variable_to_dtype_map().items():
            if dtype.is_floating:
                assert np.all(np.isfinite(reader.get_tensor(key))), (name, key)
    # the same run at a normal learning rate resumes from the named checkpoint and trains
    r = run_toy(tmp_path, steps=step + 2, **dict(diverge, lr=1e-3, warmup_steps=0))
    assert len(r["losses"]) == 4 and np.all(np.isfinite(r["losses"]))


def test_non_finite_weights_are_never_saved(tmp_path):
    model = tiny_model_fn()(None, META)
    optimizer = tf.keras.optimizers.SGD(0.1)
    optimizer.build(model.trainable_variables)
    ckpt = ckpt_lib.TrainCheckpointer(str(tmp_path), model=model, optimizer=optimizer)
    ckpt.save(1)
    before = checksums(tmp_path)
    kernel = model.conv1.kernel
    kernel.assign(np.where(np.arange(kernel.numpy().size).reshape(kernel.shape) == 5,
                           np.inf, kernel.numpy()).astype(np.float32))
    with pytest.raises(TrainingDivergedError, match=(
            f"^weights are not finite after step 2; training stopped without saving them. "
            f"Last good checkpoint: {tmp_path}/checkpoints/ckpt-1$")):
        ckpt.save(2)
    assert checksums(tmp_path) == before


@pytest.mark.parametrize("damaged", [DATA, ".index"])
def test_truncated_latest_checkpoint_falls_back_to_the_newest_readable(tmp_path, caplog,
                                                                      damaged):
    ref = run_toy(tmp_path / "ref", steps=6, checkpoint_every=2)
    model_dir = tmp_path / "run"
    run_toy(model_dir, steps=6, checkpoint_every=2)
    broken = model_dir / "checkpoints" / f"ckpt-6{damaged}"
    _truncate(broken)
    reason = ("Read less bytes than requested" if damaged == DATA else
              "not an sstable (bad magic number)")
    with caplog.at_level("WARNING"):
        resumed = run_toy(model_dir, steps=6, checkpoint_every=2)
    assert (f"Checkpoint {model_dir}/checkpoints/ckpt-6 is damaged: {broken} ({reason}); "
            "trying an older one") in caplog.text
    assert len(resumed["losses"]) == 2  # from ckpt-4, the newest readable one
    np.testing.assert_allclose(resumed["losses"], ref["losses"][4:], rtol=1e-5)


def test_damaged_checkpoints_for_inference_and_an_explicit_checkpoint(tmp_path, caplog):
    run_toy(tmp_path, steps=4, checkpoint_every=2)
    ckpts = tmp_path / "checkpoints"
    _truncate(ckpts / f"ckpt-4{DATA}")
    before = checksums(tmp_path)
    with caplog.at_level("WARNING"):
        assert ckpt_lib.resolve_checkpoint(str(tmp_path)) == str(ckpts / "ckpt-2")
    assert f"Checkpoint {ckpts}/ckpt-4 is damaged: {ckpts}/ckpt-4{DATA} (Read less" \
        in caplog.text
    with pytest.raises(CheckpointUnreadableError, match=(
            f"^checkpoint {ckpts}/ckpt-4 is damaged: {ckpts}/ckpt-4{DATA} \\(Read less bytes "
            "than requested\\)$")):
        run_toy(tmp_path, steps=6, checkpoint_every=2, checkpoint=str(ckpts / "ckpt-4"))
    assert checksums(tmp_path) == before
    _truncate(ckpts / "ckpt-2.index")
    before = checksums(tmp_path)
    with pytest.raises(CheckpointUnreadableError, match=(
            f"^no readable checkpoint in {ckpts}: .*ckpt-4{DATA} .*; {ckpts}/ckpt-2.index "
            r"\(not an sstable .*\)\. Pass --checkpoint=PATH of a good one, or move the "
            "folder away to start afresh$")):
        ckpt_lib.resolve_checkpoint(str(tmp_path))
    assert checksums(tmp_path) == before


def test_train_from_an_older_checkpoint(tmp_path):
    ref = run_toy(tmp_path / "ref", steps=6, checkpoint_every=2)
    run_toy(tmp_path / "run", steps=6, checkpoint_every=2)
    again = run_toy(tmp_path / "run", steps=6, checkpoint_every=2,
                    checkpoint=str(tmp_path / "run" / "checkpoints" / "ckpt-2"))
    np.testing.assert_allclose(again["losses"], ref["losses"][2:], rtol=1e-5)
    with pytest.raises(FileNotFoundError, match="no checkpoint found at /nowhere/ckpt-3"):
        run_toy(tmp_path / "run", steps=6, checkpoint="/nowhere/ckpt-3")


KILL_AT_4 = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from iseg.training import checkpoints, config, trainer
from test_train_support import tiny_model_fn
cfg = config.TrainConfig(**{cfg!r})

def save_or_die(self, step, save=checkpoints.TrainCheckpointer.save):
    if step == 4:  # killed after step 4, before its checkpoint: resumes from ckpt-2
        os.kill(os.getpid(), signal.SIGKILL)
    return save(self, step)

checkpoints.TrainCheckpointer.save = save_or_die
trainer.train(cfg, model_fn=tiny_model_fn(dropout=0.5))
"""


def test_killed_run_with_dropout_and_augmentation_resumes_bit_for_bit(tmp_path):
    """Dropout masks (seed generator states), photometric augmentation and shuffling all
    continue where the checkpoint left them: every later loss equals the uninterrupted
    run's exactly."""
    import subprocess

    from iseg.datasets.synthetic import generate_shapes
    from iseg.training.config import TrainConfig
    from iseg.training.trainer import train

    generate_shapes(str(tmp_path / "data"), num_train=6, num_val=2, image_size=(24, 24),
                    num_shards=2)
    settings = dict(dataset="shapes", data_dir=str(tmp_path / "data"), batch_size=2,
                    steps=7, crop_size=(17, 17), photometric=True, optimizer="adam",
                    lr=1e-2, checkpoint_every=2, evaluate_at_end=False, progress=False,
                    seed=3, resample="host", shuffle_buffer=6)
    ref = train(TrainConfig(model_dir=str(tmp_path / "ref"), **settings),
                model_fn=tiny_model_fn(dropout=0.5))["losses"]
    killed = dict(settings, model_dir=str(tmp_path / "killed"))
    code = KILL_AT_4.format(tests=os.path.dirname(__file__), cfg=killed)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert _listed(tmp_path / "killed")[-1] == "ckpt-2"
    resumed = train(TrainConfig(**killed), model_fn=tiny_model_fn(dropout=0.5))["losses"]
    assert len(resumed) == 5
    np.testing.assert_array_equal(resumed, ref[2:])
