"""Cost and speed measurements: analytic multiply-accumulate counts, timed runs, peak memory
and the machine's measured dense throughput (used by `iseg.cli.benchmark` and the scripts
in `benchmarks/`).

MACs are counted while a forward pass runs: every call of a Conv2D, Conv2DTranspose,
DepthwiseConv2D or Dense layer, of `keras.ops.conv` or `iseg.ops.atrous_conv` (shared-kernel
convolutions), of `keras.ops.einsum` / `keras.ops.matmul` (attention) and every bilinear
resize pass of `iseg.ops.resize` adds its multiply-accumulates for the whole batch:

- convolution: output elements x kernel taps x input channels per group (grouped convs
  have `cin / groups` kernel input channels, so this covers them); `iseg.ops.atrous_conv`
  counts as the dilated convolution it computes, all kernel taps included (it skips the
  taps that read only zero padding);
- transposed convolution: input elements x kernel taps x output channels;
- depthwise convolution: output elements x kernel taps;
- dense: output elements x input features;
- einsum: the product of the sizes of all its indices; matmul: output elements x the
  contracted size;
- bilinear resize: 2 per output element of each of its two one-axis passes (a two-tap
  weighted sum; nearest-neighbour resizes are gathers and count 0).

Batch norm, activations, softmax and other element-wise work are not counted. One MAC is
two FLOPs; the helpers below name which one they return.
"""

import contextlib
import datetime
import math
import os
import re
import statistics
import string
import time

import keras
import numpy as np

import iseg.ops


def _size(shape):
    return math.prod(int(d) for d in shape)


def einsum_macs(equation, *operands):
    """Multiply-accumulates of `einsum(equation, *operands)`: the product of all index sizes."""
    inputs = equation.replace(" ", "").split("->")[0].split(",")
    sizes = {}
    for spec, x in zip(inputs, operands):
        letters = [c for c in spec if c in string.ascii_letters]
        for letter, dim in zip(letters, x.shape[len(x.shape) - len(letters):]):
            sizes[letter] = int(dim)
    return math.prod(sizes.values())


def _conv(out, layer, *args, **kwargs):
    return _size(out.shape) * _size(layer.kernel.shape[:-1])


def _conv_transpose(out, layer, x, *args, **kwargs):
    return _size(x.shape) * _size(layer.kernel.shape[:-1])


def _depthwise(out, layer, *args, **kwargs):
    return _size(out.shape) * _size(layer.kernel.shape[:-2])


def _dense(out, layer, *args, **kwargs):
    return _size(out.shape) * int(layer.kernel.shape[0])


def _ops_conv(out, x, kernel, *args, **kwargs):
    return _size(out.shape) * _size(kernel.shape[:-1])


def _matmul(out, a, b, **kwargs):
    return _size(out.shape) * int(a.shape[-1])


def _resize_pass(out, x, out_len, axis, method, *args, **kwargs):
    return 2 * _size(out.shape) if method == "bilinear" else 0


COUNTED = (  # (owner, attribute, MACs of one call from (output, *call arguments))
    (keras.layers.Conv2D, "call", _conv),
    (keras.layers.Conv2DTranspose, "call", _conv_transpose),
    (keras.layers.DepthwiseConv2D, "call", _depthwise),
    (keras.layers.Dense, "call", _dense),
    (keras.ops, "conv", _ops_conv),
    (iseg.ops, "atrous_conv", _ops_conv),  # counted as the dilated conv it computes
    (keras.ops, "einsum", lambda out, eq, *operands, **k: einsum_macs(eq, *operands)),
    (keras.ops, "matmul", _matmul),
    (iseg.ops, "_interp_axis", _resize_pass),
)


@contextlib.contextmanager
def count_macs():
    """Yields a one-element list holding the multiply-accumulates of the calls inside."""
    total = [0]
    patched = []

    def counted(original, macs):
        def call(*args, **kwargs):
            out = original(*args, **kwargs)
            total[0] += macs(out, *args, **kwargs)
            return out
        return call

    try:
        for owner, name, macs in COUNTED:
            patched.append((owner, name, vars(owner).get(name)))
            setattr(owner, name, counted(getattr(owner, name), macs))
        yield total
    finally:
        for owner, name, own in reversed(patched):
            if own is None:
                delattr(owner, name)  # inherited: inherit it again
            else:
                setattr(owner, name, own)


def model_macs(model, image_shape, training=False):
    """Multiply-accumulates of one forward pass of `model` on one image of `image_shape`
    (height, width, channels); `training=True` includes the training-only branches."""
    x = np.zeros((1, *image_shape), "float32")
    with count_macs() as total:
        model(x, training=training)
    return total[0]


# ----------------------------------------------------------------------------- timing


