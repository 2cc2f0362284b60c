"""Speed, side by side: our models against the ones users would pick instead, in one run.

    python benchmarks/side_by_side.py --output=benchmarks/results/side_by_side_onednn1.json
    TF_ENABLE_ONEDNN_OPTS=0 python benchmarks/side_by_side.py --output=...onednn0.json
    python benchmarks/side_by_side.py --quick --output=/tmp/quick.json   # smoke test, seconds

Every comparison is timed interleaved (one run of each contender per round, `--repeats`
rounds after one untimed warm-up run each), so load from other processes on a shared
machine hits both sides alike; the JSON keeps every run, and each ratio is the median of
the per-round ratios (ours / theirs: below 1 is faster). Sections:

1. backbones: our ResNet-50 (OS32) vs keras.applications.ResNet50 and our ConvNeXt-T vs
   ConvNeXtTiny (random weights): forward (inference) and training step (SGD with momentum
   on the mean square of the last feature map), at `--size` and at each of `--plot_sizes`;
2. car: the self-attention (`nl`) R50-D8 model with vs without CAR, training step;
3. caa: ChannelizedAxialAttention closed form vs grouped form (`--caa_group`), forward,
   time and peak memory (in a fresh process per form and size: increase of the RSS
   high-water mark during one eager forward pass) at each of `--caa_sizes`;
4. ksac: KernelSharingASPP vs ASPP (same filters and rates) on a 2048-channel OS8 feature
   map: parameters, MACs, training-step time;
5. mfu: the whole training step of the self-attention R50-D8 + CAR model, FLOPs per step
   (3 x the training-mode forward, `iseg.benchmark`'s count) / time, against the machine's
   3x3-convolution forward + backward rate, timed interleaved with the steps (MFU per
   round); "after" is the library default (stride-1 convolutions, dilated or plain, by
   `iseg.ops.atrous_conv`, batch norm by TensorFlow's fused kernel), "keras_bn" the same
   with Keras's unfused batch norm, "before" with Keras's convolution and batch norm (the
   same model and weights, each traced separately);
6. dilated (only when named in `--sections`): one dilated 3x3 conv forward + backward,
   Keras's conv vs `iseg.ops.atrous_conv`'s two ways (the phase sub-images' plain conv,
   the taps' matmul) and the one it chooses, at the shapes of R50-D8's last two stages
   and of the CamVid configs (`DILATED_SHAPES`).

`--quick` runs every section with tiny stand-ins (narrow networks, tiny inputs, our own
network on both sides of the backbone pairs): it checks the script and its JSON, not speed.
"""

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from iseg.cli.usage import tensorflow_defaults  # noqa: E402

tensorflow_defaults()  # as the iseg tools run TensorFlow (its BFC CPU allocator)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import iseg.ops  # noqa: E402
from iseg import benchmark  # noqa: E402
from iseg.backbones import build_backbone  # noqa: E402
from iseg.layers import ASPP, ChannelizedAxialAttention, KernelSharingASPP  # noqa: E402
from iseg.layers.conv_bn_act import BatchNormalization, Conv2D  # noqa: E402
from iseg.models import build_model_from_name  # noqa: E402
from iseg.tf_kernels import onednn_enabled  # noqa: E402

TARGETS = {"backbone": 1.05, "car": 1.05}
NUM_CLASSES = 21
TINY_RESNET = dict(depths=(1, 1, 1, 1), widths=(4, 8, 8, 8), stem_width=8)
TINY_CONVNEXT = dict(depths=(1, 1, 1, 1), widths=(8, 8, 8, 8))


def ratio(times, ours, theirs):
    """Median over rounds of ours / theirs (the same round's runs)."""
    return statistics.median(a / b for a, b in zip(times[ours]["runs_s"], times[theirs]["runs_s"]))


def _last(outputs):
    """The last feature map: a Keras model's output or our backbones' "c5" endpoint."""
    return outputs["c5"] if isinstance(outputs, dict) else outputs


def _feature_loss(model, x, y):
    return keras.ops.mean(keras.ops.square(_last(model(x, training=True))))


