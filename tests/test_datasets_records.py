"""Reading records written by other tools: TF DeepLab / Model Garden `tf.train.Example`
records and the original iSeg serialized-tensor records (float32 and JPEG variants)."""

import numpy as np
import pytest
import tensorflow as tf

from iseg.datasets import tfrecord
from iseg.datasets.augment import AugmentOptions
from iseg.datasets.pipeline import build_dataset

H, W = 9, 12


def _feature_bytes(v):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))


def _feature_int(v):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))


def _examples(n, rng, max_label):
    out = []
    for i in range(n):
        img = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
        lab = rng.integers(0, max_label + 1, size=(H, W), dtype=np.uint8)
        out.append((f"img{i}", img, lab))
    return out


def _write(path, records, compression=""):
    with tf.io.TFRecordWriter(str(path), options=tf.io.TFRecordOptions(compression)) as w:
        for r in records:
            w.write(r)


def _deeplab_record(name, img, lab, with_filename=True):
    feature = {
        "image/encoded": _feature_bytes(tf.io.encode_png(img).numpy()),
        "image/format": _feature_bytes(b"png"),
        "image/height": _feature_int(H),
        "image/width": _feature_int(W),
        "image/channels": _feature_int(3),
        "image/segmentation/class/encoded": _feature_bytes(
            tf.io.encode_png(lab[..., None]).numpy()
        ),
        "image/segmentation/class/format": _feature_bytes(b"png"),
    }
    if with_filename:
        feature["image/filename"] = _feature_bytes(name.encode())
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _iseg_record(img, lab, jpeg):
    if jpeg:
        image = tf.io.serialize_tensor(tf.io.encode_jpeg(img, quality=90)).numpy()
    else:
        image = tf.io.serialize_tensor(tf.constant(img, tf.float32)).numpy()
    label = tf.io.serialize_tensor(tf.constant(lab[..., None], tf.int32)).numpy()
    feature = {"image": _feature_bytes(image), "label": _feature_bytes(label),
               "height": _feature_int(H), "width": _feature_int(W), "depth": _feature_int(3)}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _eval(data_dir, split, **kw):
    ds = build_dataset(str(data_dir), split, training=False, batch_size=1, crop_size=(H, W),
                       **kw)
    return [(f["image"][0].numpy(), lab[0].numpy(), f["filename"][0].numpy()) for f, lab in ds]


def test_deeplab_records_with_raw_ade20k_labels(tmp_path):
    rng = np.random.default_rng(0)
    exs = _examples(4, rng, 150)
    _write(tmp_path / "val-00000-of-00002.tfrecord", [_deeplab_record(*e) for e in exs[:2]])
    _write(tmp_path / "val-00001-of-00002.tfrecord", [_deeplab_record(*e) for e in exs[2:]])
    assert tfrecord.detect_record_format(str(tmp_path / "val-00000-of-00002.tfrecord")) == "example"
    got = _eval(tmp_path, "val", dataset="ade20k", raw_labels=True)
    assert len(got) == 4
    for (name, img, lab), (gimg, glab, gname) in zip(exs, got):
        assert gname.decode() == name
        np.testing.assert_allclose(gimg, img / 127.5 - 1.0, atol=1e-6)
        expected = np.where(lab == 0, 255, lab.astype(np.int32) - 1)
        np.testing.assert_array_equal(glab, expected)


def test_deeplab_records_without_mapping_reject_raw_values(tmp_path):
    rng = np.random.default_rng(1)
    (name, img, lab), = _examples(1, rng, 150)
    lab[0, 0] = 150  # not a valid ADE20K train id (0..149) nor 255
    _write(tmp_path / "val-00000-of-00001.tfrecord", [_deeplab_record(name, img, lab)])
    with pytest.raises(tf.errors.InvalidArgumentError, match="label value outside"):
        _eval(tmp_path, "val", dataset="ade20k")


def test_model_garden_style_gzip_pattern_no_filename(tmp_path):
    rng = np.random.default_rng(2)
    exs = _examples(3, rng, 20)
    _write(tmp_path / "voc_val.tfrecord-00000-of-00001",
           [_deeplab_record(*e, with_filename=False) for e in exs], "GZIP")
    got = _eval(tmp_path, "val", dataset="voc2012", compression="GZIP",
                file_pattern="voc_val.tfrecord-*", check="full")
    for (_, img, lab), (gimg, glab, gname) in zip(exs, got):
        assert gname == b""
        np.testing.assert_allclose(gimg, img / 127.5 - 1.0, atol=1e-6)
        np.testing.assert_array_equal(glab, lab)


