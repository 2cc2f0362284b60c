"""Input pipeline throughput: the training input vs decode-only, on the same records.

    python benchmarks/input_pipeline.py [--data_dir=../shared/datasets/camvid] \
        [--dataset=camvid] [--crop=512] [--batch_size=8] [--images=1500]

Converts the dataset into a temporary folder first (or uses --converted_dir), then measures
(alternating, --repeats times; best and median) images/s of
  decode-only       read records, decode image + label (uint8), batch;
  decode+normalise  the same plus float32 cast and normalisation (reference point);
  training input    `build_dataset(..., resample="device")`, what the trainer reads:
                    random view (scale 0.5..2.0, crop, flip, brightness), only the
                    window decoded, batch of uint8 windows + sampling positions;
  host pipeline     `build_dataset` training with `resample="host"`: the same views
                    resampled, padded, normalised on the host (float32 crops).
and the cost of the step that the trainer runs on the accelerator for the device input
(`resample_views` on a batch, a `tf.function`, here on the CPU: ms per image).
All use parallel map with AUTOTUNE, the same `deterministic` setting (--deterministic)
and one thread per op (`max_intra_op_parallelism=1`).
Besides wall-clock images/s it prints images per CPU-second of the process (all threads),
which is stable on a machine shared with other jobs: on an idle machine the wall-clock
ratio approaches the CPU ratio.
"""

import os
import shutil
import sys
import tempfile
import time

from absl import app, flags

flags.DEFINE_string("data_dir", os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                             "datasets", "camvid"), "Raw dataset folder.")
flags.DEFINE_string("dataset", "camvid", "Dataset name of --data_dir.")
flags.DEFINE_string("converted_dir", None, "Use these converted records instead of converting.")
flags.DEFINE_integer("crop", 512, "Training crop size (square).")
flags.DEFINE_integer("batch_size", 8, "Batch size.")
flags.DEFINE_integer("images", 1500, "Images timed per measurement (after warm-up).")
flags.DEFINE_integer("repeats", 3, "Measurements per pipeline (best and median are reported).")
flags.DEFINE_bool("photometric", False, "Add photometric distortion to the training pipelines.")
flags.DEFINE_bool("deterministic", False, "Deterministic element order in the training pipelines.")
FLAGS = flags.FLAGS


def _throughput(ds, batch_size, images):
    """(images per wall second, images per CPU second of this process)."""
    import tensorflow as tf

    it = iter(ds)
    for _ in range(3):  # warm-up: autotuning and file open
        next(it)
    n_batches = max(1, images // batch_size)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(n_batches):
        batch = next(it)
    _ = tf.nest.flatten(batch)[0].numpy()
    n = n_batches * batch_size
    return n / (time.perf_counter() - start), n / (time.process_time() - cpu)


def _median(values):
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def decode_only(data_dir, split, batch_size, to_float=False, deterministic=False):
    import tensorflow as tf

    from iseg.datasets import info as info_lib
    from iseg.datasets import tfrecord

    files = info_lib.list_shards(data_dir, split)
    decode = tfrecord.make_decoder("example")

    def fn(record):
        ex = decode(record)
        if to_float:  # the least a model input needs: float32, normalised
            return tf.cast(ex["image"], tf.float32) / 127.5 - 1.0, tf.cast(ex["label"], tf.int32)
        return ex["image"], ex["label"]

    # the same parallelism settings as build_dataset's training pipeline
    ds = tf.data.TFRecordDataset(files).repeat().map(fn, num_parallel_calls=tf.data.AUTOTUNE,
                                                     deterministic=deterministic)
    ds = ds.padded_batch(batch_size).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = deterministic
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)


