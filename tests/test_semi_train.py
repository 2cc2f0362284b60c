"""Semi-supervised training end to end: every registered method for two steps on tiny
data, and `train.py --flagfile=configs/demo/shapes.cfg --semi=unimatch
--labeled_fraction=0.25` (shortened) through the command line, resampling on the device."""

import os

import numpy as np
import pytest

from iseg.semi import methods as semi_methods
from iseg.training.config import TrainConfig
from iseg.training.trainer import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from iseg.datasets.synthetic import generate_shapes

    out = tmp_path_factory.mktemp("semi_train") / "shapes"
    generate_shapes(str(out), num_train=8, num_val=2, image_size=(32, 32), num_shards=2)
    return str(out)


@pytest.mark.parametrize("method", semi_methods.names())
def test_every_method_trains_two_steps(method, shapes, tmp_path):
    cfg = TrainConfig(model="demo_tiny", aux_weight=0.0, dataset="shapes", data_dir=shapes,
                      model_dir=str(tmp_path), crop_size=(32, 32), batch_size=2, steps=2,
                      semi=method, labeled_fraction=0.25, optimizer="sgd", lr=0.01,
                      shuffle_buffer=8, progress=False, evaluate_at_end=False,
                      resample="host")
    result = train(cfg)
    assert len(result["losses"]) == 2 and np.all(np.isfinite(result["losses"]))
    assert os.path.isfile(tmp_path / "checkpoints" / "checkpoint")


def test_train_cli_with_a_semi_method_on_the_demo_config(shapes, tmp_path, capsys):
    from absl import flags

    from iseg.cli import train as train_cli

    argv = ["train.py", f"--flagfile={REPO}/configs/demo/shapes.cfg", f"--data_dir={shapes}",
            "--semi=unimatch", "--labeled_fraction=0.25", "--steps=2", "--batch_size=2",
            "--crop_size=32,32", "--eval_batch_size=2", "--export_at_end=false",
            "--overlays_at_end=0", "--progress=false", "--resample=device",
            f"--model_dir={tmp_path / 'run'}"]
    try:
        result = train_cli.run(argv)
    finally:
        flags.FLAGS.unparse_flags()
    assert result["step"] == 2 and "miou" in result["scores"]
    assert "Done: 2 steps" in capsys.readouterr().out


@pytest.mark.slow  # a subprocess with two replicas: minutes on a loaded 2-core machine
def test_two_replica_run_with_an_ema_teacher(shapes, tmp_path):
    """MirroredStrategy on two logical CPUs (a subprocess: devices are fixed at start-up);
    labeled and unlabeled batches of different sizes are split over the replicas."""
    import subprocess
    import sys

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    r = subprocess.run(
        [sys.executable, os.path.join(REPO, "train.py"),
         f"--flagfile={REPO}/configs/demo/shapes.cfg", f"--data_dir={shapes}",
         "--semi=augseg", "--labeled_fraction=0.25", "--steps=2", "--batch_size=2",
         "--unlabeled_batch_size=4", "--crop_size=32,32", "--eval_batch_size=2",
         "--export_at_end=false", "--overlays_at_end=0", "--progress=false",
         "--num_cpu_devices=2", "--strategy=mirrored", f"--model_dir={tmp_path}"],
        capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Done: 2 steps" in r.stdout
