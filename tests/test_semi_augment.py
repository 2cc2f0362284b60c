"""Strong augmentation for semi-supervised training: every op equals PIL (the library the
methods' official code augments with) on a small image; the batch views equal a PIL loop
given the same draws; the draws stay in the published ranges."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from iseg.semi import augment as A


def _image(seed=0, shape=(13, 17)):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, shape + (3,)).astype(np.uint8)
    img[3:9, 4:12] = rng.integers(60, 120, (6, 8, 3))  # a flat-ish block (blur, equalize)
    return img


def _pil_hue(pil, factor):
    """torchvision's ``adjust_hue`` on a PIL image (AugSeg's ``img_aug_hue``)."""
    h, s, v = pil.convert("HSV").split()
    h = np.array(h, dtype=np.uint8)
    with np.errstate(over="ignore"):
        h += np.array(factor * 255).astype(np.uint8)
    return Image.merge("HSV", (Image.fromarray(h, "L"), s, v)).convert("RGB")


def _pil_gray(pil):
    return Image.fromarray(np.repeat(np.asarray(pil.convert("L"))[..., None], 3, -1))


PIL_OPS = {
    "identity": lambda im, m: im,
    "autocontrast": lambda im, m: ImageOps.autocontrast(im),
    "equalize": lambda im, m: ImageOps.equalize(im),
    "invert": lambda im, m: ImageOps.invert(im),
    "blur": lambda im, m: im.filter(ImageFilter.GaussianBlur(radius=m)),
    "contrast": lambda im, m: ImageEnhance.Contrast(im).enhance(m),
    "brightness": lambda im, m: ImageEnhance.Brightness(im).enhance(m),
    "color": lambda im, m: ImageEnhance.Color(im).enhance(m),
    "sharpness": lambda im, m: ImageEnhance.Sharpness(im).enhance(m),
    "posterize": lambda im, m: ImageOps.posterize(im, int(m)),
    "solarize": lambda im, m: ImageOps.solarize(im, int(m)),
    "hue": _pil_hue,
}
CASES = [("identity", 0), ("autocontrast", 0), ("equalize", 0), ("invert", 0),
         ("blur", 0.1), ("blur", 0.73), ("blur", 2.0), ("posterize", 4), ("posterize", 7),
         ("solarize", 1), ("solarize", 128), ("solarize", 255), ("hue", -0.5),
         ("hue", -0.137), ("hue", 0.31)] + [
    (name, f) for name in ("contrast", "brightness", "color", "sharpness")
    for f in (0.05, 0.61, 1.5)]


@pytest.mark.parametrize("name,magnitude", CASES)
def test_op_equals_pil(name, magnitude):
    img = _image()
    ours = A.OPS[name](tf.constant(img, tf.float32), magnitude).numpy()
    np.testing.assert_array_equal(ours, np.asarray(PIL_OPS[name](Image.fromarray(img), magnitude)))


def test_grayscale_and_flat_images_equal_pil():
    img = _image(1)
    np.testing.assert_array_equal(A.grayscale(tf.constant(img, tf.float32)).numpy()[..., 0],
                                  np.asarray(Image.fromarray(img).convert("L")))
    flat = np.full((6, 7, 3), 77, np.uint8)  # one grey level: luts are the identity
    for name in ("autocontrast", "equalize"):
        ours = A.OPS[name](tf.constant(flat, tf.float32), 0).numpy()
        np.testing.assert_array_equal(ours, np.asarray(PIL_OPS[name](Image.fromarray(flat), 0)))


def test_simclr_strong_equals_pil_loop_with_the_same_draws():
    images = np.stack([_image(s) for s in range(6)])
    seed = tf.constant([3, 9], tf.int32)
    ours = A.simclr_strong(tf.constant(images, tf.float32) + 0.3, seed).numpy()
    p = {k: v.numpy() for k, v in A.simclr_params(seed, 6).items()}
    assert p["jitter"].any() and p["blur"].any()
    for i, img in enumerate(images):
        pil = Image.fromarray(img)
        if p["jitter"][i]:
            for k in p["order"][i]:  # torchvision: brightness, contrast, saturation, hue
                name = ("brightness", "contrast", "color", "hue")[k]
                pil = PIL_OPS[name](pil, float(p["factors"][i, k]))
        if p["gray"][i]:
            pil = _pil_gray(pil)
        if p["blur"][i]:
            pil = pil.filter(ImageFilter.GaussianBlur(radius=float(p["sigma"][i])))
        np.testing.assert_array_equal(ours[i], np.asarray(pil), err_msg=f"image {i}")


def test_simclr_draws_in_torchvision_ranges():
    p = {k: v.numpy() for k, v in A.simclr_params(tf.constant([1, 2]), 20000).items()}
    for col, (lo, hi) in enumerate([(0.5, 1.5)] * 3 + [(-0.25, 0.25)]):
        f = p["factors"][:, col]
        assert lo <= f.min() < lo + 0.01 and hi - 0.01 < f.max() <= hi
    assert abs(p["jitter"].mean() - 0.8) < 0.015 and abs(p["gray"].mean() - 0.2) < 0.015
    assert abs(p["blur"].mean() - 0.5) < 0.015
    assert 0.1 <= p["sigma"].min() < 0.11 and 1.99 < p["sigma"].max() <= 2.0
    # every image applies the four jitter ops once, in one of the 24 orders
    np.testing.assert_array_equal(np.sort(p["order"], 1), np.tile(np.arange(4), (20000, 1)))
    assert len({tuple(o) for o in p["order"]}) == 24


@pytest.mark.parametrize("spec", [A.AUGSEG, A.IMAS], ids=["augseg", "imas"])
def test_random_intensity_equals_pil_loop_with_the_same_draws(spec):
    images = np.stack([_image(s) for s in range(8)])
    seed = tf.constant([5, 7], tf.int32)
    ours = A.random_intensity(tf.constant(images, tf.float32), seed, spec).numpy()
    p = {k: v.numpy() for k, v in A.intensity_params(seed, 8, spec).items()}
    for i, img in enumerate(images):
        pil = Image.fromarray(img)
        for slot in range(p["count"][i]):
            pil = PIL_OPS[spec.ops[p["ops"][i, slot]]](pil, float(p["magnitude"][i, slot]))
        np.testing.assert_array_equal(ours[i], np.asarray(pil), err_msg=f"image {i}")


def _draws_by_op(spec, n=40000):
    p = {k: v.numpy() for k, v in A.intensity_params(tf.constant([11, 4]), n, spec).items()}
    return p, {name: p["magnitude"][p["ops"] == k] for k, name in enumerate(spec.ops)}


def test_augseg_sampling_ranges():
    p, by_op = _draws_by_op(A.AUGSEG)
    counts = np.bincount(p["count"], minlength=4)
    assert counts[0] == 0 and all(abs(c / 40000 - 1 / 3) < 0.01 for c in counts[1:])
    used = np.bincount(p["ops"].ravel(), minlength=11) / p["ops"].size  # with replacement
    assert np.all(abs(used - 1 / 11) < 0.006)
    for name in ("contrast", "brightness", "color", "sharpness"):
        v = by_op[name]
        assert 0.05 <= v.min() < 0.06 and 0.94 < v.max() <= 0.95
    assert 0.1 <= by_op["blur"].min() < 0.12 and 1.98 < by_op["blur"].max() <= 2.0
    np.testing.assert_array_equal(np.unique(by_op["posterize"]), [4, 5, 6, 7])
    assert by_op["solarize"].min() == 1 and by_op["solarize"].max() == 255
    assert np.all(by_op["solarize"] == np.round(by_op["solarize"]))
    hue = by_op["hue"]
    assert -0.5 <= hue.min() < -0.49 and 0.49 < hue.max() <= 0.5
    assert abs((hue < 0).mean() - 0.5) < 0.03
    for name in ("identity", "autocontrast", "equalize"):
        assert np.all(by_op[name] == 0)


def test_imas_sampling_ranges():
    p, by_op = _draws_by_op(A.IMAS)
    assert np.all(p["count"] == 2) and set(np.unique(p["ops"])) == set(range(12))
    m = 0.999
    for name in ("contrast", "brightness", "color", "sharpness"):
        v = by_op[name]
        assert 0.95 - 0.85 * m <= v.min() < 0.95 - 0.85 * m + 0.01 and 0.94 < v.max() <= 0.95
    assert by_op["blur"].max() <= 0.1 + 1.9 * m
    np.testing.assert_array_equal(np.unique(by_op["posterize"]), [4, 5, 6, 7])
    assert abs(by_op["hue"]).max() <= 0.5 * m


def test_views_are_deterministic_per_seed():
    images = tf.constant(np.stack([_image(s) for s in range(3)]), tf.float32)
    for view in (A.simclr_strong, A.random_intensity):
        a = view(images, tf.constant([1, 2])).numpy()
        np.testing.assert_array_equal(a, view(images, tf.constant([1, 2])).numpy())
        assert not np.array_equal(a, view(images, tf.constant([1, 3])).numpy())


def test_views_run_in_a_tf_function():
    images = tf.constant(np.stack([_image(s) for s in range(2)]), tf.float32)
    seed = tf.constant([4, 4])
    fn = tf.function(lambda x, s: A.random_intensity(x, s, A.IMAS))
    np.testing.assert_array_equal(fn(images, seed).numpy(),
                                  A.random_intensity(images, seed, A.IMAS).numpy())
    assert A.simclr_strong(images, seed).shape == images.shape


def test_hardness_mix_per_image():
    rng = np.random.default_rng(0)
    strong, weak = rng.uniform(0, 255, (2, 3, 4, 5, 3)).astype(np.float32)
    h = np.array([0.0, 0.25, 1.0], np.float32)
    ours = A.hardness_mix(tf.constant(strong), tf.constant(weak), tf.constant(h)).numpy()
    for i in range(3):
        np.testing.assert_allclose(ours[i], h[i] * strong[i] + (1 - h[i]) * weak[i], rtol=1e-6)
