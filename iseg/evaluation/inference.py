"""Inference modes: whole image, sliding window, multi-scale and flip.

All modes return logits at the input size. Multi-scale + flip averages *logits* (not
probabilities): each scale's (and flipped copy's) logits are resized back to the input size
with bilinear interpolation and the mean is taken, as the reference implementation does.
Sliding window: window = `crop_size`, stride = 2/3 of the window by default, the last
window of each row/column is aligned to the image border, overlapping logits are summed and
divided by the per-pixel window count. Images smaller than the window are padded
bottom/right with `pad_value` (0 = the normalised value of the padding colour) first.
"""

import math

import numpy as np
import tensorflow as tf

from iseg.ops import resize


def window_positions(length, window, stride):
    """Start offsets of sliding windows along one axis; the last one ends at the border."""
    if length <= window:
        return [0]
    n = int(math.ceil((length - window) / stride)) + 1
    return sorted({min(i * stride, length - window) for i in range(n)})


def default_stride(crop_size, ratio=2.0 / 3.0):
    return tuple(max(1, int(math.ceil(c * ratio))) for c in crop_size)


def _as_pair(v):
    if v is None:
        return None
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(x) for x in v)
    return (v[0], v[0]) if len(v) == 1 else v[:2]


def sliding_window_logits(model_fn, images, crop_size, stride=None, pad_value=0.0):
    """Sliding-window logits for `images` `[N, H, W, C]` with static H and W."""
    crop_h, crop_w = _as_pair(crop_size)
    stride_h, stride_w = _as_pair(stride) or default_stride((crop_h, crop_w))
    height, width = images.shape[1], images.shape[2]
    if height is None or width is None:
        raise ValueError("sliding-window inference needs images with a static height/width")
    pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
    if pad_h or pad_w:
        images = tf.pad(images, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]],
                        constant_values=pad_value)
    full_h, full_w = height + pad_h, width + pad_w
    count = np.zeros((full_h, full_w), np.float32)
    total = None
    for y in window_positions(full_h, crop_h, stride_h):
        for x in window_positions(full_w, crop_w, stride_w):
            out = tf.cast(model_fn(images[:, y:y + crop_h, x:x + crop_w]), tf.float32)
            out = tf.pad(out, [[0, 0], [y, full_h - y - crop_h], [x, full_w - x - crop_w],
                               [0, 0]])
            total = out if total is None else total + out
            count[y:y + crop_h, x:x + crop_w] += 1.0
    logits = total / tf.constant(count)[None, :, :, None]
    return logits[:, :height, :width]


def _scaled_size(height, width, scale):
    if isinstance(height, int) and isinstance(width, int):
        return int(height * scale + 0.5), int(width * scale + 0.5)
    scale = tf.constant(scale, tf.float32)
    return (tf.cast(tf.cast(height, tf.float32) * scale + 0.5, tf.int32),
            tf.cast(tf.cast(width, tf.float32) * scale + 0.5, tf.int32))


def predict_logits(model_fn, images, *, scales=(1.0,), flip=False, mode="whole",
                   crop_size=None, stride=None, align_corners=True, pad_value=0.0):
    """Averaged logits `[N, H, W, K]` (float32) for normalised `images` `[N, H, W, C]`.

    `model_fn(x)` returns logits at the size of `x`. `mode` is "whole" (graph friendly,
    dynamic sizes allowed) or "slide" (needs static sizes, `crop_size` = window).
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"inference mode must be 'whole' or 'slide', got {mode!r}")
    if mode == "slide" and crop_size is None:
        raise ValueError("sliding-window inference needs crop_size (the window size)")
    scales = [float(s) for s in (scales or (1.0,))]
    static_h, static_w = images.shape[1], images.shape[2]
    dyn = tf.shape(images)
    height = static_h if static_h is not None else dyn[1]
    width = static_w if static_w is not None else dyn[2]

    def infer(x):
        if mode == "slide":
            return sliding_window_logits(model_fn, x, crop_size, stride, pad_value)
        return tf.cast(model_fn(x), tf.float32)

    total, count = None, 0
    for scale in scales:
        x = images
        if scale != 1.0:
            x = resize(images, _scaled_size(height, width, scale), "bilinear", align_corners)
        for flipped in ((False, True) if flip else (False,)):
            xi = tf.reverse(x, axis=[2]) if flipped else x
            out = infer(xi)
            if flipped:
                out = tf.reverse(out, axis=[2])
            if scale != 1.0:
                out = resize(out, (height, width), "bilinear", align_corners)
            total = out if total is None else total + out
            count += 1
    return total / float(count)
