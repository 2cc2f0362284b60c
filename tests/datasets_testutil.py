"""Helpers for the dataset tests: tiny datasets in tmp dirs and an independent record reader."""

import os

import numpy as np
from PIL import Image


def save_image(path, array, fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path, format=fmt)


def save_label(path, array, palette=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im = Image.fromarray(np.asarray(array, np.uint8), mode="L")
    if palette:
        im = im.convert("P")
        im.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    im.save(path)


def random_image(rng, h, w):
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def read_records(path_or_dir, split=None):
    """{filename: (image uint8 [H,W,3], label uint8 [H,W])} parsed with the raw proto API."""
    import tensorflow as tf

    if split is not None:
        files = sorted(
            os.path.join(path_or_dir, f) for f in os.listdir(path_or_dir)
            if f.startswith(split + "-") and f.endswith(".tfrecord")
        )
    else:
        files = [path_or_dir]
    out = {}
    for f in files:
        for rec in tf.data.TFRecordDataset(f):
            ex = tf.train.Example.FromString(rec.numpy()).features.feature
            name = ex["image/filename"].bytes_list.value[0].decode()
            import io

            img = np.asarray(
                Image.open(io.BytesIO(ex["image/encoded"].bytes_list.value[0])).convert("RGB")
            )
            lab = np.asarray(Image.open(io.BytesIO(
                ex["image/segmentation/class/encoded"].bytes_list.value[0])))
            assert ex["image/height"].int64_list.value[0] == img.shape[0]
            assert ex["image/width"].int64_list.value[0] == img.shape[1]
            out[name] = (img, lab)
    return out


def map_with(table, raw):
    """Map a raw label array through a python dict with an explicit loop (oracle)."""
    out = np.empty(raw.shape, np.uint8)
    for idx, v in np.ndenumerate(raw):
        out[idx] = table[int(v)]
    return out
