"""The synthetic ``shapes`` dataset: coloured shapes on textured backgrounds.

Classes (spec ``shapes``): 0 background, 1 circle (red), 2 rectangle (green), 3 triangle
(blue), 4 ring (yellow). Each shape gets its class colour with a per-shape jitter and
pixel noise; the background is a smooth grey-ish texture with noise, so classes are
separable by colour and shape and a small CNN learns them in minutes on a CPU.

`generate_shapes` writes JPEG images and PNG labels into a temporary folder in the
``generic`` layout (``images/{split}``, ``labels/{split}``, ``classes.txt``) and converts
them with the same converter as the public datasets into `output_dir`.
"""

import os
import shutil
import tempfile

import numpy as np
from PIL import Image

from iseg.datasets.convert import convert_dataset
from iseg.datasets.info import INFO_FILE, load_dataset_info
from iseg.datasets.specs import SHAPES_CLASSES, SHAPES_PALETTE


def _texture(rng, h, w):
    grid = rng.normal(0.0, 1.0, size=(h // 12 + 2, w // 12 + 2)).astype(np.float32)
    smooth = np.asarray(
        Image.fromarray(grid, mode="F").resize((w, h), Image.BILINEAR), np.float32
    )
    base = rng.uniform(80, 170)
    tint = rng.uniform(-8, 8, size=3)
    img = base + 22.0 * smooth[..., None] + tint + rng.normal(0, 6, size=(h, w, 3))
    return img


def _shape_mask(kind, yy, xx, cy, cx, r, rng):
    if kind == 1:  # circle
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    if kind == 2:  # rectangle
        a, b = r * rng.uniform(0.55, 1.0), r * rng.uniform(0.55, 1.0)
        return (np.abs(yy - cy) <= a) & (np.abs(xx - cx) <= b)
    if kind == 3:  # triangle pointing up
        top, bottom = cy - r, cy + 0.8 * r
        half = r * (yy - top) / (bottom - top)
        return (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= half)
    d2 = (yy - cy) ** 2 + (xx - cx) ** 2  # ring
    return (d2 <= r * r) & (d2 > (0.5 * r) ** 2)


def render_example(rng, image_size=(96, 96), max_shapes=4):
    """One (image uint8 [H, W, 3], label uint8 [H, W]) pair."""
    h, w = image_size
    img = _texture(rng, h, w)
    label = np.zeros((h, w), np.uint8)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for _ in range(rng.integers(1, max_shapes + 1)):
        kind = int(rng.integers(1, len(SHAPES_CLASSES)))
        r = rng.uniform(0.12, 0.26) * min(h, w)
        cy, cx = rng.uniform(0.1 * h, 0.9 * h), rng.uniform(0.1 * w, 0.9 * w)
        mask = _shape_mask(kind, yy, xx, cy, cx, r, rng)
        colour = np.asarray(SHAPES_PALETTE[kind], np.float32) + rng.uniform(-25, 25, size=3)
        img[mask] = colour + rng.normal(0, 8, size=(int(mask.sum()), 3))
        label[mask] = kind
    return np.clip(img, 0, 255).astype(np.uint8), label


def write_raw_shapes(raw_dir, num_train=200, num_val=50, image_size=(96, 96), seed=0):
    """Write the raw files (generic layout) of the shapes dataset into `raw_dir`."""
    rng = np.random.default_rng(seed)
    with open(os.path.join(raw_dir, "classes.txt"), "w", encoding="utf-8") as f:
        for name, colour in zip(SHAPES_CLASSES, SHAPES_PALETTE):
            f.write(f"{name} {colour[0]} {colour[1]} {colour[2]}\n")
    for split, n in (("train", num_train), ("val", num_val)):
        image_dir = os.path.join(raw_dir, "images", split)
        label_dir = os.path.join(raw_dir, "labels", split)
        os.makedirs(image_dir)
        os.makedirs(label_dir)
        for i in range(n):
            img, label = render_example(rng, image_size)
            name = f"{split}_{i:05d}"
            Image.fromarray(img).save(os.path.join(image_dir, name + ".jpg"), quality=95)
            Image.fromarray(label, mode="L").save(os.path.join(label_dir, name + ".png"))


def generate_shapes(
    output_dir,
    num_train=200,
    num_val=50,
    image_size=(96, 96),
    seed=0,
    num_shards=2,
    compression="NONE",
    num_workers=0,
    writer="auto",
):
    """Generate and convert the shapes dataset into `output_dir`; returns its info dict
    (`writer`: see `iseg.datasets.convert.open_record_writer`)."""
    if num_train < num_shards or num_val < 1:
        raise ValueError(
            f"shapes needs num_train >= num_shards ({num_shards}) and num_val >= 1, "
            f"got {num_train} / {num_val}"
        )
    raw_dir = tempfile.mkdtemp(prefix="iseg-shapes-raw-")
    try:
        write_raw_shapes(raw_dir, num_train, num_val, image_size, seed)
        shards = {"train": num_shards, "val": min(num_shards, num_val)}
        return convert_dataset(
            "shapes", raw_dir, output_dir, splits=["train", "val"], num_shards=shards,
            compression=compression, num_workers=num_workers, progress=False, writer=writer,
        )
    finally:
        shutil.rmtree(raw_dir, ignore_errors=True)


def ensure_shapes(data_dir, **kwargs):
    """Generate the shapes dataset into `data_dir` unless a converted copy is there."""
    if os.path.isfile(os.path.join(data_dir, INFO_FILE)):
        info = load_dataset_info(data_dir)
        if info.get("dataset") == "shapes":
            return info
        raise ValueError(f"{data_dir} holds dataset {info.get('dataset')!r}, not 'shapes'")
    return generate_shapes(data_dir, **kwargs)
