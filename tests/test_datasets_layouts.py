"""Every converter layout on tiny synthetic datasets built in tmp dirs.

For each layout the test writes images and raw labels in the dataset's own folder layout,
converts them, reads the records back with the raw protobuf API and compares: image bytes
unchanged, labels equal to an oracle mapping written here (a per-pixel dict lookup).
"""

import json
import os

import numpy as np
import pytest

from datasets_testutil import map_with, random_image, read_records, save_image, save_label
from iseg.datasets import get_dataset_spec, load_dataset_info
from iseg.datasets.convert import convert_dataset

H, W = 12, 16

# Cityscapes labelId -> trainId (the official table, written out independently here).
CS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
      25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
COCO_UNUSED = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91}
COCO_USED = [i for i in range(1, 183) if i not in COCO_UNUSED]


def _table(kind):
    if kind == "identity21":
        t = {i: i for i in range(21)}
    elif kind == "context59":
        t = {0: 255, **{k: k - 1 for k in range(1, 60)}}
    elif kind == "context60":
        t = {k: k for k in range(60)}
    elif kind == "cityscapes":
        t = {k: CS.get(k, 255) for k in range(34)}
    elif kind == "ade20k":
        t = {0: 255, **{k: k - 1 for k in range(1, 151)}}
    elif kind == "coco164k":
        t = {v: (COCO_USED.index(v + 1) if v + 1 in COCO_USED else 255) for v in range(182)}
    elif kind == "coco10k":
        t = {0: 255, **{v: (COCO_USED.index(v) if v in COCO_USED else 255) for v in range(1, 183)}}
    elif kind == "camvid":
        t = {**{k: k for k in range(11)}, 11: 255}
    elif kind == "generic3":
        t = {0: 0, 1: 1, 2: 2}
    t[255] = 255
    return t


def _raw(rng, table):
    values = np.array(sorted(table))
    return values[rng.integers(0, len(values), size=(H, W))]


def _expect(expected, key, image, raw, table):
    expected[key] = (image, map_with(table, raw))


