"""Bad input: every case gives a clear error naming the file and value, and a failed
conversion leaves no output that looks complete."""

import os

import numpy as np
import pytest

from datasets_testutil import random_image, save_image, save_label
from iseg.datasets import get_dataset_spec, load_dataset_info
from iseg.datasets.convert import convert_dataset
from iseg.datasets.layouts import ConversionError

H, W = 10, 14


def _generic(tmp, n=3, labels=None, num_classes=3):
    d = tmp / "raw"
    (d / "images" / "train").mkdir(parents=True)
    (d / "classes.txt").write_text("\n".join(f"c{i}" for i in range(num_classes)) + "\n")
    rng = np.random.default_rng(0)
    for i in range(n):
        save_image(str(d / "images" / "train" / f"x{i}.png"), random_image(rng, H, W), "PNG")
        lab = rng.integers(0, num_classes, size=(H, W)) if labels is None else labels[i]
        save_label(str(d / "labels" / "train" / f"x{i}.png"), lab)
    return d


def _convert(d, out, **kw):
    return convert_dataset("generic", str(d), str(out), splits=["train"], num_workers=0,
                           progress=False, class_list=str(d / "classes.txt"), **kw)


def _assert_no_output(out):
    assert not os.path.exists(out)
    leftovers = [n for n in os.listdir(os.path.dirname(out)) if ".partial-" in n]
    assert leftovers == []


def test_label_value_out_of_range(tmp_path):
    labels = [np.zeros((H, W), np.uint8) for _ in range(3)]
    labels[1][3, 4] = 7
    d = _generic(tmp_path, labels=labels)
    out = tmp_path / "out"
    with pytest.raises(ConversionError) as e:
        _convert(d, out)
    msg = str(e.value)
    assert str(d / "labels" / "train" / "x1.png") in msg
    assert "label value 7" in msg and "0..2" in msg
    _assert_no_output(str(out))


def test_label_value_error_from_worker_processes(tmp_path):
    labels = [np.zeros((H, W), np.uint8) for _ in range(4)]
    labels[2][0, 0] = 200
    d = _generic(tmp_path, n=4, labels=labels)
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match=r"label value 200 in .*x2\.png"):
        convert_dataset("generic", str(d), str(out), splits=["train"], num_workers=2,
                        progress=False, class_list=str(d / "classes.txt"))
    _assert_no_output(str(out))


def test_size_mismatch(tmp_path):
    labels = [np.zeros((H, W), np.uint8), np.zeros((H + 1, W), np.uint8), np.zeros((H, W))]
    d = _generic(tmp_path, labels=labels)
    with pytest.raises(ConversionError) as e:
        _convert(d, tmp_path / "out")
    msg = str(e.value)
    assert "size mismatch" in msg
    assert str(d / "images" / "train" / "x1.png") in msg
    assert str(d / "labels" / "train" / "x1.png") in msg
    assert f"{W}x{H}" in msg and f"{W}x{H + 1}" in msg
    _assert_no_output(str(tmp_path / "out"))


def test_rgb_label_rejected(tmp_path):
    d = _generic(tmp_path)
    save_image(str(d / "labels" / "train" / "x0.png"), np.zeros((H, W, 3)), "PNG")
    with pytest.raises(ConversionError, match=r"x0\.png has mode RGB"):
        _convert(d, tmp_path / "out")


def test_missing_file_listed_in_split_file(tmp_path):
    root = tmp_path / "VOC2012"
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("a\nb\n")
    rng = np.random.default_rng(1)
    for i in ("a", "b"):
        save_label(str(root / "SegmentationClass" / f"{i}.png"), np.zeros((H, W)))
    save_image(str(root / "JPEGImages" / "a.jpg"), random_image(rng, H, W), "JPEG")
    out = tmp_path / "out"
    with pytest.raises(ConversionError) as e:
        convert_dataset("voc2012", str(tmp_path), str(out), splits="train", num_workers=0,
                        progress=False)
    msg = str(e.value)
    assert str(root / "JPEGImages" / "b.jpg") in msg
    assert str(root / "ImageSets" / "Segmentation" / "train.txt") in msg
    _assert_no_output(str(out))


