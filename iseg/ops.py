"""Backend-agnostic tensor helpers (keras.ops only) shared by layers, heads and losses."""

import keras
from keras import ops


def _source_coords(in_len, out_len, align_corners):
    """Float source coordinates of each output pixel along one axis."""
    out_idx = ops.cast(ops.arange(out_len), "float32")
    in_f = ops.cast(in_len, "float32")
    out_f = ops.cast(out_len, "float32")
    if align_corners:
        scale = ops.where(out_f > 1.0, (in_f - 1.0) / ops.maximum(out_f - 1.0, 1.0), 0.0)
        return out_idx * scale
    return ops.maximum((out_idx + 0.5) * (in_f / out_f) - 0.5, 0.0)


def _interp_axis(x, out_len, axis, method, align_corners):
    in_len = ops.shape(x)[axis]
    coords = _source_coords(in_len, out_len, align_corners)
    last = ops.cast(in_len, "int32") - 1
    if method == "nearest":
        if align_corners:
            idx = ops.cast(ops.floor(coords + 0.5), "int32")
        else:
            in_f = ops.cast(in_len, "float32")
            idx = ops.cast(
                ops.floor((ops.cast(ops.arange(out_len), "float32") + 0.5) * in_f / out_len),
                "int32",
            )
        return ops.take(x, ops.minimum(idx, last), axis=axis)
    lo = ops.cast(ops.floor(coords), "int32")
    lo = ops.minimum(lo, last)
    hi = ops.minimum(lo + 1, last)
    w = coords - ops.cast(lo, "float32")
    shape = [1] * len(x.shape)
    shape[axis] = -1
    w = ops.cast(ops.reshape(w, shape), x.dtype)
    return ops.take(x, lo, axis=axis) * (1 - w) + ops.take(x, hi, axis=axis) * w


def resize(x, size, method="bilinear", align_corners=True):
    """Resize an NHWC tensor to `size` = (height, width).

    `align_corners=True` maps corner pixel centres onto each other (the convention of the
    original TF code, exact for odd sizes such as 513 -> 65); `False` uses half-pixel
    centres (PyTorch / mmseg `align_corners=False`). `method` is "bilinear" or "nearest".
    Sizes may be Python ints or scalar tensors.
    """
    if method not in ("bilinear", "nearest"):
        raise ValueError(f"resize method must be 'bilinear' or 'nearest', got {method!r}")
    h, w = size
    if (
        isinstance(h, int)
        and isinstance(w, int)
        and x.shape[1] == h
        and x.shape[2] == w
    ):
        return x
    x = _interp_axis(x, h, 1, method, align_corners)
    return _interp_axis(x, w, 2, method, align_corners)


def resize_labels(labels, size, align_corners=True):
    """Nearest-neighbour resize of integer label maps `[N, H, W]` to `size`."""
    return resize(labels[..., None], size, "nearest", align_corners)[..., 0]


def spatial_shape(x):
    """(height, width) of an NHWC tensor: static ints where known, else scalar tensors."""
    shape = ops.shape(x)
    h = x.shape[1] if x.shape[1] is not None else shape[1]
    w = x.shape[2] if x.shape[2] is not None else shape[2]
    return h, w


def compute_dtype_of(layer):
    """The compute dtype of a layer under its dtype policy."""
    return keras.backend.standardize_dtype(layer.compute_dtype)
