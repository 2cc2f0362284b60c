"""The tf.data pipeline: augmentation correctness and alignment, eval padding,
normalisation, determinism and per-worker sharding."""

import numpy as np
import pytest
import tensorflow as tf

from datasets_testutil import save_image, save_label
from iseg.datasets import augment
from iseg.datasets.augment import AugmentOptions
from iseg.datasets.convert import convert_dataset
from iseg.datasets.pipeline import build_dataset, denormalize, normalize

PALETTE = np.array([(200, 30, 30), (30, 200, 30), (30, 30, 200)], np.float32)


def _block_example(rng, h, w, block=4):
    """Image of solid colour blocks; label = index of the block's colour."""
    cls = rng.integers(0, 3, size=(-(-h // block), -(-w // block)))
    label = np.kron(cls, np.ones((block, block), np.int64))[:h, :w]
    return PALETTE[label].astype(np.uint8), label


def _make(tmp, sizes, split="train", num_shards=1, seed=0, out="out"):
    d = tmp / f"raw_{out}"
    (d / "images").mkdir(parents=True, exist_ok=True)
    (d / "classes.txt").write_text("red\ngreen\nblue\n")
    rng = np.random.default_rng(seed)
    for i, (h, w) in enumerate(sizes):
        img, lab = _block_example(rng, h, w)
        save_image(str(d / "images" / split / f"im{i:02d}.png"), img, "PNG")
        save_label(str(d / "labels" / split / f"im{i:02d}.png"), lab)
    convert_dataset("generic", str(d), str(tmp / out), splits=[split], num_shards=num_shards,
                    num_workers=0, progress=False, class_list=str(d / "classes.txt"))
    return tmp / out


# ----------------------------------------------------------------------------- sampling


def _oracle_block(image, label, start, size, out, flip):
    """Align-corners resampling of a source window, explicit loops (float64)."""
    (y0, x0), (ly, lx), (oh, ow) = start, size, out
    win = image[y0:y0 + ly, x0:x0 + lx].astype(np.float64)
    lwin = label[y0:y0 + ly, x0:x0 + lx]
    img = np.zeros((oh, ow, 3))
    lab = np.zeros((oh, ow), np.int64)
    for i in range(oh):
        sy = i * (ly - 1) / max(oh - 1, 1)
        for j in range(ow):
            sx = j * (lx - 1) / max(ow - 1, 1)
            a, b = int(np.floor(sy)), int(np.floor(sx))
            c, d = min(a + 1, ly - 1), min(b + 1, lx - 1)
            fy, fx = sy - a, sx - b
            img[i, j] = ((1 - fy) * (1 - fx) * win[a, b] + (1 - fy) * fx * win[a, d]
                         + fy * (1 - fx) * win[c, b] + fy * fx * win[c, d])
            lab[i, j] = lwin[
                min(int(np.floor(sy + 0.5)), ly - 1), min(int(np.floor(sx + 0.5)), lx - 1)
            ]
    if flip:
        img, lab = img[:, ::-1], lab[:, ::-1]
    return img, lab


@pytest.mark.parametrize(
    "start,size,out,flip",
    [
        ((0, 0), (7, 9), (13, 17), False),
        ((1, 2), (4, 5), (8, 10), True),
        ((0, 0), (7, 9), (4, 5), True),
        ((2, 3), (5, 6), (5, 6), False),
        ((3, 1), (1, 7), (1, 12), True),
    ],
)
def test_crop_block_matches_oracle(start, size, out, flip):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(7, 9, 3)).astype(np.uint8)
    label = rng.integers(0, 5, size=(7, 9))
    img, lab = augment.crop_block(tf.constant(image), tf.constant(label), start, size, out,
                                  tf.constant(flip))
    ref_img, ref_lab = _oracle_block(image, label, start, size, out, flip)
    np.testing.assert_allclose(img.numpy(), ref_img, atol=1e-2)
    np.testing.assert_array_equal(lab.numpy(), ref_lab)


def test_view_that_fits_equals_resize_pad_crop_flip():
    """When the scaled image fits in the crop the view is exactly: align-corners resize of
    the whole image, pad bottom/right (mean / 255), flip the crop."""
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, size=(11, 14, 3)).astype(np.uint8)
    label = rng.integers(0, 5, size=(11, 14)).astype(np.int32)
    flips = set()
    for k in range(8):
        seed = tf.constant([k, 7], tf.int64)
        options = AugmentOptions(scales=(1.5,), brightness=False)
        img, lab, valid = augment.augment(tf.constant(image), tf.constant(label), seed, (40, 41),
                                          options)
        _, _, _, flip, _ = augment.random_view(tf.constant([11, 14]), seed, (40, 41), options)
        flip = bool(flip)
        flips.add(flip)
        ref = tf.compat.v1.image.resize_bilinear(image[None], (16, 21), align_corners=True)[0]
        ref_lab = tf.compat.v1.image.resize_nearest_neighbor(label[None, ..., None], (16, 21),
                                                            align_corners=True)[0, ..., 0]
        ref = np.pad(ref.numpy(), [[0, 24], [0, 20], [0, 0]])
        ref_lab = np.pad(ref_lab.numpy(), [[0, 24], [0, 20]], constant_values=255)
        if flip:
            ref, ref_lab = ref[:, ::-1], ref_lab[:, ::-1]
        np.testing.assert_allclose(img.numpy(), ref, atol=1e-3)
        np.testing.assert_array_equal(lab.numpy(), ref_lab)
        np.testing.assert_array_equal(valid.numpy(), ref_lab != 255)
    assert flips == {True, False}


def test_axis_view_of_a_large_scale():
    """A scaled axis longer than the crop: a window of whole source pixels whose
    align-corners step matches the scale, at every start position."""
    n, crop, s = 37, 20, 1.75
    scaled = round(n * s)
    starts = set()
    for u in np.linspace(0, 0.999, 200):
        start, length, out = (
            int(v) for v in augment.axis_view(n, crop, s, tf.constant(u, tf.float32))
        )
        assert out == crop and 0 <= start and start + length <= n
        step, ref_step = (length - 1) / (crop - 1), (n - 1) / (scaled - 1)
        assert abs(step - ref_step) <= 0.5 / (crop - 1) + 1e-9
        starts.add(start)
    assert starts == set(range(n - length + 1))
    start, length, out = (int(v) for v in augment.axis_view(n, 80, s, tf.constant(0.3, tf.float32)))
    assert (start, length, out) == (0, n, scaled)


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_crop_block_from_encoded_window(fmt):
    """Decoding only the needed window (partial JPEG decode) gives the same block as
    decoding the whole image first."""
    rng = np.random.default_rng(3)
    base = np.kron(rng.integers(0, 256, size=(6, 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    label = tf.constant(rng.integers(0, 5, size=(48, 64)).astype(np.int32))
    if fmt == "png":
        encoded = tf.io.encode_png(base)
    else:
        encoded = tf.io.encode_jpeg(base, quality=95, chroma_downsampling=False)
    image = tf.io.decode_image(encoded, channels=3)
    for start, size, out, flip in (((20, 30), (20, 24), (33, 35), True),
                                   ((5, 0), (40, 50), (33, 35), False),
                                   ((0, 0), (48, 64), (24, 32), True)):
        ref = augment.crop_block(image, label, start, size, out, tf.constant(flip))
        got = augment.crop_block(None, label, start, size, out, tf.constant(flip), encoded=encoded)
        np.testing.assert_array_equal(got[1].numpy(), ref[1].numpy())
        diff = np.abs(got[0].numpy() - ref[0].numpy())
        if fmt == "png":
            assert diff.max() < 1e-3
        else:  # libjpeg may round a few window-border pixels differently
            assert diff.mean() < 0.5 and diff.max() <= 8


def test_normalisation_inside_augment_matches_normalize():
    rng = np.random.default_rng(4)
    image = tf.constant(rng.integers(0, 256, size=(30, 20, 3)).astype(np.uint8))
    label = tf.zeros([30, 20], tf.int32)
    for mode in ("minus_one_to_one", "imagenet"):
        for k in range(6):
            seed = tf.constant([k, 1], tf.int64)
            raw, _, valid = augment.augment(image, label, seed, (25, 25))
            got, _, _ = augment.augment(image, label, seed, (25, 25), normalization=mode)
            expected = np.where(valid.numpy()[..., None], normalize(raw, mode).numpy(), 0.0)
            np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)


def test_scale_choices():
    us = tf.linspace(0.0, 0.999, 50)
    grid = {round(float(augment.choose_scale(u, (0.5, 2.0), 0.25)), 4) for u in us}
    assert grid == {0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0}
    listed = {round(float(augment.choose_scale(u, None, None, scales=[0.5, 1.5])), 4) for u in us}
    assert listed == {0.5, 1.5}
    cont = [float(augment.choose_scale(u, (0.5, 2.0), None)) for u in us]
    assert min(cont) == pytest.approx(0.5) and max(cont) == pytest.approx(1.9985, abs=1e-3)


# ----------------------------------------------------------------------------- training


def _interior(lab):
    """Pixels whose 3x3 neighbourhood (inside the crop) has one label: the bilinear sources
    of such a pixel lie in one colour block, so its colour is exact."""
    p = np.pad(lab, 1, constant_values=-1)
    same = np.ones(lab.shape, bool)
    for dy in range(3):
        for dx in range(3):
            same &= p[dy:dy + lab.shape[0], dx:dx + lab.shape[1]] == lab
    return same & (lab != 255)


def test_augmentation_keeps_image_and_label_aligned(tmp_path):
    data = _make(tmp_path, [(20, 24), (28, 20), (16, 16), (24, 30)])
    ds = build_dataset(str(data), "train", training=True, batch_size=2, crop_size=(17, 19),
                       augment=AugmentOptions(brightness=False), seed=3)
    checked = padded = 0
    for images, labels in ds.take(8):
        assert images.dtype == tf.float32 and labels.dtype == tf.int32
        assert images.shape == (2, 17, 19, 3) and labels.shape == (2, 17, 19)
        img = denormalize(images).numpy()
        lab = labels.numpy()
        pad = lab == 255
        np.testing.assert_allclose(images.numpy()[pad], 0.0)  # padding = mean -> 0
        padded += pad.sum()
        for b in range(2):
            inner = _interior(lab[b])
            np.testing.assert_allclose(img[b][inner], PALETTE[lab[b][inner]], atol=0.05)
            checked += inner.sum()
    assert checked > 0.3 * 8 * 2 * 17 * 19
    assert padded > 0


def test_scale_and_flip_are_applied(tmp_path):
    """An 8-wide image (left half red, right half blue) always fits in a 40-wide crop, so
    the valid width shows the scale and the first column shows the flip."""
    d = tmp_path / "raw"
    img = np.zeros((6, 8, 3), np.uint8)
    img[:, :4], img[:, 4:] = PALETTE[0], PALETTE[2]
    lab = np.zeros((6, 8), np.uint8)
    lab[:, 4:] = 2
    save_image(str(d / "images" / "train" / "a.png"), img, "PNG")
    save_label(str(d / "labels" / "train" / "a.png"), lab)
    (d / "classes.txt").write_text("red\ngreen\nblue\n")
    convert_dataset("generic", str(d), str(tmp_path / "out"), splits=["train"], num_workers=0,
                    progress=False, class_list=str(d / "classes.txt"))
    ds = build_dataset(str(tmp_path / "out"), "train", training=True, batch_size=1,
                       crop_size=(13, 40), augment=AugmentOptions(brightness=False), seed=0)
    widths, firsts = set(), set()
    for _, labels in ds.take(40):
        row = labels.numpy()[0, 0]
        valid = row[row != 255]
        widths.add(len(valid))
        firsts.add(int(valid[0]))
        assert int(valid[-1]) == 2 - int(valid[0])
    assert widths <= {4, 6, 8, 10, 12, 14, 16} and len(widths) >= 4
    assert firsts == {0, 2}


def test_photometric_and_brightness_keep_range_and_padding(tmp_path):
    data = _make(tmp_path, [(12, 12), (14, 10)])
    ds = build_dataset(str(data), "train", training=True, batch_size=2, crop_size=(15, 15),
                       augment=AugmentOptions(photometric=True), seed=1,
                       normalization="imagenet")
    for images, labels in ds.take(5):
        img = denormalize(images, "imagenet").numpy()
        assert img.min() >= -1e-3 and img.max() <= 255 + 1e-3
        np.testing.assert_allclose(images.numpy()[labels.numpy() == 255], 0.0, atol=1e-6)


@pytest.mark.parametrize("photometric,normalization", [
    (False, "minus_one_to_one"), (True, "imagenet"), (False, "imagenet")])
def test_device_resampling_equals_the_host_pipeline(tmp_path, photometric, normalization):
    """resample="device" (views, then `resample_views` on the batch) gives the host
    pipeline's batches: same crops, scales, flips and colours, labels bit-equal."""
    from iseg.datasets.pipeline import resample_views

    # sizes below and above the crop: padding, partial windows, flips, scale 1
    data = _make(tmp_path, [(12, 17), (30, 22), (9, 9), (40, 40), (21, 13)])
    kw = dict(training=True, batch_size=5, crop_size=(16, 19), seed=4, deterministic=True,
              augment=AugmentOptions(photometric=photometric, scale_step=None),
              normalization=normalization)
    host = build_dataset(str(data), "train", **kw)
    device = build_dataset(str(data), "train", resample="device", **kw)
    assert set(device.element_spec) >= {"image", "label", "rows", "cols"}
    seen_pad = seen_flip = 0
    for (images, labels), views in zip(host.take(8), device.take(8)):
        dev_images, dev_labels = resample_views(views, normalization)
        np.testing.assert_array_equal(dev_labels.numpy(), labels.numpy())
        np.testing.assert_allclose(dev_images.numpy(), images.numpy(), atol=2e-5)
        seen_pad += int(np.sum(labels.numpy() == 255) > 0)
        cols = views["cols"].numpy()
        seen_flip += int(np.any(cols[:, 0, 0] > cols[:, 0, -1]))
    assert seen_pad and seen_flip


def test_views_hold_only_the_window(tmp_path):
    data = _make(tmp_path, [(60, 80)])
    ds = build_dataset(str(data), "train", training=True, batch_size=1, crop_size=(10, 10),
                       seed=0, resample="device",
                       augment=AugmentOptions(scales=(2.0,), flip=False))
    views = next(iter(ds))
    # scale 2 of a 60x80 image, crop 10: a window of round(9 / 2) + 1 = 5 source pixels
    assert views["image"].shape == (1, 5, 5, 3) and views["image"].dtype == tf.uint8
    assert views["label"].shape == (1, 5, 5)
    np.testing.assert_array_equal(views["rows"].numpy()[0, 2], np.floor(np.arange(10) * 4 / 9
                                                                          + 0.5))
    with pytest.raises(ValueError, match="resample must be one of"):
        build_dataset(str(data), "train", training=True, batch_size=1, crop_size=(10, 10),
                      resample="gpu")


def test_colour_changes_are_drawn_as_documented():
    """Brightness: p 0.5, delta in +-max; contrast / saturation: p 0.5, factor in
    0.5..1.5, and 1 when photometric is off; brightness 0 when it is off."""
    us = tf.random.stateless_uniform([400, 10], seed=[3, 4])
    on = [augment.colour_changes(u, AugmentOptions(photometric=True, max_brightness_delta=20))
          for u in us]
    for name, lo, hi, unchanged in (("brightness", -20, 20, 0.0), ("contrast", 0.5, 1.5, 1.0),
                                    ("saturation", 0.5, 1.5, 1.0)):
        values = np.array([float(c[name]) for c in on])
        assert values.min() >= lo and values.max() <= hi, name
        assert 0.4 < np.mean(values != unchanged) < 0.6, name
    off = augment.colour_changes(us[0], AugmentOptions(brightness=False))
    assert {k: float(v) for k, v in off.items()} == {
        "brightness": 0.0, "contrast": 1.0, "saturation": 1.0}


def test_saturation_matches_adjust_saturation():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (4, 6, 7, 3)).astype(np.float32)
    image[0, 0, 0] = 80.0  # a grey pixel
    image[1, 0, 0] = (0.0, 0.0, 0.0)
    factors = np.array([0.5, 1.0, 1.3, 3.0], np.float32)
    got = augment._scale_saturation(tf.constant(image), tf.constant(factors[:, None, None, None]))
    for i, f in enumerate(factors):
        want = tf.image.adjust_saturation(image[i], f).numpy()
        np.testing.assert_allclose(got[i].numpy(), want, atol=2e-3)


def test_deterministic_with_seed(tmp_path):
    data = _make(tmp_path, [(20, 24)] * 6, num_shards=2)

    def first(seed):
        ds = build_dataset(str(data), "train", training=True, batch_size=2, crop_size=(9, 9),
                           seed=seed, deterministic=True,
                           augment=AugmentOptions(photometric=True))
        return [x.numpy() for x, _ in ds.take(3)]

    a, b, c = first(5), first(5), first(6)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, z) for x, z in zip(a, c))


