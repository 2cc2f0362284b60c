"""Backend-agnostic tensor helpers (keras.ops only) shared by layers, heads and losses."""

import keras
from keras import ops

from iseg.tf_kernels import onednn_enabled, same_conv


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


# Captured at import: `iseg.benchmark.count_macs` patches `keras.ops.conv` / `matmul` to count
# them, and an atrous convolution is counted once, by the layer or helper that calls it.
_conv = ops.conv
_matmul = ops.matmul

# How `atrous_conv` computes a dilated conv on TensorFlow (measured in docs/benchmarks.md,
# "Dilated convolutions"): as a plain conv on the rate x rate phase sub-images ("phase"), or
# as one matmul over the kernel taps' shifted inputs ("taps"). Without oneDNN, phase
# sub-images smaller than MIN_PHASE_SIZE a side take the taps (TensorFlow's conv kernel
# gradient is slow on many tiny images; the taps keep 9 copies of the input for the
# backward pass, so larger ones keep the phases); with oneDNN, the phases are taken while
# padding the input to a multiple of the rate grows it by at most MAX_PHASE_PADDING (they
# cost that padding).
MIN_PHASE_SIZE = 6
MAX_PHASE_PADDING = 1.12


def _method(h, w, rate, onednn):
    """"phase" or "taps" for a dilated conv of an `h` x `w` input (`onednn`: TensorFlow
    runs its oneDNN kernels)."""
    ph, pw = -(-h // rate), -(-w // rate)
    if onednn:
        return "phase" if ph * pw * rate * rate <= MAX_PHASE_PADDING * h * w else "taps"
    return "phase" if min(ph, pw) >= MIN_PHASE_SIZE else "taps"


def _valid_taps(size, rate, kernel_size):
    """The kernel indices along one axis whose taps read at least one pixel of the image
    ('same' padding, stride 1): a centred range, so the sliced kernel is still centred."""
    half = kernel_size // 2
    reach = min(half, (size - 1) // rate)
    return half - reach, half + reach + 1


def _taps_conv(x, kernel, rate):
    """Dilated 'same' conv as one matmul: the kernel taps' shifted inputs side by side
    (`[N*H*W, kh*kw*C]`) times the kernel as a `[kh*kw*C, C']` matrix."""
    n, h, w, c = x.shape
    kh, kw = kernel.shape[:2]
    ph, pw = rate * (kh // 2), rate * (kw // 2)
    x = ops.pad(x, [[0, 0], [ph, ph], [pw, pw], [0, 0]])
    # `ops.slice`, not `x[...]`: TensorFlow's gradient of a slice is a pad, of a strided
    # slice its much slower `StridedSliceGrad` (a third of a CamVid step's kernel time)
    size = (-1 if n is None else n, h, w, c)
    taps = [ops.slice(x, (0, i * rate, j * rate, 0), size)
            for i in range(kh) for j in range(kw)]
    # one matmul over the taps side by side (kernel rows in the same tap-major order)
    cols = ops.reshape(ops.concatenate(taps, axis=-1), (-1, kh * kw * c))
    y = _matmul(cols, ops.reshape(kernel, (kh * kw * c, -1)))
    return ops.reshape(y, (-1, h, w, kernel.shape[-1]))


def _phase_conv(x, kernel, rate):
    """Dilated 'same' conv as a plain 'same' conv on the rate x rate phase sub-images:
    pixel (r*a + p, r*b + q) goes to image (p, q) at (a, b) (space-to-batch by reshapes),
    the input zero-padded at the bottom and right to a multiple of the rate (zeros that
    the dilated conv's own padding reads as well), and back."""
    n, h, w, c = x.shape
    n = -1 if n is None else n
    r, cout = rate, kernel.shape[-1]
    hp, wp = -(-h // r), -(-w // r)
    x = ops.pad(x, [[0, 0], [0, hp * r - h], [0, wp * r - w], [0, 0]])
    x = ops.transpose(ops.reshape(x, (n, hp, r, wp, r, c)), (2, 4, 0, 1, 3, 5))
    y = _same_conv(ops.reshape(x, (-1, hp, wp, c)), kernel)
    y = ops.transpose(ops.reshape(y, (r, r, n, hp, wp, cout)), (2, 3, 0, 4, 1, 5))
    y = ops.reshape(y, (n, hp * r, wp * r, cout))
    return ops.slice(y, (0, 0, 0, 0), (n, h, w, cout))


def _same_conv(x, kernel):
    """A stride-1 'same' conv on TensorFlow: without oneDNN `tf_kernels.same_conv` (its
    input gradient a forward conv), with oneDNN Keras's (oneDNN's is as fast)."""
    if onednn_enabled():
        return _conv(x, kernel, strides=1, padding="same")
    return same_conv(x, kernel)


def atrous_conv(x, kernel, rate):
    """`keras.ops.conv(x, kernel, padding="same", dilation_rate=rate)` for an NHWC `x`,
    stride 1 and an odd-sized `[kh, kw, cin, cout]` kernel, computed the fastest of the
    ways measured for TensorFlow's CPU kernels (`_method`).

    Taps that read only the zero padding are dropped (their products are zero); if one tap
    is left the conv is a matmul. Otherwise it is a plain conv on the rate x rate phase
    sub-images (`_phase_conv`: what TensorFlow's own kernel does without oneDNN, and
    faster than oneDNN's dilated conv), or one matmul over shifted copies of the input,
    one per kernel tap (`_taps_conv`), where the phase sub-images are small. Rate 1 is a
    plain conv; without oneDNN, it and the phases' conv compute their input gradient as a
    forward conv (`tf_kernels.same_conv`). Exact up to float32 summation order, in both
    directions. Unknown spatial sizes (symbolic shapes) and the other Keras backends
    (whose dilated convs are as fast or faster: docs/benchmarks.md) use `keras.ops.conv`.
    """
    h, w = x.shape[1], x.shape[2]
    if h is None or w is None or keras.backend.backend() != "tensorflow":
        return _conv(x, kernel, strides=1, padding="same", dilation_rate=rate)
    if rate == 1:
        return _same_conv(x, kernel)
    (i0, i1), (j0, j1) = (_valid_taps(h, rate, kernel.shape[0]),
                          _valid_taps(w, rate, kernel.shape[1]))
    if (i1 - i0, j1 - j0) != tuple(kernel.shape[:2]):
        kernel = kernel[i0:i1, j0:j1]
    one_tap = i1 - i0 == 1 and j1 - j0 == 1
    if not one_tap and _method(h, w, rate, onednn_enabled()) == "phase":
        return _phase_conv(x, kernel, rate)
    return _taps_conv(x, kernel, rate)