def test_missing_split_file(tmp_path):
    (tmp_path / "VOC2012" / "JPEGImages").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"split file not found: .*val\.txt"):
        convert_dataset("voc2012", str(tmp_path), str(tmp_path / "out"), splits="val",
                        num_workers=0, progress=False)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_unreadable_image(tmp_path, damage):
    d = _generic(tmp_path)
    path = d / "images" / "train" / "x2.png"
    if damage == "garbage":
        path.write_bytes(b"this is not an image")
    else:
        path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(ConversionError) as e:
        _convert(d, tmp_path / "out")
    assert f"unreadable image {path}" in str(e.value)
    _assert_no_output(str(tmp_path / "out"))


def test_failed_reconversion_keeps_previous_output(tmp_path):
    d = _generic(tmp_path)
    out = tmp_path / "out"
    _convert(d, out)
    before = sorted(os.listdir(out))
    info = load_dataset_info(str(out))
    save_label(str(d / "labels" / "train" / "x0.png"), np.full((H, W), 9))
    with pytest.raises(ConversionError, match="label value 9"):
        _convert(d, out)
    assert sorted(os.listdir(out)) == before
    assert load_dataset_info(str(out)) == info
    assert not [n for n in os.listdir(tmp_path) if ".partial-" in n]


def test_unknown_dataset_name():
    with pytest.raises(ValueError) as e:
        get_dataset_spec("pascal_voc")
    msg = str(e.value)
    assert "'pascal_voc'" in msg
    for name in ("voc2012", "cityscapes", "ade20k", "cocostuff164k", "camvid", "shapes"):
        assert name in msg


def test_missing_dataset_info(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "dataset_info.json")):
        load_dataset_info(str(tmp_path))


# ----------------------------------------------------------------------------- records


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rec")
    d = _generic(tmp, n=4)
    _convert(d, tmp / "out", num_shards=2)
    return tmp / "out"


def _copy(converted, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(converted, out)
    return out, out / "train-00001-of-00002.tfrecord"


def _build(data_dir, **kw):
    from iseg.datasets.pipeline import build_dataset

    ds = build_dataset(str(data_dir), "train", training=False, batch_size=1,
                       crop_size=(H, W), **kw)
    return [f["filename"].numpy()[0] for f, _ in ds]


def test_reading_intact_records(converted):
    assert sorted(_build(converted)) == [b"x0", b"x1", b"x2", b"x3"]


def test_truncated_record_names_the_shard(converted, tmp_path):
    out, shard = _copy(converted, tmp_path)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 30])
    with pytest.raises(ValueError) as e:
        _build(out)
    assert f"truncated TFRecord shard {shard}" in str(e.value)


def test_corrupt_header_names_the_shard(converted, tmp_path):
    out, shard = _copy(converted, tmp_path)
    data = bytearray(shard.read_bytes())
    data[3] ^= 0xFF  # first record's length bytes
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"corrupt TFRecord shard {shard}"):
        _build(out)


def test_corrupt_payload_named_with_full_check(converted, tmp_path):
    out, shard = _copy(converted, tmp_path)
    data = bytearray(shard.read_bytes())
    data[40] ^= 0xFF  # inside the first record's payload: only the data CRC catches it
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError) as e:
        _build(out, check="full")
    assert f"TFRecord shard {shard}" in str(e.value)


def test_incomplete_shard_set(converted, tmp_path):
    out, shard = _copy(converted, tmp_path)
    shard.unlink()
    with pytest.raises(ValueError, match="incomplete or mixed shard set"):
        _build(out)


def test_invalid_label_in_foreign_record_names_the_record(tmp_path):
    import tensorflow as tf

    from iseg.datasets import tfrecord

    lab = np.zeros((H, W), np.uint8)
    lab[0, 0] = 77
    png = tf.io.encode_png(lab[..., None]).numpy()
    img = tf.io.encode_png(np.zeros((H, W, 3), np.uint8)).numpy()
    with tfrecord.record_writer(str(tmp_path / "val-00000-of-00001.tfrecord")) as w:
        w.write(tfrecord.make_example(img, "png", H, W, png, "bad_one"))
    from iseg.datasets.pipeline import build_dataset

    ds = build_dataset(str(tmp_path), "val", training=False, batch_size=1, crop_size=(H, W),
                       dataset="camvid")
    with pytest.raises(tf.errors.InvalidArgumentError) as e:
        list(ds)
    assert "label value outside" in str(e.value) and "bad_one" in str(e.value)


def test_skip_corrupt_reads_on(converted, tmp_path):
    out, shard = _copy(converted, tmp_path)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 30])  # the last record of shard 1 is cut
    names = _build(out, skip_corrupt=True)
    assert b"x0" in names and b"x1" in names  # shard 0 is intact
    assert len(names) < 4