def _device_step_ms(data, crop):
    """Median CPU milliseconds per image of `resample_views` on a batch of views."""
    import tensorflow as tf

    from iseg.datasets.augment import AugmentOptions
    from iseg.datasets.pipeline import build_dataset, resample_views

    ds = build_dataset(data, "train", training=True, batch_size=FLAGS.batch_size,
                       crop_size=crop, augment=AugmentOptions(photometric=FLAGS.photometric),
                       seed=1, resample="device")
    step = tf.function(lambda views: resample_views(views)[0])
    times = []
    for views in ds.take(FLAGS.repeats + 1):
        start = time.perf_counter()
        step(views).numpy()
        times.append(time.perf_counter() - start)
    return 1000 * _median(times[1:]) / FLAGS.batch_size  # the first call traces


def main(argv):
    del argv
    import tensorflow as tf

    from iseg.datasets.augment import AugmentOptions
    from iseg.datasets.convert import convert_dataset
    from iseg.datasets.pipeline import build_dataset

    tmp = None
    data = FLAGS.converted_dir
    if data is None:
        tmp = tempfile.mkdtemp(prefix="iseg-bench-")
        data = os.path.join(tmp, FLAGS.dataset)
        t = time.perf_counter()
        info = convert_dataset(FLAGS.dataset, FLAGS.data_dir, data, splits=["train"],
                               progress=False)
        print(f"converted {info['num_examples']['train']} images in "
              f"{time.perf_counter() - t:.1f} s ({os.cpu_count()} CPUs)")
    try:
        crop = (FLAGS.crop, FLAGS.crop)
        names = ("decode-only", "decode+normalise", "training input", "host pipeline")
        runs = {name: [] for name in names}
        load = [os.getloadavg()[0]]
        for _ in range(FLAGS.repeats):  # alternate, so all see the same machine load
            for name in names:
                if name == "decode-only":
                    ds = decode_only(data, "train", FLAGS.batch_size,
                                     deterministic=FLAGS.deterministic)
                elif name == "decode+normalise":
                    ds = decode_only(data, "train", FLAGS.batch_size, to_float=True,
                                     deterministic=FLAGS.deterministic)
                else:
                    ds = build_dataset(data, "train", training=True,
                                       batch_size=FLAGS.batch_size, crop_size=crop,
                                       augment=AugmentOptions(photometric=FLAGS.photometric),
                                       seed=0,
                                       deterministic=FLAGS.deterministic,
                                       resample="device" if name == "training input"
                                       else "host")
                wall, per_cpu = _throughput(ds, FLAGS.batch_size, FLAGS.images)
                print(f"  {name}: {wall:.1f} images/s, {per_cpu:.1f} images per CPU-second")
                runs[name].append((wall, per_cpu))
                load.append(os.getloadavg()[0])
        print(f"tensorflow {tf.__version__}, {os.cpu_count()} CPUs, crop {FLAGS.crop}, "
              f"batch {FLAGS.batch_size}, photometric={FLAGS.photometric}, "
              f"deterministic={FLAGS.deterministic}, {FLAGS.repeats} repeats, "
              f"load average {min(load):.1f}..{max(load):.1f}")
        print(f"{'':>16}  {'images/s best':>13} {'median':>7}  {'images/CPU-s best':>17} "
              f"{'median':>7}")
        summary = {}
        for name in names:
            wall = sorted(r[0] for r in runs[name])
            cpu = sorted(r[1] for r in runs[name])
            summary[name] = (wall[-1], _median(wall), cpu[-1], _median(cpu))
            print(f"{name:>16}  {wall[-1]:13.1f} {_median(wall):7.1f}  {cpu[-1]:17.1f} "
                  f"{_median(cpu):7.1f}")
        dec = summary["decode-only"]
        for name, label in (("training input", "input / decode"),
                            ("host pipeline", "host / decode")):
            ratio = [100 * f / d for f, d in zip(summary[name], dec)]
            print(f"{label:>16}  {ratio[0]:12.0f}% {ratio[1]:6.0f}%  {ratio[2]:16.0f}% "
                  f"{ratio[3]:6.0f}%   (target >= 70%)")
        ms = _device_step_ms(data, crop)
        print(f"resample_views on this CPU (the trainer runs it on the accelerator): "
              f"{ms:.2f} ms per image (median of {FLAGS.repeats} batches of "
              f"{FLAGS.batch_size})")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main)
