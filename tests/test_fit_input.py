"""The TensorFlow-free input path of the fit engine: NumPy views against the tf.data
views for the same uniform draws, record decoding, the seeded batch sequence."""

import numpy as np
import pytest
import tensorflow as tf

from iseg.datasets import augment as tf_augment
from iseg.datasets import np_augment, pydataset
from iseg.datasets.np_augment import AugmentOptions
from iseg.errors import DataError

OPTIONS = [
    AugmentOptions(),
    AugmentOptions(scale_step=None, scale_range=(0.3, 2.5)),
    AugmentOptions(scales=(1.0,), brightness=False),
    AugmentOptions(photometric=True, scale_range=(0.75, 1.5)),
]


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("normalization", ["minus_one_to_one", "imagenet", None])
def test_views_match_the_tf_path_for_the_same_draws(options, normalization):
    rng = np.random.default_rng(0)
    crop = (23, 31)
    for k in range(6):
        h, w = int(rng.integers(9, 60)), int(rng.integers(9, 60))
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        label = rng.integers(0, 6, (h, w), dtype=np.uint8)
        seed = tf.constant([k, 7], tf.int64)
        u = tf.random.stateless_uniform([10], seed=seed).numpy()  # the TF path's draws
        want_img, want_lab, _ = tf_augment.augment(
            tf.constant(image), tf.constant(label), seed, crop, options,
            normalization=normalization)
        img, lab = np_augment.augment(image, label, u, crop, options, normalization)
        np.testing.assert_array_equal(lab, want_lab.numpy())
        tol = 1e-3 if normalization is None else 2e-5
        np.testing.assert_allclose(img, want_img.numpy(), atol=tol * (4 if options.photometric
                                                                      else 1))


def test_window_arithmetic_matches_the_tf_functions():
    rng = np.random.default_rng(1)
    us = np.concatenate([rng.random(200, np.float32), [0.0, 0.5, np.float32(0.99999994)]])
    for u in us.astype(np.float32):
        for scales, step in (((0.5, 2.0), 0.25), ((0.5, 1.75), None)):
            want = float(tf_augment.choose_scale(tf.constant(u), scales, step))
            assert float(np_augment.choose_scale(u, scales, step)) == want
        n, c = int(rng.integers(2, 300)), int(rng.integers(2, 200))
        s = np.float32(rng.uniform(0.2, 3.0))
        want = [int(t) for t in tf_augment.axis_view(tf.constant(n), c, tf.constant(s),
                                                     tf.constant(u))]
        assert list(np_augment.axis_view(n, c, s, u)) == want
        np.testing.assert_array_equal(np_augment.nearest_index(n, c),
                                      tf_augment.nearest_index(n, c).numpy())


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    from iseg.datasets.synthetic import generate_shapes

    path = tmp_path_factory.mktemp("shapes")
    generate_shapes(str(path), num_train=6, num_val=2, image_size=(20, 26), num_shards=2)
    return str(path)


def test_records_decode_like_the_tf_pipeline(shapes_dir):
    from iseg.datasets.pipeline import build_dataset

    source = pydataset.RecordSource(shapes_dir, "val")
    tf_batches = build_dataset(shapes_dir, "val", training=False, batch_size=1,
                               crop_size=(24, 30), normalization="minus_one_to_one")
    ours = list(pydataset.eval_batches(source, 1, (24, 30)))
    assert len(ours) == len(source) == 2
    for (images, labels, sizes, names), (features, want_labels) in zip(ours, tf_batches):
        np.testing.assert_array_equal(labels, want_labels.numpy())
        assert images.shape == features["image"].shape == (1, 24, 30, 3)
        assert sizes == [(20, 26)] and names == [features["filename"][0].numpy().decode()]
        # JPEG decoders may round the chroma upsampling differently
        assert np.abs(images - features["image"].numpy()).mean() < 0.02


def test_batches_are_a_function_of_seed_and_step(shapes_dir):
    source = pydataset.RecordSource(shapes_dir, "train")
    kw = dict(batch_size=2, crop_size=(16, 16), seed=3)
    full = pydataset.TrainBatches(source, steps=7, **kw)
    resumed = pydataset.TrainBatches(source, steps=2, start=5, **kw)
    assert full.per_epoch == 3 and len(full) == 7
    for i in range(2):
        for a, b in zip(full[5 + i], resumed[i]):
            np.testing.assert_array_equal(a, b)
    images, labels = full[0]
    assert images.shape == (2, 16, 16, 3) and labels.dtype == np.int32
    # an epoch visits every example once (6 examples, 3 batches of 2)
    seen = np.concatenate([full.examples(b)[1] for b in range(3)])
    assert sorted(seen) == list(range(6))
    assert list(full.examples(3)[1]) != list(full.examples(0)[1]) or (
        list(full.examples(4)[1]) != list(full.examples(1)[1]))
    other = pydataset.TrainBatches(source, steps=1, batch_size=2, crop_size=(16, 16), seed=4)
    assert not np.array_equal(other[0][0], full[0][0])
    with pytest.raises(IndexError):
        full[7]


def test_bad_label_names_the_record(tmp_path, shapes_dir):
    import shutil

    from iseg.datasets import records

    path = tmp_path / "d"
    shutil.copytree(shapes_dir, path)
    source = pydataset.RecordSource(str(path), "val", num_classes=1)
    with pytest.raises(DataError) as e:
        source.example(0)  # every shapes image holds a shape (class >= 1)
    shard = str(path / "val-00000-of-00002.tfrecord")
    label = pydataset.RecordSource(str(path), "val").example(0)[1]
    assert str(e.value) == (
        "label value outside [0, 1) that is not the ignore label 255 in record val_00000 "
        f"({shard}, record 0): values {sorted(set(label[label > 0].tolist()))}")
    with records.RecordWriter(shard) as w:
        w.write(records.encode_example({"image": [b"x"], "label": [b"y"]}))
    with pytest.raises(DataError, match="record 0 has no 'image/encoded'.*without TensorFlow"):
        pydataset.RecordSource(str(path), "val").example(0)
