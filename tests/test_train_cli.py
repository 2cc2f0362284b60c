"""End to end through the command lines with the demo config (shortened): train ->
evaluate -> predict, and a checkpoint from a different model."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from files_testutil import checksums  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# the README demo config, shortened: tiny crops, a few steps
TINY = """--flagfile={repo}/configs/demo/shapes.cfg
--data_dir={data}
--batch_size=4
--steps=4
--checkpoint_every=2
--crop_size=33,33
--log_every=2
--eval_batch_size=2
--export_at_end=false
--overlays_at_end=0
--progress=false
"""


def _run(args, cwd):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable] + args, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from iseg.datasets.synthetic import generate_shapes

    root = tmp_path_factory.mktemp("cli")
    data = root / "shapes"
    generate_shapes(str(data), num_train=8, num_val=4, image_size=(40, 40), num_shards=2)
    cfg = root / "tiny.cfg"
    cfg.write_text(TINY.format(repo=REPO, data=data))
    # run from an unrelated working directory: default model_dir is runs/<config name>
    r = _run([os.path.join(REPO, "train.py"), f"--flagfile={cfg}", "--overlays_at_end=2"],
             cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    return root, cfg, root / "runs" / "tiny", r.stdout


def test_train_cli_writes_everything_under_model_dir(trained):
    _, _, model_dir, stdout = trained
    assert "mIoU" in stdout and "Done: 4 steps" in stdout
    for rel in ("checkpoints/checkpoint", "eval/val_whole_step4_results.json",
                "eval/val_whole_step4_results.txt",
                "overlays/overlay_000.png", "overlays/overlay_001.png", "run_config.json"):
        assert (model_dir / rel).exists(), rel
    assert os.listdir(model_dir / "logs" / "train")
    results = json.loads((model_dir / "eval" / "val_whole_step4_results.json").read_text())
    assert results["num_images"] == 4 and results["step"] == 4
    assert 0.0 <= results["miou"] <= 1.0


def _in_process(module, argv):
    """Run a CLI's `run(argv)` in this process (saves a TensorFlow start-up)."""
    from absl import flags

    try:
        return module.run(argv)
    finally:
        flags.FLAGS.unparse_flags()


def test_evaluate_cli_multiscale_flip_confusion_and_pngs(trained):
    from iseg.cli import evaluate

    root, cfg, model_dir, _ = trained
    scores = _in_process(evaluate, [
        "evaluate", f"--flagfile={cfg}", f"--model_dir={model_dir}", "--eval_scales=0.75,1.0",
        "--eval_flip", "--save_confusion", "--save_predictions=2", "--eval_mode=slide",
        "--eval_crop_size=24,24"])
    name = "val_slide_scales0.75-1_flip_step4"  # split, mode, scales, flip, checkpoint step
    res = json.loads((model_dir / "eval" / f"{name}_results.json").read_text())
    assert res["miou"] == pytest.approx(scores["miou"])
    assert res["inference"]["scales"] == [0.75, 1.0] and res["inference"]["flip"]
    assert res["inference"]["mode"] == "slide"
    assert "mIoU" in (model_dir / "eval" / f"{name}_results.txt").read_text()
    cm = np.load(model_dir / "eval" / f"{name}_confusion.npy")
    assert cm.sum() == res["num_pixels"] == 4 * 40 * 40  # shapes has no ignored pixels
    pngs = sorted(os.listdir(model_dir / "eval" / "predictions_val"))
    assert len(pngs) == 2
    img = Image.open(model_dir / "eval" / "predictions_val" / pngs[0])
    assert img.mode == "P" and img.size == (40, 40)


def test_predict_cli_from_model_dir(trained):
    from iseg.cli import predict

    root, _, model_dir, _ = trained
    inp = root / "inputs"
    inp.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for name, size in (("a", (30, 41)), ("b", (20, 20))):
        Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(inp / f"{name}.png")
    out = root / "pred"
    _in_process(predict, ["predict", f"--model={model_dir}", f"--input={inp}",
                          f"--output={out}"])
    assert sorted(os.listdir(out)) == ["a.png", "a_overlay.jpg", "b.png", "b_overlay.jpg"]
    lab = Image.open(out / "a.png")
    assert lab.mode == "P" and lab.size == (41, 30)
    assert np.asarray(lab).max() < 5
    assert Image.open(out / "a_overlay.jpg").size == (41, 30)


