"""The zipped semi-supervised input: partitioned streams, unnormalised images, the
padding mask of unlabeled crops, device resampling, a checkpointable iterator."""

import numpy as np
import pytest
import tensorflow as tf

from datasets_testutil import read_records
from iseg.datasets.augment import AugmentOptions
from iseg.errors import ConfigError
from iseg.semi.data import make_partition, make_semi_dataset_fn, resolve_batch
from iseg.training.config import TrainConfig

PLAIN = AugmentOptions(scale_range=(1.0, 1.0), scale_step=0, flip=False, brightness=False)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from iseg.datasets.synthetic import generate_shapes

    out = tmp_path_factory.mktemp("semi_data") / "shapes"
    generate_shapes(str(out), num_train=8, num_val=2, image_size=(24, 24), num_shards=2)
    return str(out)


def _cfg(shapes, **kw):
    kw = dict(dict(crop_size=(24, 24), labeled_fraction=0.25), **kw)
    return TrainConfig(semi="none", data_dir=shapes, batch_size=2, shuffle_buffer=8, seed=1,
                       **kw)


def _batches(cfg, n, streams=2, resample="host", augment=PLAIN):
    fn = make_semi_dataset_fn(cfg, resample, streams, make_partition(cfg), augment)
    it = iter(fn(None, cfg.seed))
    return [{k: v.numpy() for k, v in resolve_batch(next(it)).items()} for _ in range(n)]


def _which(image, records):
    """The name of the record whose pixels `image` holds (scale 1, no flip; up to JPEG
    decoder differences)."""
    dist = {n: np.abs(img - image).mean() for n, (img, _) in records.items()}
    best = sorted(dist, key=dist.get)
    assert dist[best[0]] < 5.0 and dist[best[1]] > 15.0, dist
    return best[0]


def test_streams_read_their_part_of_the_partition_unnormalised(shapes):
    cfg = _cfg(shapes, unlabeled_batch_size=3)
    records = read_records(shapes, "train")
    labeled, unlabeled, split = make_partition(cfg)
    assert split == "train" and len(labeled) == 2 and len(unlabeled) == 6
    seen = {"image": set(), "u_image": set(), "u_image2": set()}
    for batch in _batches(cfg, 6):
        assert batch["image"].shape == (2, 24, 24, 3) and batch["u_image"].shape[0] == 3
        assert batch["u_image2"].shape == (3, 24, 24, 3) and batch["image"].max() > 1.5
        for key in seen:
            for image in batch[key]:
                seen[key].add(_which(image, records))
        for image, label in zip(batch["image"], batch["label"]):
            np.testing.assert_array_equal(label, records[_which(image, records)][1])
        assert not batch["u_ignore"].any() and not batch["u_ignore2"].any()
    assert seen["image"] == set(labeled)  # oversampled: the 2 labeled examples repeat
    assert seen["u_image"] <= set(unlabeled) and seen["u_image2"] <= set(unlabeled)
    assert len(seen["u_image"]) == 6


def test_labeled_examples_come_from_the_labeled_split(shapes, tmp_path):
    """VOC's blended lists: labeled ids of train_aug, not train (here: val, not train)."""
    val, train = read_records(shapes, "val"), read_records(shapes, "train")
    listed = sorted(val)
    lab, unl = tmp_path / "labeled.txt", tmp_path / "unlabeled.txt"
    lab.write_text("".join(f"JPEGImages/{n}.jpg SegmentationClass/{n}.png\n" for n in listed))
    unl.write_text("".join(f"{n}\n" for n in sorted(train)[:3]))
    cfg = _cfg(shapes, labeled_fraction=None, labeled_list=str(lab), unlabeled_list=str(unl),
               labeled_split="val", unlabeled_split="train")
    assert make_partition(cfg) == (listed, sorted(train)[:3], "train")
    seen = set()
    for batch in _batches(cfg, 4, streams=1):
        for image, label in zip(batch["image"], batch["label"]):
            name = _which(image, {**val, **train})
            np.testing.assert_array_equal(label, val[name][1])
            seen.add(name)
        assert {_which(image, train) for image in batch["u_image"]} <= set(sorted(train)[:3])
    assert seen == set(listed)
    drawn = make_partition(_cfg(shapes, labeled_fraction=0.5, labeled_split="val"))
    assert sorted(drawn[0] + drawn[1]) == listed and drawn[2] == "val"
    with pytest.raises(ConfigError) as e:  # the default labeled split: train
        make_partition(_cfg(shapes, labeled_fraction=None, labeled_list=str(lab)))
    assert str(e.value) == (f"{lab}: id {listed[0]!r} is not in the train split of {shapes} "
                            f"(2 of 2 ids unknown)")


def test_padding_is_ignored_in_unlabeled_crops_and_255_in_labels(shapes):
    cfg = _cfg(shapes, crop_size=(30, 28))
    for batch in _batches(cfg, 2, streams=1):
        assert "u_image2" not in batch
        pad = np.ones((30, 28), bool)
        pad[:24, :24] = False
        assert (batch["u_ignore"] == pad).all()
        assert (batch["label"][:, pad] == 255).all() and (batch["label"][:, ~pad] < 5).all()
        assert (batch["u_image"][:, pad] == 0).all() and (batch["image"][:, pad] == 0).all()


def test_device_resampling_gives_the_host_batches(shapes):
    cfg = _cfg(shapes, crop_size=(20, 26))
    augment = AugmentOptions(scale_range=(0.75, 1.25))
    host = _batches(cfg, 2, resample="host", augment=augment)
    device = _batches(cfg, 2, resample="device", augment=augment)
    for h, d in zip(host, device):
        assert sorted(h) == sorted(d)
        for key in h:
            np.testing.assert_allclose(h[key], d[key], atol=1e-3, err_msg=key)
        assert h["u_ignore"].any()  # (scale < 1 pads somewhere in these draws)


def test_iterator_resumes_exactly_from_a_checkpoint(shapes, tmp_path):
    cfg = _cfg(shapes)
    fn = make_semi_dataset_fn(cfg, "host", 2, make_partition(cfg), AugmentOptions())
    it = iter(fn(None, cfg.seed))
    next(it)
    ckpt = tf.train.Checkpoint(iterator=it)
    path = ckpt.save(str(tmp_path / "it"))
    want = [next(it) for _ in range(2)]
    again = iter(fn(None, cfg.seed))
    tf.train.Checkpoint(iterator=again).restore(path)
    for w, g in zip(want, [next(again) for _ in range(2)]):
        for key in w:
            np.testing.assert_array_equal(w[key], g[key], err_msg=key)
