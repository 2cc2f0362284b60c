"""Text data: the synthetic renderer (deterministic, boxes around the ink, centre masks),
readers (label file, LMDB), conversion to TFRecords and the tf.data pipeline."""

import dataclasses
import io
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from iseg.text import records, synth
from iseg.text.charset import Charset
from iseg.text.pipeline import TokenEncoder, build_text_dataset, centre_mask, prepare_image

CLEAN = synth.SynthOptions(perspective=0.0, blur=0.0, noise=0.0, gradient=0.0)


@pytest.fixture(scope="module")
def fonts():
    return synth.find_fonts()


def _ink(image, rng_seed):
    """Pixels that differ from the (uniform) background colour."""
    bg = image[0, 0].astype(int)
    return np.abs(image.astype(int) - bg).max(axis=-1) > 40


def test_renderer_is_deterministic(fonts):
    a = synth.render_example(3, 7, fonts, synth.SynthOptions(curved=0.5))
    b = synth.render_example(3, 7, fonts, synth.SynthOptions(curved=0.5))
    c = synth.render_example(3, 8, fonts, synth.SynthOptions(curved=0.5))
    assert a[0] == b[0] and a[1] == b[1] and np.array_equal(a[2], b[2])
    assert a[1] != c[1]


@pytest.mark.parametrize("curved", [False, True])
def test_boxes_enclose_each_characters_ink(fonts, curved):
    for index in range(6):
        rng = np.random.default_rng([index, 1])
        word = synth.random_word(rng, CLEAN)
        image, boxes = synth.render_word(rng, word, fonts, CLEAN, curved=curved)
        assert boxes.shape == (len(word), 4)
        ink = _ink(image, index)
        ys, xs = np.nonzero(ink)
        inside = np.zeros(len(xs), bool)
        for x0, y0, x1, y1 in boxes:
            inside |= (xs >= np.floor(x0) - 1) & (xs < np.ceil(x1) + 1) & \
                      (ys >= np.floor(y0) - 1) & (ys < np.ceil(y1) + 1)
            box_ink = ink[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))]
            assert box_ink.any(), (word, index)  # every box holds ink
        assert inside.mean() > 0.99, (word, index)  # the ink lies in the boxes


def test_perspective_keeps_ink_in_the_boxes(fonts):
    options = dataclasses.replace(CLEAN, perspective=0.15)
    rng = np.random.default_rng(5)
    image, boxes = synth.render_word(rng, "Warp42", fonts, options, curved=False)
    ys, xs = np.nonzero(_ink(image, 0))
    inside = np.zeros(len(xs), bool)
    for x0, y0, x1, y1 in boxes:
        inside |= (xs >= x0 - 1.5) & (xs < x1 + 1.5) & (ys >= y0 - 1.5) & (ys < y1 + 1.5)
    assert inside.mean() > 0.98


def _mask_oracle(boxes, size, shrink):
    mask = np.zeros(size)
    for y in range(size[0]):
        for x in range(size[1]):
            for x0, y0, x1, y1 in boxes:
                cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
                hw, hh = max((x1 - x0) * shrink / 2, 0.5), max((y1 - y0) * shrink / 2, 0.5)
                if abs(x + 0.5 - cx) <= hw and abs(y + 0.5 - cy) <= hh:
                    mask[y, x] = 1
    return mask


