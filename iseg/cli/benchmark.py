"""`python -m iseg.cli.benchmark --model=NAME [--flagfile=CFG] [--output=FILE.json]`

Parameters, analytic FLOPs, training-step and inference speed and peak memory of a model
at --crop_size and --batch_size (training flags, defaults 513,513 and 16; a training flag
file gives its model, crop and batch), measured against this machine's dense throughput in
the same run. Example:

    python -m iseg.cli.benchmark --model=deeplabv3_resnet50_d8 --crop_size=512 \\
        --batch_size=2 --repeats=5 --output=bench.json

Times: median and range of --repeats rounds after --warmup untimed calls (tracing); each
round times the training step (`train_on_batch`, SGD with momentum 0.9), inference
(`predict_on_batch`) and the machine's references once, interleaved: a float32 matmul and
a 3x3 convolution forward + backward, run by TensorFlow. FLOPs are 2 x multiply-accumulates
(see iseg.benchmark for what is counted); a training step counts 3 x the training forward
pass (backward = 2 x forward). MFU = achieved FLOP/s / a reference's FLOP/s: the median of
the per-round ratios, so that a drift in the machine's speed cancels. Memory: peak process
RSS of each phase's warm-up calls. The whole path runs on TensorFlow; --backends adds the
model timings on JAX / PyTorch (one subprocess each, against the references' medians).
"""

import json
import math
import os
import subprocess
import sys
import tempfile

from iseg.cli import flags as flags_lib

FLAGS = flags_lib.FLAGS
PROGRAM = "iseg.cli.benchmark"
BACKENDS = ("tensorflow", "jax", "torch")
DEFAULT_CLASSES = 21


def define_benchmark_flags():
    flags_lib.define_train_flags()  # the training flag files are accepted
    flags_lib._group("Benchmark")
    d = flags_lib._define_once
    d("integer", "num_classes", 0, f"Classes (0: those of --dataset / --data_dir, else "
      f"{DEFAULT_CLASSES}).")
    d("integer", "repeats", 5, "Timed runs of each measurement.")
    d("integer", "warmup", 1, "Untimed runs before them (tracing, compilation).")
    d("list", "backends", list(BACKENDS), "Keras backends the model is timed on "
      f"({', '.join(BACKENDS)}); FLOPs and the machine's rates always use TensorFlow.")
    d("integer", "matmul_size", 2048, "n of the n x n float32 matmul whose rate is measured.")
    d("list", "conv_shape", ["64", "256"], "size,channels of the 3x3 convolution (size x "
      "size x channels -> channels) whose forward + backward rate is measured.")
    d("string", "output", None, "Write the results as JSON to this file.")
    d("bool", "model_only", False, "Only time the model on the current KERAS_BACKEND and "
      "write that part (used for the other backends' subprocesses).")


def _check():
    unknown = [b for b in FLAGS.backends if b not in BACKENDS]
    if unknown:
        raise flags_lib.CliError(f"unknown --backends={','.join(unknown)}; valid: "
                                 f"{', '.join(BACKENDS)}")
    if FLAGS.repeats < 1 or FLAGS.warmup < 0:
        raise flags_lib.CliError(f"--repeats={FLAGS.repeats} must be >= 1 and "
                                 f"--warmup={FLAGS.warmup} >= 0")
    if FLAGS.model_only and not FLAGS.output:
        raise flags_lib.CliError("--model_only writes its timings to --output: give one")
    if not FLAGS.model_only:
        if "keras" in sys.modules and os.environ.get("KERAS_BACKEND") not in (
                None, "tensorflow"):
            raise flags_lib.CliError("the benchmark runs on the TensorFlow backend, not "
                                     f"KERAS_BACKEND={os.environ['KERAS_BACKEND']}")
        os.environ["KERAS_BACKEND"] = "tensorflow"