def test_training_drops_remainder_without_repeat(tmp_path):
    data = _make(tmp_path, [(10, 10)] * 5)
    ds = build_dataset(str(data), "train", training=True, batch_size=2, crop_size=(9, 9),
                       repeat=False, seed=0)
    assert [x.shape[0] for x, _ in ds] == [2, 2]


# ----------------------------------------------------------------------------- evaluation


def test_eval_pads_to_crop_and_keeps_size(tmp_path):
    sizes = [(10, 14), (12, 9), (16, 16)]
    data = _make(tmp_path, sizes, split="val")
    ds = build_dataset(str(data), "val", training=False, batch_size=3, crop_size=(16, 17))
    feats, labels = next(iter(ds))
    assert feats["image"].shape == (3, 16, 17, 3) and labels.shape == (3, 16, 17)
    assert labels.dtype == tf.int32
    names = [n.decode() for n in feats["filename"].numpy()]
    assert names == ["im00", "im01", "im02"]
    src = data.parent / "raw_out"
    from PIL import Image

    for b, (h, w) in enumerate(sizes):
        assert feats["height"][b] == h and feats["width"][b] == w
        img = np.asarray(Image.open(src / "images" / "val" / f"{names[b]}.png"), np.float32)
        lab = np.asarray(Image.open(src / "labels" / "val" / f"{names[b]}.png"))
        np.testing.assert_allclose(feats["image"][b, :h, :w].numpy(), img / 127.5 - 1, atol=1e-6)
        np.testing.assert_array_equal(labels[b, :h, :w].numpy(), lab)
        assert np.all(feats["image"][b, h:].numpy() == 0) and np.all(labels[b, h:].numpy() == 255)
        assert np.all(feats["image"][b, :, w:].numpy() == 0) and np.all(
            labels[b, :, w:].numpy() == 255
        )