def time_rounds(fns, repeats, warmup=1):
    """Interleaved timings of `fns` ({name: no-argument callable}): `warmup` untimed calls
    of each (tracing, caches), then `repeats` rounds calling each once in turn, so that a
    drift in the machine's speed reaches them all alike. Per name, in seconds: median,
    min, max and every run, in round order."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    runs = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            runs[name].append(time.perf_counter() - start)
    return {name: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t),
                   "runs_s": t} for name, t in runs.items()}


PEAK_RSS_METHOD = ("process resident set size high-water mark (VmHWM of /proc/self/status) "
                   "over a phase's warm-up calls, reset before them by writing 5 to "
                   "/proc/self/clear_refs")


def reset_peak_rss():
    """Reset the process's RSS high-water mark (Linux); False where it cannot be reset."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes():
    """The process's RSS high-water mark in bytes (since the last reset)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) * 1024
    except (OSError, AttributeError):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def time_model(model, images, labels, repeats, warmup=1, references=None):
    """Training step (`train_on_batch`, SGD with momentum) and inference
    (`predict_on_batch`) timings of a SegmentationModel on any Keras backend, each with
    the peak RSS of its warm-up calls (at least one). `references` ({name: no-argument
    callable}: the machine's reference rates) are timed in the same rounds as the two
    phases, interleaved with them, and returned under "references"."""
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    phases = {"train_step": lambda: model.train_on_batch(images, labels),
              "inference": lambda: model.predict_on_batch(images)}
    peaks = {}
    for name, fn in phases.items():
        reset_peak_rss()
        for _ in range(max(warmup, 1)):
            fn()
        peaks[name] = peak_rss_bytes()
    references = references or {}
    for fn in references.values():  # their warm-up (the phases have had theirs)
        for _ in range(warmup):
            fn()
    times = time_rounds({**references, **phases}, repeats, warmup=0)
    result = {name: {**times[name], "images_per_s": len(images) / times[name]["median_s"],
                     "peak_rss_bytes": peaks[name]} for name in phases}
    if references:
        result["references"] = {name: times[name] for name in references}
    return result


def make_train_step(model, optimizer, loss_fn):
    """A TensorFlow `tf.function` `step(x, y)`: `loss_fn(model, x, y)` under a gradient
    tape, gradients of the trainable weights, `optimizer.apply_gradients`; returns the loss
    (a loss-scaling optimizer scales it before the gradients)."""
    import tensorflow as tf

    optimizer.build(model.trainable_variables)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(model, x, y)
            scaled = optimizer.scale_loss(loss) if hasattr(optimizer, "scale_loss") else loss
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return step


def segmentation_loss(model, x, y):
    """The trainer's loss of a SegmentationModel: training forward, `compute_loss`."""
    return model.compute_loss(x=x, y=y, y_pred=model(x, training=True), training=True)


# ----------------------------------------------------------------------------- machine


def matmul_step(n):
    """A no-argument callable running a float32 `n x n` by `n x n` TensorFlow matmul
    (2 n^3 FLOPs)."""
    import tensorflow as tf

    a = tf.random.normal((n, n), seed=0)
    b = tf.random.normal((n, n), seed=1)
    step = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)))
    return lambda: float(step(a, b))


def conv_step(size, channels):
    """A no-argument callable running a float32 3x3 convolution (`channels` -> `channels`,
    stride 1, `size` x `size`, batch 1) forward and backward (input and kernel gradients):
    3 x 2 x size^2 x channels^2 x 9 FLOPs."""
    import tensorflow as tf

    x = tf.random.normal((1, size, size, channels), seed=0)
    kernel = tf.random.normal((3, 3, channels, channels), seed=1)

    @tf.function
    def step(x, kernel):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            y = tf.nn.conv2d(x, kernel, 1, "SAME")
        dx, dk = tape.gradient(y, [x, kernel])
        return tf.reduce_sum(y) + tf.reduce_sum(dx) + tf.reduce_sum(dk)

    return lambda: float(step(x, kernel))


def conv_reference(size, channels):
    """(`conv_step(size, channels)`, its FLOPs per call)."""
    return conv_step(size, channels), 3 * 2 * size ** 2 * channels ** 2 * 9


def machine_references(matmul_size, conv_size, conv_channels):
    """The machine's reference rates, {name: (no-argument callable, FLOPs per call)}: an
    `matmul_size`-square matmul ("matmul") and `conv_reference(conv_size, conv_channels)`
    ("conv3x3_fwd_bwd")."""
    return {"matmul": (matmul_step(matmul_size), 2 * matmul_size ** 3),
            "conv3x3_fwd_bwd": conv_reference(conv_size, conv_channels)}


def rate(timing, flops):
    """A `time_rounds` timing of a `flops`-FLOP call with its FLOP/s (at the median)."""
    return {"flops": flops, "flop_per_s": flops / timing["median_s"], **timing}


def utilisation(flops, runs_s, reference_flops, reference_runs_s):
    """The share of a reference's FLOP/s that a `flops`-FLOP call reached: the median over
    rounds of (flops / run) / (reference_flops / the reference's run of the same round)."""
    return statistics.median(flops / run * ref / reference_flops
                             for run, ref in zip(runs_s, reference_runs_s))


# What decides TensorFlow's CPU kernels: oneDNN on or off, and the newest instruction set
# oneDNN may use (`AVX2` there makes an AVX-512 machine run an AVX2 machine's oneDNN code).
ONEDNN_VARIABLES = ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA")


def utc_timestamp():
    """The current UTC time, ISO 8601 to the second (the results' "date")."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def machine_info():
    """CPU model, core count, TensorFlow's oneDNN state (with the environment variables
    that set it and cap oneDNN's instruction set) and library versions."""
    import platform
    import sys

    import tensorflow as tf

    cpu = platform.processor()
    flags = []
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            text = f.read()
        cpu = re.search(r"model name\s*:\s*(.*)", text).group(1).strip()
        flags = re.search(r"flags\s*:\s*(.*)", text).group(1).split()
    except (OSError, AttributeError):
        pass
    from iseg.tf_kernels import onednn_enabled

    onednn = onednn_enabled()
    return {
        "cpu": cpu, "cores": os.cpu_count(),
        "avx2": "avx2" in flags, "avx512f": "avx512f" in flags,
        "onednn": onednn, **{name: os.environ.get(name) for name in ONEDNN_VARIABLES},
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": sys.version.split()[0], "tensorflow": tf.__version__,
        "keras": keras.__version__, "numpy": np.__version__,
    }