def test_checkpoint_from_a_different_model_names_the_variables(trained, capsys):
    from iseg.cli import evaluate

    root, cfg, model_dir, _ = trained
    with pytest.raises(SystemExit) as e:
        _in_process(evaluate, ["evaluate", f"--flagfile={cfg}", f"--model_dir={model_dir}",
                               "--head_options=channels=8"])
    assert e.value.code == 1
    errors = [line for line in capsys.readouterr().err.splitlines()
              if line.startswith("iseg.cli.evaluate: error:")]
    assert len(errors) == 1
    assert "does not match the model" in errors[0]
    assert "different shapes" in errors[0] and " vs model (" in errors[0]


def test_seeded_demo_runs_repeat_their_losses(trained):
    """Same flags -> same first 20 losses with the real pipeline and the demo model."""
    from iseg.training.config import TrainConfig
    from iseg.training.trainer import train

    root = trained[0]
    losses = []
    for run in ("r1", "r2"):
        cfg = TrainConfig(model="demo_tiny", aux_weight=0.0, dataset="shapes",
                          data_dir=str(root / "shapes"), model_dir=str(root / run),
                          batch_size=1, steps=20, crop_size=(33, 33), optimizer="adam",
                          lr=1e-3, checkpoint_every=100, evaluate_at_end=False,
                          progress=False, seed=3)
        losses.append(train(cfg)["losses"])
    assert len(losses[0]) == 20
    np.testing.assert_array_equal(losses[0], losses[1])


def test_device_resampling_trains_like_the_host_pipeline(trained):
    """--resample=device (views resampled inside the train step) and host give the same
    losses: the same crops reach the model, up to float rounding of the resize."""
    from iseg.training.config import TrainConfig
    from iseg.training.trainer import train

    root = trained[0]
    losses = {}
    for mode in ("host", "device"):
        cfg = TrainConfig(model="demo_tiny", aux_weight=0.0, dataset="shapes",
                          data_dir=str(root / "shapes"), model_dir=str(root / f"rs_{mode}"),
                          batch_size=2, steps=6, crop_size=(33, 33), optimizer="adam",
                          lr=1e-3, checkpoint_every=100, evaluate_at_end=False,
                          progress=False, seed=5, resample=mode)
        losses[mode] = train(cfg)["losses"]
    assert len(losses["device"]) == 6
    np.testing.assert_allclose(losses["device"], losses["host"], rtol=1e-4)


def test_resample_mode(monkeypatch):
    import tensorflow as tf

    from iseg.errors import ConfigError
    from iseg.training.trainer import resample_mode

    def devices(gpus):
        return lambda kind=None: ["/gpu:0"] * gpus if kind == "GPU" else ["/cpu:0"]

    monkeypatch.setattr(tf.config, "list_logical_devices", devices(0))
    assert resample_mode("auto") == "host"
    monkeypatch.setattr(tf.config, "list_logical_devices", devices(2))
    assert resample_mode("auto") == "device"
    assert resample_mode("auto", is_tpu=True) == "host"
    assert resample_mode("device") == "device" and resample_mode("host") == "host"
    with pytest.raises(ConfigError, match="--resample=device is not supported on TPUs"):
        resample_mode("device", is_tpu=True)
    with pytest.raises(ValueError, match="'gpu'"):
        resample_mode("gpu")


def test_train_cli_on_a_model_dir_in_use_is_one_line(trained, capsys):
    from iseg.cli import train
    from iseg.training.lock import ModelDirLock

    root, cfg, model_dir, _ = trained
    before = checksums(model_dir)
    with ModelDirLock(str(model_dir)):
        with pytest.raises(SystemExit) as e:
            _in_process(train, ["train.py", f"--flagfile={cfg}", f"--model_dir={model_dir}",
                                "--steps=6"])
    assert e.value.code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert err == [f"train.py: error: --model_dir={model_dir} is in use by another training "
                   f"run (PID {os.getpid()} on host {socket.gethostname()}, since "
                   f"{err[0].split('since ')[1].split(')')[0]}); wait for it to end or choose "
                   f"another --model_dir (if no run uses it, delete {model_dir}/.lock)"]
    assert checksums(model_dir) == before