def test_eval_pads_large_images_to_multiple(tmp_path):
    data = _make(tmp_path, [(10, 14), (13, 9)], split="val")
    ds = build_dataset(str(data), "val", training=False, batch_size=1, crop_size=(8, 8),
                       pad_to_multiple=4)
    shapes = [tuple(f["image"].shape[1:3]) for f, _ in ds]
    assert shapes == [(12, 16), (16, 12)]
    ds = build_dataset(str(data), "val", training=False, batch_size=2, crop_size=(8, 8))
    feats, labels = next(iter(ds))
    assert feats["image"].shape[1:3] == (13, 14)  # batch padded to the largest image
    assert np.all(labels[0, 10:].numpy() == 255)


# ----------------------------------------------------------------------------- sharding


def test_input_context_shards_and_batches(tmp_path):
    data = _make(tmp_path, [(8, 8)] * 8, split="val", num_shards=4)
    seen = []
    for i in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i,
                                         num_replicas_in_sync=2)
        ds = build_dataset(str(data), "val", training=False, batch_size=4, crop_size=(8, 8),
                           input_context=ctx)
        batches = [f["filename"].numpy().tolist() for f, _ in ds]
        assert all(len(b) <= 2 for b in batches)  # per-replica batch = 4 / 2
        seen.append({n for b in batches for n in b})
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == 8