def model_from_flags(argv):
    """(config, model, classes) from the flags; pretrained weights are not loaded."""
    import dataclasses

    import keras

    from iseg.training.config import DatasetMeta, build_model_from_config, dataset_meta

    cfg = dataclasses.replace(flags_lib.config_from_flags(argv), backbone_weights=None)
    classes = FLAGS.num_classes or (dataset_meta(cfg).num_classes if cfg.dataset or
                                    cfg.data_dir else DEFAULT_CLASSES)
    keras.utils.set_random_seed(cfg.seed)
    meta = DatasetMeta(num_classes=classes, class_names=[], palette=[])
    return cfg, build_model_from_config(cfg, meta), classes


def random_batch(cfg, classes):
    """(images float32 `[batch, h, w, 3]`, labels int32 `[batch, h, w]`): random NumPy data
    of the config's batch size and crop, seeded by its seed."""
    import numpy as np

    rng = np.random.default_rng(cfg.seed)
    shape = (cfg.batch_size, *cfg.crop_size)
    images = rng.normal(size=(*shape, 3)).astype("float32")
    return images, rng.integers(0, classes, shape).astype("int32")


def _time_here(cfg, model, classes, references=None):
    """The model's timings on the current Keras backend (`references` timed in the same
    rounds: `iseg.benchmark.time_model`)."""
    import keras

    from iseg.benchmark import time_model

    images, labels = random_batch(cfg, classes)
    backend = keras.backend.backend()
    library = __import__(backend)
    return {"version": library.__version__,
            **time_model(model, images, labels, FLAGS.repeats, FLAGS.warmup, references)}


def _time_in_subprocess(argv, backend):
    """The model's timings on `backend`, measured by this tool in a subprocess."""
    import importlib.util

    if importlib.util.find_spec(backend) is None:
        return {"skipped": f"{backend} is not installed"}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "part.json")
        cmd = [sys.executable, "-m", PROGRAM, *argv[1:], "--model_only", f"--output={out}"]
        env = dict(os.environ, KERAS_BACKEND=backend)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise flags_lib.CliError(f"the {backend} run failed: {last}")
        with open(out, encoding="utf-8") as f:
            return json.load(f)


MFU_METHOD = ("achieved FLOP/s / the reference's FLOP/s. TensorFlow: the median over "
              "rounds of that ratio within each round (the model's phases and the "
              "references are timed in the same rounds, interleaved); the other backends "
              "(timed in subprocesses): the model's median against the reference's median")


def _utilisation(timings, flops, peaks, batch, interleaved):
    """Achieved FLOP/s of each phase (at its median) and its ratio to each measured peak
    rate (MFU_METHOD; `interleaved`: the phases and `peaks` were timed in the same rounds)."""
    from iseg.benchmark import utilisation

    runs = (lambda t: t["runs_s"]) if interleaved else (lambda t: [t["median_s"]])
    for phase, per_image in (("train_step", flops["training_step_flops_per_image"]),
                             ("inference", flops["inference_flops_per_image"])):
        t = timings[phase]
        t["achieved_flop_per_s"] = per_image * t["images_per_s"]
        t["mfu"] = {name: utilisation(per_image * batch, runs(t), peak["flops"], runs(peak))
                    for name, peak in peaks.items()}


def _flops(model, cfg):
    from iseg.benchmark import model_macs

    shape = (*cfg.crop_size, 3)
    inference, training = model_macs(model, shape), model_macs(model, shape, training=True)
    return {"unit": "FLOPs = 2 x multiply-accumulates (MACs); training step = 3 x the "
            "training forward pass", "inference_macs_per_image": inference,
            "inference_flops_per_image": 2 * inference,
            "training_forward_macs_per_image": training,
            "training_step_flops_per_image": 3 * 2 * training}


def _write(path, result):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)