def test_centre_masks_match_the_rendered_boxes(fonts):
    rng = np.random.default_rng(11)
    image, boxes = synth.render_word(rng, "Centre9", fonts, CLEAN, curved=True)
    size = image.shape[:2]
    mask = centre_mask(boxes, size, shrink=0.5).numpy()
    np.testing.assert_array_equal(mask, _mask_oracle(boxes, size, 0.5))
    for x0, y0, x1, y1 in boxes:  # 1 at every character's centre
        assert mask[int((y0 + y1) / 2), int((x0 + x1) / 2)] == 1
    outside = np.ones(size, bool)  # 0 outside every box
    for x0, y0, x1, y1 in boxes:
        outside[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = False
    assert mask[outside].sum() == 0
    assert 0.05 < mask.mean() < 0.6


def test_prepare_image_keeps_aspect_and_pads():
    image = np.full((20, 50, 3), 255, np.uint8)
    x, sx, sy = prepare_image(tf.constant(image), (32, 100), channels=1)
    x = x.numpy()
    assert x.shape == (32, 100, 1)
    np.testing.assert_allclose(x[:, :80], 1.0, atol=1e-3)  # 50 * 32 / 20 = 80 columns
    np.testing.assert_allclose(x[:, 80:], 0.0)
    assert float(sx) == pytest.approx(1.6) and float(sy) == pytest.approx(1.6)
    wide, _, _ = prepare_image(tf.constant(np.zeros((10, 400, 3), np.uint8)), (32, 100), 3)
    np.testing.assert_allclose(wide.numpy(), -1.0, atol=1e-4)  # squeezed to the width


def test_token_encoder_matches_charset():
    charset = Charset()
    enc = TokenEncoder(charset, 6)
    for word in ["Hello", "a1", "ABCDEF"]:
        np.testing.assert_array_equal(enc.encode(tf.constant(word)).numpy(),
                                      charset.encode(word, 6))
        assert bool(enc.valid(tf.constant(word)))
    for word in ["toolongword", "", "ab-c"]:
        assert not bool(enc.valid(tf.constant(word)))


def _png(value, size=(12, 30)):
    buf = io.BytesIO()
    Image.fromarray(np.full(size + (3,), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _eval_words(data_dir, split):
    ds = build_text_dataset(data_dir, split, charset=Charset(), max_length=8,
                            image_size=(16, 40), batch_size=4)
    return [w.decode() for batch in ds for w in batch["words"].numpy()]


def test_label_file_conversion_round_trip(tmp_path):
    (tmp_path / "img").mkdir()
    words = ["Hello", "wörld", "x-1"]
    for i in range(3):
        (tmp_path / "img" / f"{i}.png").write_bytes(_png(i * 50))
    label = tmp_path / "labels.txt"
    label.write_text("".join(f"img/{i}.png\t{w}\n" for i, w in enumerate(words)) + "\n",
                     encoding="utf-8")
    n = records.convert_text(str(label), str(tmp_path / "out"), "test", "folder")
    assert n == 3
    assert _eval_words(str(tmp_path / "out"), "test") == words
    info = records.load_text_info(str(tmp_path / "out"))
    assert info["num_examples"] == {"test": 3} and info["has_boxes"] == {"test": False}


def test_label_file_errors_name_the_line(tmp_path):
    label = tmp_path / "labels.txt"
    label.write_text("a.png\tok\nno tab here\n", encoding="utf-8")
    with pytest.raises(records.TextDataError,
                       match=r"labels.txt:1: image not found: .*a.png"):
        list(records.read_label_file(str(label)))
    (tmp_path / "a.png").write_bytes(_png(0))
    with pytest.raises(records.TextDataError,
                       match=r"labels.txt:2: expected 'path<TAB>word', got 'no tab here'"):
        list(records.read_label_file(str(label)))
    (tmp_path / "a.png").write_bytes(b"not an image")
    label.write_text("a.png\tok\n", encoding="utf-8")
    with pytest.raises(records.TextDataError, match="a.png: not a readable image"):
        records.convert_text(str(label), str(tmp_path / "out"), "test", "folder")
    assert not (tmp_path / "out" / records.INFO_FILE).exists()


def test_lmdb_conversion_round_trip(tmp_path):
    lmdb = pytest.importorskip("lmdb")
    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, word in enumerate(["SVT", "cute80"], 1):
            txn.put(b"image-%09d" % i, _png(i * 60))
            txn.put(b"label-%09d" % i, word.encode())
        txn.put(b"num-samples", b"2")
    env.close()
    items = list(records.read_lmdb(str(tmp_path / "db")))
    assert [(k, w) for k, _, w in items] == [("000000001", "SVT"), ("000000002", "cute80")]
    records.convert_text(str(tmp_path / "db"), str(tmp_path / "out"), "svt", "lmdb")
    assert _eval_words(str(tmp_path / "out"), "svt") == ["SVT", "cute80"]


def test_lmdb_errors(tmp_path, monkeypatch):
    lmdb = pytest.importorskip("lmdb")
    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"other", b"1")
    env.close()
    with pytest.raises(records.TextDataError, match="is not an LMDB text dataset"):
        list(records.read_lmdb(str(tmp_path / "db")))
    monkeypatch.setitem(sys.modules, "lmdb", None)
    with pytest.raises(records.TextDataError, match="needs the lmdb package"):
        list(records.read_lmdb(str(tmp_path / "db")))


def test_synthetic_records_train_pipeline(tmp_path):
    out = str(tmp_path / "synth")
    options = synth.SynthOptions(max_length=6)
    info = records.generate_synth(out, {"train": (8, 0.5), "test": (3, 0.0)},
                                  options=options, seed=1, num_workers=1)
    assert info["num_examples"] == {"test": 3, "train": 8}
    charset = Charset()
    ds = build_text_dataset(out, "train", charset=charset, max_length=6, image_size=(32, 100),
                            batch_size=4, training=True, seed=0)
    x, y = next(iter(ds))
    assert x["images"].shape == (4, 32, 100, 1) and y["mask"].shape == (4, 32, 100)
    assert y["boxes"].shape == (4, 6, 4)
    np.testing.assert_array_equal(x["tokens"], y["tokens"])
    np.testing.assert_array_equal(y["mask_weight"], 1.0)
    tokens, boxes = y["tokens"].numpy(), y["boxes"].numpy()
    for i in range(4):
        n = int((tokens[i] > 0).sum())
        assert tokens[i, n] == 0 and (boxes[i, :n, 2] > boxes[i, :n, 0]).all()
        assert (boxes[i, n:] == 0).all() and y["mask"].numpy()[i].sum() > 0
        assert boxes[i, :n, 2].max() <= 100.5  # scaled to the model input
    # the same render as the records hold: the first test word, unchanged
    word, _, _ = synth.render_example(1 * 1000 + 0, 0, synth.find_fonts(), options)
    assert _eval_words(out, "test")[0] == word


def test_convert_cli_label_file_and_errors(tmp_path, capsys):
    from iseg.cli import convert

    (tmp_path / "a.png").write_bytes(_png(10))
    (tmp_path / "labels.txt").write_text("a.png\tWord\n", encoding="utf-8")
    info = convert.run(["convert", "--dataset=text_folder",
                        f"--data_dir={tmp_path / 'labels.txt'}", "--splits=val",
                        f"--output_dir={tmp_path / 'out'}"])
    assert info["num_examples"] == {"val": 1}
    assert _eval_words(str(tmp_path / "out"), "val") == ["Word"]
    with pytest.raises(SystemExit):
        convert.run(["convert", "--dataset=text_folder", f"--data_dir={tmp_path / 'nope.txt'}",
                     f"--output_dir={tmp_path / 'out2'}"])
    assert "label file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        convert.run(["convert", "--dataset=text_lmdb", f"--data_dir={tmp_path}",
                     "--splits=a,b", f"--output_dir={tmp_path / 'out2'}"])
    assert "converts one source into one split; got --splits=a,b" in capsys.readouterr().err