def test_input_context_with_fewer_shards_than_workers(tmp_path):
    data = _make(tmp_path, [(8, 8)] * 6, split="val", num_shards=1)
    seen = []
    for i in range(3):
        ctx = tf.distribute.InputContext(num_input_pipelines=3, input_pipeline_id=i)
        ds = build_dataset(str(data), "val", training=False, batch_size=8, crop_size=(8, 8),
                           input_context=ctx)
        seen.append({n for f, _ in ds for n in f["filename"].numpy().tolist()})
    assert [len(s) for s in seen] == [2, 2, 2]
    assert len(set().union(*seen)) == 6


# ----------------------------------------------------------------------------- normalise


def test_normalize_round_trip():
    x = tf.constant([[0.0, 127.5, 255.0]] * 2)[None]
    np.testing.assert_allclose(normalize(x).numpy()[0, 0], [-1, 0, 1])
    mean = tf.constant([[[123.675, 116.28, 103.53]]])
    np.testing.assert_allclose(normalize(mean, "imagenet").numpy(), 0, atol=1e-5)
    for mode in ("minus_one_to_one", "imagenet"):
        y = tf.random.uniform([2, 3, 4, 3], 0, 255)
        np.testing.assert_allclose(denormalize(normalize(y, mode), mode).numpy(), y.numpy(),
                                   atol=1e-3)
    with pytest.raises(ValueError, match="normalization"):
        normalize(x, "caffe")