def _sgd():
    return keras.optimizers.SGD(0.01, momentum=0.9)


def _forward(model):
    return tf.function(lambda x: _last(model(x, training=False)))


def backbone_pairs(quick):
    """name -> (ours, theirs) builders taking the input size."""
    if quick:
        return {
            "resnet50": (lambda s: build_backbone("resnet50", **TINY_RESNET),
                         lambda s: build_backbone("resnet50", **TINY_RESNET)),
            "convnext_tiny": (lambda s: build_backbone("convnext_tiny", **TINY_CONVNEXT),
                              lambda s: build_backbone("convnext_tiny", **TINY_CONVNEXT)),
        }
    return {
        "resnet50": (lambda s: build_backbone("resnet50"),
                     lambda s: keras.applications.ResNet50(
                         weights=None, include_top=False, input_shape=(s, s, 3))),
        "convnext_tiny": (lambda s: build_backbone("convnext_tiny"),
                          lambda s: keras.applications.ConvNeXtTiny(
                              weights=None, include_top=False, input_shape=(s, s, 3))),
    }


def section_backbones(quick, size, batch, repeats):
    """Forward and training-step times of each backbone pair at `size`, interleaved."""
    x = tf.random.normal((batch, size, size, 3), seed=0)
    out = {}
    for name, builders in backbone_pairs(quick).items():
        fns = {}
        for side, build in zip(("ours", "theirs"), builders):
            model = build(size)
            forward, step = _forward(model), benchmark.make_train_step(
                model, _sgd(), _feature_loss)
            fns[f"{side}_forward"] = _timed(forward, x)
            fns[f"{side}_train"] = _timed(step, x, x)
        times = benchmark.time_rounds(fns, repeats)
        out[name] = {"size": size, "batch": batch, "times": times,
                     "ratio_forward": ratio(times, "ours_forward", "theirs_forward"),
                     "ratio_train": ratio(times, "ours_train", "theirs_train")}
    return out


def seg_model(quick, car):
    options = dict(car={} if car else None)
    if quick:
        options.update(backbone_options=TINY_RESNET,
                       head_options={"channels": 8, "key_filters": 4})
    return build_model_from_name("nl_resnet50_d8", NUM_CLASSES, **options)


def _seg_data(size, batch):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(-1, 1, (batch, size, size, 3)), tf.float32)
    y = tf.constant(rng.integers(0, NUM_CLASSES, (batch, size, size)), tf.int32)
    return x, y


def section_car(quick, size, batch, repeats):
    """Training step of the self-attention R50-D8 model with and without CAR."""
    x, y = _seg_data(size, batch)
    fns = {}
    for name, car in (("with_car", True), ("without_car", False)):
        step = benchmark.make_train_step(seg_model(quick, car), _sgd(),
                                         benchmark.segmentation_loss)
        fns[name] = _timed(step, x, y)
    times = benchmark.time_rounds(fns, repeats)
    return {"model": "nl_resnet50_d8", "size": size, "batch": batch, "times": times,
            "ratio_train": ratio(times, "with_car", "without_car")}


CAA_MEMORY = """
import sys, numpy as np
from iseg import benchmark
from iseg.layers import ChannelizedAxialAttention
size, filters, group = (int(a) for a in sys.argv[1:4])
layer = ChannelizedAxialAttention(filters, group_size=group or None)
x = np.random.default_rng(0).normal(size=(1, size, size, filters)).astype("float32")
layer.build(x.shape)
layer(x[:, :9, :9])  # kernels and thread pools set up
before = benchmark.peak_rss_bytes()
layer(x, training=False)
print(benchmark.peak_rss_bytes() - before)
"""


def caa_peak_memory(size, filters, group):
    """Increase of the RSS high-water mark over the process's earlier peak (imports, weights,
    input, a small warm-up call) during one forward pass of a fresh process (eager)."""
    import subprocess

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
         os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", CAA_MEMORY, str(size), str(filters),
                          str(group or 0)], env=env, check=True, capture_output=True, text=True)
    return int(out.stdout.split()[-1])