def build(tmp, layout, rng):
    """(data_dir, dataset name, options, splits, {split: {key: (image_path, label)}})."""
    d = str(tmp)
    os.makedirs(d, exist_ok=True)
    exp = {"train": {}, "val": {}}
    if layout in ("voc", "voc_palette"):
        t = _table("identity21")
        root = os.path.join(d, "VOCdevkit", "VOC2012")
        for split, ids in (("train", ["a1", "a2"]), ("val", ["b1"])):
            os.makedirs(os.path.join(root, "ImageSets", "Segmentation"), exist_ok=True)
            with open(os.path.join(root, "ImageSets", "Segmentation", split + ".txt"), "w") as f:
                f.write("\n".join(ids) + "\n")
            for i in ids:
                img = os.path.join(root, "JPEGImages", i + ".jpg")
                save_image(img, random_image(rng, H, W), "JPEG")
                raw = _raw(rng, t)
                save_label(os.path.join(root, "SegmentationClass", i + ".png"), raw, palette=True)
                _expect(exp[split], i, img, raw, t)
        return d, "voc2012", {}, exp
    if layout.startswith("pascal_context"):
        t = _table("context60" if layout.endswith("60") else "context59")
        root = os.path.join(d, "VOCdevkit", "VOC2010")
        for split, ids in (("train", ["c1", "c2"]), ("val", ["c3"])):
            os.makedirs(os.path.join(root, "ImageSets", "SegmentationContext"), exist_ok=True)
            with open(
                os.path.join(root, "ImageSets", "SegmentationContext", split + ".txt"), "w"
            ) as f:
                f.write("\n".join(ids) + "\n")
            for i in ids:
                img = os.path.join(root, "JPEGImages", i + ".jpg")
                save_image(img, random_image(rng, H, W), "JPEG")
                raw = _raw(rng, {k: v for k, v in t.items() if k != 255})
                save_label(os.path.join(root, "SegmentationClassContext", i + ".png"), raw)
                _expect(exp[split], i, img, raw, t)
        name = "pascal_context60" if layout.endswith("60") else "pascal_context"
        return d, name, {}, exp
    if layout == "cityscapes":
        t = _table("cityscapes")
        for split, stems in (("train", ["aachen_000000_000019", "bonn_000001_000019"]),
                             ("val", ["frankfurt_000000_000294"])):
            for s in stems:
                city = s.split("_")[0]
                img = os.path.join(d, "leftImg8bit", split, city, s + "_leftImg8bit.png")
                save_image(img, random_image(rng, H, W), "PNG")
                raw = _raw(rng, {k: v for k, v in t.items() if k != 255})
                save_label(os.path.join(d, "gtFine", split, city, s + "_gtFine_labelIds.png"), raw)
                _expect(exp[split], s, img, raw, t)
        return d, "cityscapes", {}, exp
    if layout == "ade20k":
        t = _table("ade20k")
        root = os.path.join(d, "ADEChallengeData2016")
        for split, sub, ids in (("train", "training", ["ADE_train_1", "ADE_train_2"]),
                                ("val", "validation", ["ADE_val_1"])):
            for i in ids:
                img = os.path.join(root, "images", sub, i + ".jpg")
                save_image(img, random_image(rng, H, W), "JPEG")
                raw = _raw(rng, {k: v for k, v in t.items() if k != 255})
                save_label(os.path.join(root, "annotations", sub, i + ".png"), raw)
                _expect(exp[split], i, img, raw, t)
        return d, "ade20k", {}, exp
    if layout == "cocostuff164k":
        t = _table("coco164k")
        for split, sub, ids in (("train", "train2017", ["000000000009", "000000000025"]),
                                ("val", "val2017", ["000000000139"])):
            for i in ids:
                img = os.path.join(d, "images", sub, i + ".jpg")
                save_image(img, random_image(rng, H, W), "JPEG")
                raw = _raw(rng, t)
                save_label(os.path.join(d, "annotations", sub, i + ".png"), raw)
                _expect(exp[split], i, img, raw, t)
        return d, "cocostuff164k", {}, exp
    if layout in ("cocostuff10k", "cocostuff10k_png"):
        t = _table("coco10k")
        os.makedirs(os.path.join(d, "imageLists"))
        for split, lst, ids in (("train", "train", ["COCO_train2014_000000000077", "x2"]),
                                ("val", "test", ["COCO_train2014_000000000078"])):
            with open(os.path.join(d, "imageLists", lst + ".txt"), "w") as f:
                f.write("\n".join(ids) + "\n")
            for i in ids:
                img = os.path.join(d, "images", i + ".jpg")
                save_image(img, random_image(rng, H, W), "JPEG")
                raw = _raw(rng, {k: v for k, v in t.items() if k != 255})
                if layout == "cocostuff10k":
                    scipy_io = pytest.importorskip("scipy.io")
                    os.makedirs(os.path.join(d, "annotations"), exist_ok=True)
                    scipy_io.savemat(os.path.join(d, "annotations", i + ".mat"),
                                     {"S": raw.astype(np.uint16)})
                else:
                    save_label(os.path.join(d, "annotations", i + ".png"), raw)
                _expect(exp[split], i, img, raw, t)
        return d, "cocostuff10k", {}, exp
    if layout == "camvid":
        t = _table("camvid")
        for split, ids in (("train", ["0001TP_1", "0001TP_2"]), ("val", ["0016E5_1"])):
            for i in ids:
                img = os.path.join(d, split, i + ".png")
                save_image(img, random_image(rng, H, W), "PNG")
                raw = _raw(rng, {k: v for k, v in t.items() if k != 255})
                save_label(os.path.join(d, split + "annot", i + ".png"), raw)
                _expect(exp[split], i, img, raw, t)
        return d, "camvid", {}, exp
    if layout == "generic":
        t = _table("generic3")
        with open(os.path.join(d, "classes.txt"), "w") as f:
            f.write("# my classes\nsky 10 20 30\nroad\n\nwet grass 1 2 3\n")
        for split, ids in (("train", ["g1", "g2"]), ("val", ["g3"])):
            for i in ids:
                img = os.path.join(d, "images", split, i + ".jpg")
                save_image(img, random_image(rng, H, W), "JPEG")
                raw = _raw(rng, t)
                save_label(os.path.join(d, "labels", split, i + ".png"), raw)
                _expect(exp[split], i, img, raw, t)
        return d, "generic", {"class_list": os.path.join(d, "classes.txt")}, exp
    raise AssertionError(layout)