def _measure(argv, cfg, model, classes):
    """({backend: timings}, {name: the machine's reference rate}); on TensorFlow the
    references are timed in the same rounds as the model."""
    from iseg import benchmark

    try:
        size, channels = (int(v) for v in FLAGS.conv_shape)
    except ValueError:
        raise flags_lib.CliError(f"--conv_shape={','.join(FLAGS.conv_shape)}: expected "
                                 "size,channels") from None
    references = benchmark.machine_references(FLAGS.matmul_size, size, channels)
    calls = {name: fn for name, (fn, _) in references.items()}
    if "tensorflow" in FLAGS.backends:
        here = _time_here(cfg, model, classes, calls)
        times = here.pop("references")
    else:
        here, times = None, benchmark.time_rounds(calls, FLAGS.repeats, FLAGS.warmup)
    peaks = {name: benchmark.rate(times[name], f) for name, (_, f) in references.items()}
    return ({b: here if b == "tensorflow" else _time_in_subprocess(argv, b)
             for b in FLAGS.backends}, peaks)


def main(argv):
    from iseg import benchmark

    cfg, model, classes = model_from_flags(argv)
    if FLAGS.model_only:
        timings = _time_here(cfg, model, classes)
        _write(FLAGS.output, timings)
        return timings
    backends, peaks = _measure(argv, cfg, model, classes)
    flops = _flops(model, cfg)
    for name, part in backends.items():
        if "skipped" not in part:
            _utilisation(part, flops, peaks, cfg.batch_size, name == "tensorflow")
    result = {
        "date": benchmark.utc_timestamp(),
        "command": [PROGRAM, *argv[1:]],
        "flags": {n: FLAGS[n].value for n, group in flags_lib.FLAG_GROUPS.items()
                  if n in FLAGS and (FLAGS[n].present or group in ("Model", "Benchmark"))},
        "machine": benchmark.machine_info(),
        "model": {"name": cfg.model or f"{cfg.head}_{cfg.backbone}",
                  "params": model.count_params(),
                  "trainable_params": sum(math.prod(w.shape) for w in model.trainable_weights),
                  "num_classes": classes, "input_shape": [*cfg.crop_size, 3],
                  "batch_size": cfg.batch_size},
        "flops": flops, "peak": peaks, "mfu": MFU_METHOD,
        "memory": benchmark.PEAK_RSS_METHOD,
        "backends": backends,
    }
    print(summary(result), flush=True)
    if FLAGS.output:
        _write(FLAGS.output, result)
    return result


def summary(result):
    """The results as a few lines of text."""
    m, f, peaks = result["model"], result["flops"], result["peak"]
    lines = [f"{m['name']}: {m['params'] / 1e6:.2f}M parameters, "
             f"{f['inference_flops_per_image'] / 1e9:.2f} GFLOPs per {m['input_shape'][0]}x"
             f"{m['input_shape'][1]} image (inference; 2 x MACs), batch {m['batch_size']}",
             f"machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, "
             f"oneDNN {result['machine']['onednn']}, load average "
             f"{result['machine']['load_average']}"]
    lines += [f"peak {name}: {p['flop_per_s'] / 1e9:.1f} GFLOP/s" for name, p in peaks.items()]
    for backend, part in result["backends"].items():
        if "skipped" in part:
            lines.append(f"{backend}: skipped ({part['skipped']})")
            continue
        for phase in ("train_step", "inference"):
            t = part[phase]
            mfu = ", ".join(f"{v:.2f} of {k}" for k, v in t["mfu"].items())
            lines.append(
                f"{backend} {phase}: {t['median_s'] * 1e3:.1f} ms median "
                f"({t['min_s'] * 1e3:.1f}-{t['max_s'] * 1e3:.1f}), "
                f"{t['images_per_s']:.2f} images/s, peak RSS "
                f"{t['peak_rss_bytes'] / 2**20:.0f} MiB, MFU {mfu}")
    return "\n".join(lines)


def run(argv=None):
    return flags_lib.run_cli(PROGRAM, define_benchmark_flags, main, argv, doc=__doc__,
                             help_groups=("General", "Model", "Benchmark"), check=_check)


if __name__ == "__main__":
    run()