def section_caa(quick, sizes, group, repeats):
    """CAA closed vs grouped form: forward time (interleaved) and peak memory per size."""
    filters = 16 if quick else 512
    out = {}
    for size in sizes:
        x = tf.random.normal((1, size, size, filters), seed=0)
        fns = {}
        for name, group_size in (("closed", None), ("grouped", group)):
            layer = ChannelizedAxialAttention(filters, group_size=group_size)
            layer.build(x.shape)
            fns[name] = _timed(tf.function(lambda t, layer=layer: layer(t, training=False)), x)
        times = benchmark.time_rounds(fns, repeats)
        memory = {name: caa_peak_memory(size, filters, g)
                  for name, g in (("closed", None), ("grouped", group))}
        out[str(size)] = {"filters": filters, "group_size": group, "times": times,
                          "peak_rss_increase_bytes": memory,
                          "ratio_time": ratio(times, "closed", "grouped"),
                          "ratio_memory": memory["closed"] / max(memory["grouped"], 1)}
    return out


def section_ksac(quick, size, batch, repeats):
    """KSAC vs ASPP (filters 256, OS8 rates 12, 24, 36) on a 2048-channel feature map."""
    channels, filters = (16, 8) if quick else (2048, 256)
    rates = (12, 24, 36)
    x = tf.random.normal((batch, size, size, channels), seed=0)
    layers = {"ksac": KernelSharingASPP(filters, rates, projection_filters=filters),
              "aspp": ASPP(filters, rates, projection_filters=filters)}
    out, fns = {}, {}
    for name, layer in layers.items():
        layer.build(x.shape)
        with benchmark.count_macs() as macs:
            layer(x[:1], training=False)
        out[name] = {"params": int(layer.count_params()), "macs_per_image": int(macs[0])}
        step = benchmark.make_train_step(layer, _sgd(), _feature_loss)
        fns[name] = _timed(step, x, x)
    times = benchmark.time_rounds(fns, repeats)
    return {"channels": channels, "filters": filters, "rates": rates, "size": size,
            "batch": batch, **out, "times": times, "ratio_train": ratio(times, "ksac", "aspp")}


# mfu variants: (dilated convs as Keras computes them, batch norm as Keras computes it)
MFU_VARIANTS = {"after": (False, False), "keras_bn": (False, True), "before": (True, True)}


def _traced(step, x, y, keras_dilated, keras_bn):
    """Trace `step` once; with `keras_dilated` our Conv2D layers (dilated or plain) run
    Keras's own convolution instead of `iseg.ops.atrous_conv`; with `keras_bn` our
    BatchNormalization layers run Keras's unfused code instead of the fused kernel."""
    originals = Conv2D.convolution_op, BatchNormalization.call
    if keras_dilated:
        Conv2D.convolution_op = keras.layers.Conv2D.convolution_op
    if keras_bn:
        BatchNormalization.call = keras.layers.BatchNormalization.call
    try:
        return step.get_concrete_function(x, y)
    finally:
        Conv2D.convolution_op, BatchNormalization.call = originals


def section_mfu(quick, size, batch, repeats, conv_shape):
    """MFU of the self-attention R50-D8 + CAR training step: ours ("after"), with Keras's
    batch norm ("keras_bn"), and with Keras's dilated conv and batch norm ("before")."""
    x, y = _seg_data(size, batch)
    model = seg_model(quick, car=True)
    macs = benchmark.model_macs(model, (size, size, 3), training=True)
    step_flops = 3 * 2 * macs * batch
    fns = {}
    for name, (keras_dilated, keras_bn) in MFU_VARIANTS.items():
        concrete = _traced(benchmark.make_train_step(model, _sgd(), benchmark.segmentation_loss),
                           x, y, keras_dilated, keras_bn)
        fns[name] = _timed(concrete, x, y)
    fns["conv3x3_fwd_bwd"], conv_flops = benchmark.conv_reference(*conv_shape)
    times = benchmark.time_rounds(fns, repeats)
    out = {"model": "nl_resnet50_d8 + CAR", "size": size, "batch": batch,
           "flops_per_step": step_flops, "conv3x3_fwd_bwd_flops": conv_flops, "times": times}
    for name in MFU_VARIANTS:  # per round: (FLOPs / step time) / (conv FLOPs / conv time)
        out[f"mfu_{name}"] = benchmark.utilisation(step_flops, times[name]["runs_s"], conv_flops,
                                                   times["conv3x3_fwd_bwd"]["runs_s"])
    out["speedup"] = 1 / ratio(times, "after", "before")
    out["speedup_fused_bn"] = 1 / ratio(times, "after", "keras_bn")
    return out