LAYOUTS = ["voc", "pascal_context", "pascal_context60", "cityscapes", "ade20k",
           "cocostuff164k", "cocostuff10k", "cocostuff10k_png", "camvid", "generic"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_conversion_matches_oracle(tmp_path, layout):
    rng = np.random.default_rng(LAYOUTS.index(layout))
    data_dir, name, options, expected = build(tmp_path / "raw", layout, rng)
    out = str(tmp_path / "out")
    info = convert_dataset(name, data_dir, out, num_workers=0, progress=False, **options)
    spec = get_dataset_spec(name, **options)
    assert load_dataset_info(out) == json.loads(json.dumps(info))
    assert info["num_classes"] == spec.num_classes
    assert info["ignore_label"] == 255
    for split in ("train", "val"):
        records = read_records(out, split)
        assert sorted(records) == sorted(expected[split])
        assert info["num_examples"][split] == len(expected[split])
        counts = np.zeros(spec.num_classes, np.int64)
        for key, (image_path, label) in expected[split].items():
            img, lab = records[key]
            from PIL import Image

            assert np.array_equal(img, np.asarray(Image.open(image_path).convert("RGB")))
            assert lab.dtype == np.uint8
            np.testing.assert_array_equal(lab, label)
            counts += np.bincount(label[label != 255], minlength=spec.num_classes)
        assert info["class_pixel_counts"][split] == counts.tolist()


def test_generic_class_list(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("# comment\nsky 10 20 30\nroad\n\nwet grass 1 2 3\n")
    spec = get_dataset_spec("generic", class_list=str(path))
    assert spec.class_names == ("sky", "road", "wet grass")
    assert spec.palette[0] == (10, 20, 30) and spec.palette[2] == (1, 2, 3)
    assert len(spec.palette) == 3
    with pytest.raises(ValueError, match="class-list"):
        get_dataset_spec("generic")


def test_voc_train_aug_from_list(tmp_path):
    rng = np.random.default_rng(7)
    root = tmp_path / "VOC2012"
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train_aug.txt").write_text("a\nb\n")
    expected = {}
    for i, folder in (("a", "SegmentationClassAug"), ("b", "SegmentationClass")):
        save_image(str(root / "JPEGImages" / f"{i}.jpg"), random_image(rng, H, W), "JPEG")
        raw = rng.integers(0, 21, size=(H, W))
        save_label(str(root / folder / f"{i}.png"), raw)
        expected[i] = raw
    out = tmp_path / "out"
    convert_dataset("voc2012", str(tmp_path), str(out), splits="train_aug", num_workers=0,
                    progress=False)
    records = read_records(str(out), "train_aug")
    for i, raw in expected.items():
        np.testing.assert_array_equal(records[i][1], raw)


def test_voc_train_aug_from_sbd(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(8)
    root = tmp_path / "VOC2012"
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("v1\nv2\n")
    (sets / "val.txt").write_text("v3\n")
    sbd = tmp_path / "benchmark_RELEASE" / "dataset"
    (sbd / "cls").mkdir(parents=True)
    (sbd / "train.txt").write_text("s1\nv3\nv1\n")  # v3 is VOC val: excluded
    (sbd / "val.txt").write_text("s2\n")
    expected = {}
    for i in ("v1", "v2", "v3", "s1", "s2"):
        save_image(str(root / "JPEGImages" / f"{i}.jpg"), random_image(rng, H, W), "JPEG")
        raw = rng.integers(0, 21, size=(H, W)).astype(np.uint8)
        if i.startswith("v"):
            save_label(str(root / "SegmentationClass" / f"{i}.png"), raw)
        else:
            scipy_io.savemat(str(sbd / "cls" / f"{i}.mat"), {"GTcls": {"Segmentation": raw}})
        expected[i] = raw
    spec = get_dataset_spec("voc2012")
    import dataclasses

    spec = dataclasses.replace(spec, options=(("sbd_dir", str(sbd)),))
    out = tmp_path / "out"
    convert_dataset(spec, str(tmp_path), str(out), splits=["train_aug"], num_workers=0,
                    progress=False)
    records = read_records(str(out), "train_aug")
    assert sorted(records) == ["s1", "s2", "v1", "v2"]
    for i in records:
        np.testing.assert_array_equal(records[i][1], expected[i])


def test_parallel_conversion_equals_serial(tmp_path):
    rng = np.random.default_rng(3)
    data_dir, name, options, _ = build(tmp_path / "raw", "camvid", rng)
    a = convert_dataset(name, data_dir, str(tmp_path / "a"), num_workers=0, progress=False)
    b = convert_dataset(name, data_dir, str(tmp_path / "b"), num_workers=2, num_shards=2,
                        splits=["train"], progress=False)
    assert a["class_pixel_counts"]["train"] == b["class_pixel_counts"]["train"]
    ra, rb = read_records(str(tmp_path / "a"), "train"), read_records(str(tmp_path / "b"), "train")
    assert sorted(os.listdir(tmp_path / "b")) == [
        "dataset_info.json", "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
    for k in ra:
        np.testing.assert_array_equal(ra[k][1], rb[k][1])


def test_compressed_output_and_split_merge(tmp_path):
    rng = np.random.default_rng(4)
    data_dir, name, options, expected = build(tmp_path / "raw", "ade20k", rng)
    out = str(tmp_path / "out")
    convert_dataset(name, data_dir, out, splits="train", compression="GZIP", num_workers=0,
                    progress=False)
    info = convert_dataset(name, data_dir, out, splits="val", compression="GZIP",
                           num_workers=0, progress=False)
    assert info["compression"] == "GZIP"
    assert info["num_examples"] == {"train": 2, "val": 1}
    import tensorflow as tf

    n = sum(1 for _ in tf.data.TFRecordDataset(
        os.path.join(out, "train-00000-of-00001.tfrecord"), compression_type="GZIP"))
    assert n == 2
