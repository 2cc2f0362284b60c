"""Predictor over the three model formats, folder prediction outputs, bad inputs."""

import os
import sys

import numpy as np
import pytest
from PIL import Image

from iseg.cli.predict import Predictor, list_images, predict_folder
from iseg.export import export_saved_model, save_keras
from iseg.datasets.pipeline import normalize

sys.path.insert(0, os.path.dirname(__file__))
from files_testutil import checksums  # noqa: E402
from test_train_support import META, tiny_model_fn  # noqa: E402


@pytest.fixture(scope="module")
def model():
    m = tiny_model_fn(width=4)(None, META)
    rng = np.random.default_rng(0)
    for v in m.weights:
        v.assign(rng.normal(size=v.shape).astype(np.float32) * 0.5 + (v.path.endswith(
            "variance") and 1.0))
    return m


def test_savedmodel_and_keras_predictors_match_the_model(tmp_path, model):
    image = np.random.default_rng(1).integers(0, 256, (13, 17, 3), dtype=np.uint8)
    expected = np.argmax(model(normalize(image[None], "minus_one_to_one"),
                               training=False), -1)[0]
    exported = export_saved_model(model, str(tmp_path / "export"), palette=META.palette,
                                  class_names=META.class_names)
    keras_file = save_keras(model, str(tmp_path / "k" / "model.keras"))
    for path in (exported, keras_file):
        p = Predictor(path)
        np.testing.assert_array_equal(p.predict(image), expected)
    assert Predictor(exported).palette[2] == [0, 0, 255]


def test_predict_folder_writes_palette_pngs_and_overlays(tmp_path, model):
    inp = tmp_path / "in"
    inp.mkdir()
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 256, (9, 14, 3), dtype=np.uint8)).save(inp / "x.jpg")
    Image.fromarray(rng.integers(0, 256, (11, 5, 3), dtype=np.uint8)).save(inp / "y.png")
    (inp / "notes.txt").write_text("not an image")
    p = Predictor(save_keras(model, str(tmp_path / "model.keras")))
    written = predict_folder(p, str(inp), str(tmp_path / "out"), progress=False)
    assert written == ["x", "y"]
    label = Image.open(tmp_path / "out" / "y.png")
    assert label.mode == "P" and label.size == (5, 11)
    from iseg.datasets.specs import voc_colormap  # no run_config.json beside: VOC colours
    assert label.getpalette()[:9] == [c for rgb in voc_colormap(3) for c in rgb]
    image = np.asarray(Image.open(inp / "y.png"))
    np.testing.assert_array_equal(np.asarray(label), p.predict(image))
    assert Image.open(tmp_path / "out" / "x_overlay.jpg").size == (14, 9)


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_images(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        list_images(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Predictor(str(tmp_path / "empty"))


def _folder_of_images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)).save(folder / name)
    return folder


def _one_line_error(capsys, program="iseg.cli.predict"):
    errors = [line for line in capsys.readouterr().err.splitlines()
              if line.startswith(f"{program}: error:")]
    assert len(errors) == 1
    return errors[0]


@pytest.mark.parametrize("where", ["same", "inside"])
def test_predict_refuses_an_output_folder_in_the_input(tmp_path, model, capsys, where):
    from absl import flags

    from iseg.cli import predict

    inp = _folder_of_images(tmp_path / "in", ["a.png", "b.jpg"])
    (inp / "sub").mkdir()
    before = checksums(inp)
    out = inp if where == "same" else inp / "sub" / "out"
    keras_file = save_keras(model, str(tmp_path / "model.keras"))
    with pytest.raises(SystemExit) as e:
        try:
            predict.run(["predict", f"--model={keras_file}", f"--input={inp}",
                         f"--output={out}"])
        finally:
            flags.FLAGS.unparse_flags()
    assert e.value.code == 1
    verb = "is" if where == "same" else "is inside"
    assert _one_line_error(capsys) == (
        f"iseg.cli.predict: error: --output={out} {verb} --input={inp}: the predictions "
        "would mix with (and could overwrite) the input images; choose another --output "
        "folder")
    assert checksums(inp) == before and not (inp / "sub" / "out").exists()


def test_predict_never_overwrites_an_input_file(tmp_path, model):
    from iseg.errors import ConfigError

    inp = _folder_of_images(tmp_path / "in", ["a.png"])
    before = checksums(inp)
    p = Predictor(save_keras(model, str(tmp_path / "model.keras")))
    with pytest.raises(ConfigError, match=f"--output={inp}: writing {inp}/a.png would "
                       "overwrite an input image; choose another --output folder"):
        predict_folder(p, str(inp / "a.png"), str(inp), progress=False)
    assert checksums(inp) == before


def test_inputs_sharing_a_name_get_distinct_outputs(tmp_path, model):
    inp = _folder_of_images(tmp_path / "in", ["a.png", "a.jpg", "a.PNG", "b.bmp", "c.png"])
    before = checksums(inp)
    p = Predictor(save_keras(model, str(tmp_path / "model.keras")))
    written = predict_folder(p, str(inp), str(tmp_path / "out"), progress=False)
    names = ["a_PNG", "a_jpg", "a_png_2", "b", "c"]  # distinct without regard to case
    assert sorted(written) == sorted(names)  # one output per input, counted once each
    assert sorted(os.listdir(tmp_path / "out")) == sorted(
        [n + ".png" for n in names] + [n + "_overlay.jpg" for n in names])
    for name, src in (("a_png_2", "a.png"), ("a_jpg", "a.jpg"), ("b", "b.bmp")):
        image = np.asarray(Image.open(inp / src).convert("RGB"))
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / f"{name}.png")),
                                      p.predict(image))
    assert checksums(inp) == before