@pytest.mark.parametrize("jpeg", [False, True])
def test_original_iseg_records(tmp_path, jpeg):
    rng = np.random.default_rng(3)
    exs = _examples(3, rng, 58)
    _write(tmp_path / "val-0.tfrecord", [_iseg_record(img, lab, jpeg) for _, img, lab in exs],
           "ZLIB")
    fmt = tfrecord.detect_record_format(str(tmp_path / "val-0.tfrecord"), "ZLIB")
    assert fmt == ("iseg_jpeg" if jpeg else "iseg_float")
    got = _eval(tmp_path, "val", dataset="pascal_context", compression="ZLIB")
    assert len(got) == 3
    for (_, img, lab), (gimg, glab, _) in zip(exs, got):
        if jpeg:
            img = tf.io.decode_jpeg(tf.io.encode_jpeg(img, quality=90)).numpy()
        np.testing.assert_allclose(gimg, img / 127.5 - 1.0, atol=1e-6)
        np.testing.assert_array_equal(glab, lab)


def test_original_iseg_records_train_with_mapping(tmp_path):
    """Raw Pascal Context labels (0 = background) mapped on read by the 59-class spec."""
    rng = np.random.default_rng(4)
    exs = _examples(4, rng, 59)
    _write(tmp_path / "train-0.tfrecord", [_iseg_record(img, lab, True) for _, img, lab in exs])
    ds = build_dataset(str(tmp_path), "train", training=True, batch_size=2, crop_size=(H, W),
                       dataset="pascal_context", raw_labels=True,
                       augment=AugmentOptions(scales=(1.0,), flip=False, brightness=False),
                       seed=0, deterministic=True,
                       repeat=False, shuffle_buffer=1)
    labels = np.concatenate([lab.numpy() for _, lab in ds])
    expected = np.stack([np.where(lab == 0, 255, lab.astype(np.int32) - 1) for _, _, lab in exs])
    np.testing.assert_array_equal(labels, expected)


def test_make_iseg_example_round_trip(tmp_path):
    img = np.arange(H * W * 3, dtype=np.uint8).reshape(H, W, 3)
    lab = (np.arange(H * W) % 7).reshape(H, W)
    _write(tmp_path / "val-0.tfrecord", [tfrecord.make_iseg_example(img, lab)])
    got = _eval(tmp_path, "val", dataset="camvid")
    np.testing.assert_allclose(got[0][0], img / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_array_equal(got[0][1], lab)


def test_unknown_record_keys(tmp_path):
    ex = tf.train.Example(features=tf.train.Features(feature={"foo": _feature_int(1)}))
    _write(tmp_path / "val-0.tfrecord", [ex.SerializeToString()])
    with pytest.raises(ValueError, match=r"unknown record keys in .*val-0\.tfrecord"):
        _eval(tmp_path, "val", dataset="camvid")


def test_foreign_folder_needs_dataset_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset_info.json"):
        _eval(tmp_path, "val")


def test_reading_from_a_filesystem_url(tmp_path):
    """Converted folders on cloud storage (gs://...) are read through tf.io.gfile; the
    in-memory ram:// filesystem stands in for it here."""
    from iseg.datasets.convert import convert_dataset
    from iseg.datasets.synthetic import write_raw_shapes

    raw = tmp_path / "raw"
    raw.mkdir()
    write_raw_shapes(str(raw), num_train=3, num_val=2, image_size=(H, W))
    local = tmp_path / "out"
    convert_dataset("shapes", str(raw), str(local), num_workers=0, progress=False)
    url = "ram://iseg-test/shapes"
    tf.io.gfile.makedirs(url)
    for name in tf.io.gfile.listdir(str(local)):
        tf.io.gfile.copy(str(local / name), f"{url}/{name}", overwrite=True)
    from iseg.datasets import load_dataset_info

    assert load_dataset_info(url)["num_examples"] == {"train": 3, "val": 2}
    got = _eval(url, "val")
    assert [g[2] for g in got] == [b"val_00000", b"val_00001"]
    ds = build_dataset(url, "train", training=True, batch_size=2, crop_size=(H, W), seed=0)
    images, labels = next(iter(ds))
    assert images.shape == (2, H, W, 3) and labels.shape == (2, H, W)