# ----------------------------------------------------------------------------- training engine


def test_iterator_checkpoint_resumes_data_position(tmp_path):
    """A tf.train.Checkpoint of the iterator restores the exact data position."""
    data = _make(tmp_path, [(12, 12)] * 6, num_shards=2)

    def make():
        return iter(build_dataset(str(data), "train", training=True, batch_size=2,
                                  crop_size=(9, 9), seed=4, deterministic=True))

    it = make()
    next(it), next(it)
    ckpt = tf.train.Checkpoint(iterator=it)
    path = ckpt.save(str(tmp_path / "ckpt" / "it"))
    expected = [next(it)[0].numpy() for _ in range(4)]  # crosses an epoch boundary
    it2 = make()
    tf.train.Checkpoint(iterator=it2).restore(path).assert_consumed()
    for e in expected:
        np.testing.assert_array_equal(next(it2)[0].numpy(), e)


def test_distribute_datasets_from_function(tmp_path):
    data = _make(tmp_path, [(10, 10)] * 4)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    dist = strategy.distribute_datasets_from_function(
        lambda ctx: build_dataset(str(data), "train", training=True, batch_size=4,
                                  crop_size=(9, 9), seed=0, input_context=ctx))
    images, labels = next(iter(dist))
    assert images.shape == (4, 9, 9, 3) and labels.shape == (4, 9, 9)


def test_input_normalization_is_the_models_or_the_default():
    from iseg.datasets.pipeline import input_normalization

    class Model:
        normalization = "imagenet"

    assert input_normalization(Model()) == "imagenet"
    assert input_normalization(object()) == "minus_one_to_one"