# (batch or None for --batch, height, width, channels, rate): R50-D8's last two stages at
# 257 and 513 inputs, then the CamVid configs' (batch 8, 180x240 at OS8)
DILATED_SHAPES = ((None, 33, 33, 256, 2), (None, 33, 33, 512, 4), (None, 33, 33, 512, 8),
                  (None, 33, 33, 512, 16), (None, 65, 65, 256, 2), (None, 65, 65, 512, 4),
                  (None, 65, 65, 512, 8), (None, 65, 65, 512, 16),
                  (8, 23, 30, 128, 2), (8, 23, 30, 256, 4))
DILATED_METHODS = ("keras", "phase", "taps")


def section_dilated(quick, batch, repeats):
    """A dilated 3x3 conv (C -> C, 'same'), forward + backward (input and kernel gradients):
    Keras's `keras.ops.conv` vs `iseg.ops.atrous_conv`'s two ways (a plain conv on the
    phase sub-images, the taps' matmul), and which one `atrous_conv` takes here."""
    out = {}
    shapes = ((None, 9, 9, 8, 2), (None, 9, 9, 8, 4)) if quick else DILATED_SHAPES
    for n, h, w, channels, rate in shapes:
        x = tf.random.normal((n or batch, h, w, channels), seed=0)
        kernel = tf.random.normal((3, 3, channels, channels), seed=1) * 0.05
        fns = {name: _timed(_fwd_bwd(_dilated(name, rate)), x, kernel)
               for name in DILATED_METHODS}
        times = benchmark.time_rounds(fns, repeats)
        out[f"{n or batch}x{h}x{w}x{channels} rate {rate}"] = {
            "phase_size": [-(-h // rate), -(-w // rate)], "times": times,
            "chosen": iseg.ops._method(h, w, rate, onednn_enabled()),
            **{f"ratio_{name}": ratio(times, name, "keras") for name in DILATED_METHODS[1:]}}
    return out


def _dilated(method, rate):
    if method == "keras":
        return lambda x, kernel: keras.ops.conv(x, kernel, 1, "same", dilation_rate=rate)
    helper = iseg.ops._phase_conv if method == "phase" else iseg.ops._taps_conv
    return lambda x, kernel: helper(x, kernel, rate)


def _timed(fn, *args):
    """A no-argument callable running `fn(*args)` to completion (a float on the host)."""
    return lambda: float(tf.reduce_sum(fn(*args)))


def _fwd_bwd(conv):
    @tf.function
    def step(x, kernel):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            y = conv(x, kernel)
            loss = tf.reduce_sum(y * y)
        dx, dk = tape.gradient(loss, [x, kernel])
        return tf.reduce_sum(dx) + tf.reduce_sum(dk)
    return step


def plot_sizes(results, path):
    """PNG: median time vs input size of each backbone pair, forward and training step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results[0]["pairs"])
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), squeeze=False)
    sizes = [r["size"] for r in results]
    for ax, name in zip(axes[0], names):
        for key, style in (("ours_train", "C0-o"), ("theirs_train", "C1-o"),
                           ("ours_forward", "C0--s"), ("theirs_forward", "C1--s")):
            ms = [1e3 * r["pairs"][name]["times"][key]["median_s"] for r in results]
            ax.plot(sizes, ms, style, label=key.replace("theirs", "keras.applications"))
        ax.set(title=name, xlabel="input size (square)", ylabel="median ms per batch")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--output", required=True, help="JSON file to write")
    p.add_argument("--quick", action="store_true", help="tiny stand-ins: a smoke test")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=224, help="backbone input size")
    p.add_argument("--plot_sizes", type=int, nargs="*", default=[128, 160],
                   help="more backbone input sizes for the time-vs-size data (with --size)")
    p.add_argument("--plot", default=None, help="PNG of time vs size (needs --plot_sizes)")
    p.add_argument("--model_size", type=int, default=257, help="R50-D8 model input size")
    p.add_argument("--caa_sizes", type=int, nargs="*", default=[65, 129])
    p.add_argument("--caa_group", type=int, default=8, help="group size of the grouped form")
    p.add_argument("--ksac_size", type=int, default=33, help="feature size (OS8 of 257)")
    p.add_argument("--conv_shape", type=int, nargs=2, default=[64, 256],
                   help="size, channels of the 3x3 conv whose fwd+bwd rate is the peak")
    p.add_argument("--sections", nargs="*", default=["backbones", "car", "caa", "ksac", "mfu"])
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.batch, args.size, args.plot_sizes = 1, 1, 32, [40]
        args.model_size, args.caa_sizes, args.ksac_size, args.conv_shape = 33, [9], 5, [8, 8]
    return args


def run(args):
    keras.utils.set_random_seed(0)
    result = {"date": benchmark.utc_timestamp(),
              "command": " ".join(sys.argv), "quick": args.quick, "settings": vars(args),
              "machine": benchmark.machine_info(), "targets": TARGETS}
    sections = {
        "backbones": lambda: section_backbones(args.quick, args.size, args.batch, args.repeats),
        "car": lambda: section_car(args.quick, args.model_size, args.batch, args.repeats),
        "caa": lambda: section_caa(args.quick, args.caa_sizes, args.caa_group, args.repeats),
        "ksac": lambda: section_ksac(args.quick, args.ksac_size, args.batch, args.repeats),
        "dilated": lambda: section_dilated(args.quick, args.batch, args.repeats),
        "mfu": lambda: section_mfu(args.quick, args.model_size, args.batch, args.repeats,
                                   args.conv_shape),
    }
    for name in args.sections:
        start = time.perf_counter()
        result[name] = sections[name]()
        print(f"{name} ({time.perf_counter() - start:.0f} s): {summary(name, result[name])}",
              flush=True)
    if args.plot_sizes and "backbones" in args.sections:
        result["sizes"] = [{"size": s, "pairs": result["backbones"] if s == args.size else
                            section_backbones(args.quick, s, args.batch, args.repeats)}
                           for s in sorted(set(args.plot_sizes) | {args.size})]
        if args.plot:
            plot_sizes(result["sizes"], args.plot)
    result["machine"]["load_average_end"] = list(os.getloadavg())
    return result


def summary(name, section):
    """One line of the section's ratios."""
    if name == "backbones":
        return "; ".join(f"{k} forward {v['ratio_forward']:.3f}, train {v['ratio_train']:.3f}"
                         for k, v in section.items())
    if name == "dilated":
        return "; ".join(f"{k}: phase / keras {v['ratio_phase']:.2f}, taps / keras "
                         f"{v['ratio_taps']:.2f} ({v['chosen']} chosen)"
                         for k, v in section.items())
    if name == "car":
        return f"with / without CAR, train {section['ratio_train']:.3f}"
    if name == "caa":
        return "; ".join(f"{k}x{k} closed / grouped: time {v['ratio_time']:.3f}, memory "
                         f"{v['ratio_memory']:.3f}" for k, v in section.items())
    if name == "ksac":
        ksac, aspp = section["ksac"], section["aspp"]
        return (f"KSAC / ASPP: params {ksac['params'] / aspp['params']:.3f}, MACs "
                f"{ksac['macs_per_image'] / aspp['macs_per_image']:.3f}, "
                f"train {section['ratio_train']:.3f}")
    return (f"MFU after {section['mfu_after']:.3f}, with Keras's batch norm "
            f"{section['mfu_keras_bn']:.3f}, before {section['mfu_before']:.3f} (speed-up "
            f"{section['speedup']:.2f}x, of which the fused batch norm "
            f"{section['speedup_fused_bn']:.2f}x)")


def main(argv=None):
    args = parse_args(argv)
    result = run(args)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