class _FakeLmdb:
    """The part of the lmdb package `records.read_lmdb` uses, over a dict."""

    def __init__(self, data):
        self.data = data

    def open(self, path, **kwargs):
        del path, kwargs
        return self

    def begin(self, write=False):
        del write
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def get(self, key):
        return self.data.get(key)

    def close(self):
        pass


def test_lmdb_folder_and_label_file_read_as_their_converted_split(tmp_path, monkeypatch):
    """Evaluation reads an LMDB folder or a label file as it is: the same images and words
    as the split converted from the label file."""
    import types

    from iseg.text.train import is_text_source, open_eval_dataset, source_name

    words = ["Hello", "wörld", "x-1", "CUTE80", "ok"]
    (tmp_path / "img").mkdir()
    rng = np.random.default_rng(0)
    pngs = []
    for i in range(5):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (24, 20 + 8 * i, 3), np.uint8)).save(
            buf, format="PNG")
        pngs.append(buf.getvalue())
    for i, png in enumerate(pngs):
        (tmp_path / "img" / f"{i}.png").write_bytes(png)
    label = tmp_path / "mine.txt"
    label.write_text("".join(f"img/{i}.png\t{w}\n" for i, w in enumerate(words)),
                     encoding="utf-8")
    data = {b"num-samples": b"5"}
    for i, (png, word) in enumerate(zip(pngs, words), 1):
        data[b"image-%09d" % i], data[b"label-%09d" % i] = png, word.encode()
    (tmp_path / "CUTE80").mkdir()
    (tmp_path / "CUTE80" / "data.mdb").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "lmdb", _FakeLmdb(data))
    records.convert_text(str(label), str(tmp_path / "out"), "test", "folder")
    model = types.SimpleNamespace(image_size=(16, 40), channels=1, charset=Charset(),
                                  max_length=8)

    def read(source, data_dir=None):
        batches = list(open_eval_dataset(model, source, data_dir, batch_size=2))
        return (np.concatenate([b["images"].numpy() for b in batches]),
                [w.decode() for b in batches for w in b["words"].numpy()])

    images, read_words = read("test", str(tmp_path / "out"))
    assert read_words == words and images.shape == (5, 16, 40, 1)
    for source in (str(label), str(tmp_path / "CUTE80")):
        assert is_text_source(source)
        other_images, other_words = read(source)
        assert other_words == words
        np.testing.assert_array_equal(other_images, images)
    assert [source_name(str(label)), source_name(str(tmp_path / "CUTE80") + "/")] == [
        "mine", "CUTE80"]
    assert not is_text_source("test")
    with pytest.raises(FileNotFoundError, match="'nope' is neither an LMDB folder"):
        open_eval_dataset(model, "nope", str(tmp_path))
