"""Colour label maps with a palette, blend them on images, write palette PNGs."""

import os

import numpy as np
from PIL import Image


def palette_array(palette, ignore_label=255):
    """A 256x3 uint8 colour table: class colours, then black (ignore 255 -> white)."""
    table = np.zeros((256, 3), np.uint8)
    palette = np.asarray(palette, np.uint8).reshape(-1, 3)[:256]
    table[: len(palette)] = palette
    if ignore_label is not None and 0 <= ignore_label < 256 and ignore_label >= len(palette):
        table[ignore_label] = (255, 255, 255)
    return table


def colorize(labels, palette, ignore_label=255):
    """`[..., H, W]` integer labels -> `[..., H, W, 3]` uint8 colours."""
    labels = np.asarray(labels).astype(np.int64)
    return palette_array(palette, ignore_label)[np.clip(labels, 0, 255)]


def overlay(image, labels, palette, alpha=0.5, ignore_label=255):
    """Blend the coloured labels on a uint8 RGB image (ignored pixels keep the image)."""
    image = np.asarray(image, np.float32)
    colours = colorize(labels, palette, ignore_label).astype(np.float32)
    out = (1 - alpha) * image + alpha * colours
    mask = (np.asarray(labels) == ignore_label)[..., None]
    out = np.where(mask, image, out)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def save_label_png(path, labels, palette):
    """Save a `[H, W]` label map as an 8-bit palette PNG (pixel value = class id)."""
    img = Image.fromarray(np.asarray(labels, np.uint8), mode="P")
    img.putpalette(palette_array(palette).reshape(-1).tolist())
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path)


def save_rgb_png(path, image):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(np.asarray(image, np.uint8)).save(path)


def save_overlay(output_dir, index, image, labels, predictions, palette):
    """``overlay_<index>.png`` (image | ground truth | prediction overlays) and
    ``labels_<index>.png`` (the prediction as a palette PNG) in `output_dir`."""
    panel = np.concatenate([image, overlay(image, labels, palette),
                            overlay(image, predictions, palette)], axis=1)
    save_rgb_png(os.path.join(output_dir, f"overlay_{index:03d}.png"), panel)
    save_label_png(os.path.join(output_dir, f"labels_{index:03d}.png"), predictions, palette)
