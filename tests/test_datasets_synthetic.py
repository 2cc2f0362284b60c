"""The synthetic shapes dataset and the convert CLI."""

import os
import subprocess
import sys

import numpy as np
import pytest

from datasets_testutil import read_records
from iseg.datasets import get_dataset_spec, load_dataset_info
from iseg.datasets.synthetic import ensure_shapes, generate_shapes, render_example


def test_generate_shapes_writes_a_converted_dataset(tmp_path):
    out = tmp_path / "shapes"
    info = generate_shapes(str(out), num_train=12, num_val=4, image_size=(40, 48), seed=1,
                           num_shards=2)
    spec = get_dataset_spec("shapes")
    assert 4 <= spec.num_classes <= 6
    assert load_dataset_info(str(out)) == info
    assert info["dataset"] == "shapes" and info["num_classes"] == spec.num_classes
    assert info["num_examples"] == {"train": 12, "val": 4}
    assert sorted(os.listdir(out)) == [
        "dataset_info.json", "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord",
        "val-00000-of-00002.tfrecord", "val-00001-of-00002.tfrecord"]
    records = read_records(str(out), "train")
    assert len(records) == 12
    counts = np.zeros(spec.num_classes, np.int64)
    for img, lab in records.values():
        assert img.shape == (40, 48, 3) and lab.shape == (40, 48)
        assert lab.max() < spec.num_classes
        counts += np.bincount(lab.ravel(), minlength=spec.num_classes)
    assert info["class_pixel_counts"]["train"] == counts.tolist()
    assert (counts > 0).all()


def test_classes_are_separable_by_colour():
    rng = np.random.default_rng(0)
    spec = get_dataset_spec("shapes")
    pixels = {k: [] for k in range(spec.num_classes)}
    for _ in range(20):
        img, lab = render_example(rng, (48, 48))
        for k in range(spec.num_classes):
            pixels[k].append(img[lab == k].astype(np.float64))
    means = {k: np.concatenate(v).mean(0) for k, v in pixels.items()}
    for k in range(1, spec.num_classes):
        assert np.abs(means[k] - np.array(spec.palette[k])).max() < 20
        assert np.linalg.norm(means[k] - means[0]) > 80  # far from the background
    bg = np.concatenate(pixels[0])
    assert np.abs(bg - bg.mean(1, keepdims=True)).mean() < 15  # background is grey-ish


def test_same_seed_same_data(tmp_path):
    a = generate_shapes(str(tmp_path / "a"), num_train=3, num_val=1, image_size=(24, 24),
                        seed=5, num_shards=1)
    generate_shapes(str(tmp_path / "b"), num_train=3, num_val=1, image_size=(24, 24), seed=5,
                    num_shards=1)
    ra, rb = read_records(str(tmp_path / "a"), "train"), read_records(str(tmp_path / "b"), "train")
    for k in ra:
        np.testing.assert_array_equal(ra[k][1], rb[k][1])
    assert a["num_examples"] == {"train": 3, "val": 1}


def test_ensure_shapes_generates_only_once(tmp_path):
    out = tmp_path / "s"
    ensure_shapes(str(out), num_train=2, num_val=1, image_size=(16, 16), num_shards=1)
    stamp = os.path.getmtime(out / "dataset_info.json")
    info = ensure_shapes(str(out), num_train=2, num_val=1, image_size=(16, 16), num_shards=1)
    assert os.path.getmtime(out / "dataset_info.json") == stamp
    assert info["dataset"] == "shapes"
    other = tmp_path / "other"
    other.mkdir()
    (other / "dataset_info.json").write_text('{"dataset": "camvid"}')
    with pytest.raises(ValueError, match="not 'shapes'"):
        ensure_shapes(str(other))


def _cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "iseg.cli.convert", *args],
                          capture_output=True, text=True, env=env, timeout=300)


def test_cli_unknown_dataset_lists_valid_names(tmp_path):
    r = _cli("--dataset=pascal", f"--output_dir={tmp_path / 'o'}")
    assert r.returncode != 0
    assert "unknown --dataset=pascal" in r.stderr and "cityscapes" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_converts_generic_folder_pairs(tmp_path):
    from datasets_testutil import save_image, save_label

    d = tmp_path / "raw"
    d.mkdir()
    (d / "classes.txt").write_text("a\nb\n")
    for split in ("train", "val"):
        save_image(str(d / "images" / split / "x.png"), np.zeros((6, 7, 3)), "PNG")
        save_label(str(d / "labels" / split / "x.png"), np.eye(6, 7))
    r = _cli("--dataset=generic", f"--data_dir={d}", f"--output_dir={tmp_path / 'o'}",
             f"--class_list={d / 'classes.txt'}", "--compression=ZLIB")
    assert r.returncode == 0, r.stderr
    info = load_dataset_info(str(tmp_path / "o"))
    assert info["class_names"] == ["a", "b"] and info["compression"] == "ZLIB"
    assert info["class_pixel_counts"]["val"] == [36, 6]
    r = _cli("--dataset=generic", f"--data_dir={d}", f"--output_dir={tmp_path / 'p'}",
             f"--class_list={d / 'nope.txt'}")
    assert r.returncode != 0 and "nope.txt" in r.stderr and "Traceback" not in r.stderr