@pytest.mark.parametrize("flag, message", [
    ("--crop_size=0,0", "--crop_size=0,0: the crop height and width must be positive"),
    ("--crop_size=1,1", "--crop_size=1,1 is smaller than the model's output stride 16 (its "
                        "coarsest features would be smaller than one pixel); use at least "
                        "16,16"),
    ("--steps=-5", "--steps=-5: must be positive"),
    ("--backbone_options=foo=1", "--backbone_options: Unknown option 'foo' for backbone "
                                 "'resnet18'. Valid options: avg_down, bn_epsilon, "),
    ("--head_options=bar=2", "--head_options: unknown option 'bar' for head "
                             "'deeplabv3plus'. Valid options: align_corners, bn_epsilon, "),
])
def test_bad_training_flags_are_one_line_and_change_nothing(trained, capsys, flag, message):
    from iseg.cli import train

    root, cfg, model_dir, _ = trained
    before = checksums(model_dir)
    with pytest.raises(SystemExit) as e:
        _in_process(train, ["train.py", f"--flagfile={cfg}", f"--model_dir={model_dir}",
                            "--steps=6", flag])
    assert e.value.code == 1
    err = [line for line in capsys.readouterr().err.splitlines()
           if "error" in line.lower()]
    assert len(err) == 1 and err[0].startswith(f"train.py: error: {message}"), err
    if "options" in flag:  # the list goes on; the flags given are not in it
        assert err[0].endswith(", widths" if "backbone" in flag else ", rates, variant")
    else:
        assert err == [f"train.py: error: {message}"]
    assert checksums(model_dir) == before


def _damaged_copy(src, dst, *, truncate=False, bad_label=False):
    """A copy of a converted dataset with its second train shard cut short, or with one
    label pixel of its record 1 set to 9 (num_classes is 5)."""
    import io
    import shutil

    import tensorflow as tf

    shutil.copytree(src, dst)
    path = dst / "train-00001-of-00002.tfrecord"
    if truncate:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
        return path
    records = [r.numpy() for r in tf.data.TFRecordDataset(str(path))]
    example = tf.train.Example.FromString(records[1])
    encoded = example.features.feature["image/segmentation/class/encoded"].bytes_list
    label = np.array(Image.open(io.BytesIO(encoded.value[0])))
    label[0, 0] = 9
    buf = io.BytesIO()
    Image.fromarray(label).save(buf, format="PNG")
    encoded.value[0] = buf.getvalue()
    records[1] = example.SerializeToString()
    with tf.io.TFRecordWriter(str(path)) as w:
        for r in records:
            w.write(r)
    return path, example.features.feature["image/filename"].bytes_list.value[0].decode()


def test_damaged_training_records_are_one_line(trained, tmp_path, capsys):
    from iseg.cli import train

    root, cfg, _, _ = trained
    shard = _damaged_copy(root / "shapes", tmp_path / "cut", truncate=True)
    bad_shard, name = _damaged_copy(root / "shapes", tmp_path / "label", bad_label=True)
    cases = [(tmp_path / "cut", f"truncated TFRecord shard {shard}: record "),
             (tmp_path / "label", "label value outside [0, num_classes) that is not the "
              f"ignore label 255 in record {name} ({bad_shard}, record 1): values 9 ")]
    for data, message in cases:
        before = checksums(data)
        with pytest.raises(SystemExit) as e:
            _in_process(train, ["train.py", f"--flagfile={cfg}", f"--data_dir={data}",
                                f"--model_dir={tmp_path / ('run_' + data.name)}",
                                "--batch_size=2", "--steps=8"])
        assert e.value.code == 1
        err = [line for line in capsys.readouterr().err.splitlines()
               if "error" in line.lower()]
        assert len(err) == 1 and err[0].startswith(f"train.py: error: {message}"), err
        assert err[0].endswith("; pass --skip_corrupt to drop unreadable records and go on"
                               if data.name == "cut" else
                               "; pass --skip_corrupt to drop such records and go on")
        assert checksums(data) == before
    r = _in_process(train, ["train.py", f"--flagfile={cfg}", f"--data_dir={tmp_path / 'label'}",
                            f"--model_dir={tmp_path / 'skip'}", "--batch_size=2", "--steps=8",
                            "--skip_corrupt", "--evaluate_at_end=false"])
    assert r["step"] == 8