def _smooth_image(rng, h, w):
    """Natural-looking content (gradients + mild noise): JPEG decoders differ on it."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (h + w)], -1)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def test_predict_cli_equals_serve_encoded_on_jpeg_and_png(tmp_path, model):
    import tensorflow as tf
    from absl import flags

    from iseg.cli import predict

    exported = export_saved_model(model, str(tmp_path / "export"), palette=META.palette)
    inp = tmp_path / "in"
    inp.mkdir()
    rng = np.random.default_rng(5)
    Image.fromarray(_smooth_image(rng, 48, 64)).save(inp / "a.jpg", quality=75)
    Image.fromarray(_smooth_image(rng, 40, 36)).save(inp / "b.png")
    try:
        predict.run(["predict", f"--model={exported}", f"--input={inp}",
                     f"--output={tmp_path / 'out'}", "--noprogress"])
    finally:
        flags.FLAGS.unparse_flags()
    serve = tf.saved_model.load(exported).signatures["serve_encoded"]
    for name in ("a.jpg", "b.png"):
        served = serve(encoded=tf.constant([(inp / name).read_bytes()]))["labels"][0].numpy()
        stem = name.split(".")[0]
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / f"{stem}.png")),
                                      served)


def test_16_bit_pngs_are_read_like_their_8_bit_version(tmp_path):
    import tensorflow as tf

    from iseg.cli.predict import read_image

    rng = np.random.default_rng(3)
    rgb16 = rng.integers(0, 65536, (5, 7, 3), dtype=np.uint16)
    gray16 = rng.integers(0, 65536, (5, 7, 1), dtype=np.uint16)
    for name, img in (("rgb16.png", rgb16), ("gray16.png", gray16)):
        (tmp_path / name).write_bytes(tf.io.encode_png(img).numpy())
        expected = np.broadcast_to(np.round(img / 257.0), (5, 7, 3))
        got = read_image(str(tmp_path / name))
        assert got.dtype == np.uint8 and got.shape == (5, 7, 3)
        assert np.abs(got - expected).max() <= 1  # PIL's convert("RGB") gives all 255


def test_non_image_inputs_are_reported_and_skipped(tmp_path, model, capsys):
    from absl import flags

    from iseg.cli import predict

    keras_file = save_keras(model, str(tmp_path / "m" / "model.keras"))
    inp = tmp_path / "in"
    inp.mkdir()
    rng = np.random.default_rng(4)
    for name in ("a.png", "c.png"):
        Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).save(inp / name)
    (inp / "b.jpg").write_text("these are notes, not a JPEG")
    (inp / "d.png").write_bytes((inp / "a.png").read_bytes()[:40])  # truncated
    before = checksums(inp)
    try:
        written = predict.run(["predict", f"--model={keras_file}", f"--input={inp}",
                               f"--output={tmp_path / 'out'}"])
    finally:
        flags.FLAGS.unparse_flags()
    assert written == ["a", "c"] and checksums(inp) == before
    assert sorted(os.listdir(tmp_path / "out")) == ["a.png", "a_overlay.jpg", "c.png",
                                                    "c_overlay.jpg"]
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"2 predictions written to {tmp_path / 'out'}"
    assert out[1] == "skipped 2 file(s) that are not readable images:"
    assert out[2] == (f"  {inp / 'b.jpg'}: not a readable image (Unknown image file "
                      "format. One of JPEG, JPEG XL, PNG, GIF, BMP, WebP required.)")
    assert out[3].startswith(f"  {inp / 'd.png'}: not a readable image (")
    assert "{{" not in out[3] and "[Op:" not in out[3]


def test_training_windows_decode_like_predict(tmp_path):
    """The training input (window decode of the record's bytes) sees the pixels that
    predict and serving see: whole images exactly; a JPEG window differs only where the
    partial decode upsamples chroma at the window's border."""
    import tensorflow as tf

    from iseg.cli.predict import read_image
    from iseg.datasets.augment import decode_window

    rng = np.random.default_rng(6)
    for name in ("a.jpg", "b.png"):
        Image.fromarray(_smooth_image(rng, 40, 56)).save(tmp_path / name, quality=80)
        whole = read_image(str(tmp_path / name))
        encoded = tf.constant((tmp_path / name).read_bytes())
        for start, size in (((0, 0), (40, 56)), ((8, 16), (24, 32))):
            window = decode_window(encoded, tf.constant(start), tf.constant(size)).numpy()
            (y, x), (h, w) = start, size
            if name.endswith(".jpg") and start != (0, 0):
                window, y, x, h, w = window[1:-1, 1:-1], y + 1, x + 1, h - 2, w - 2
            np.testing.assert_array_equal(window, whole[y:y + h, x:x + w])
