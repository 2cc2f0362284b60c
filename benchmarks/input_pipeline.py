"""Input pipeline throughput: full training pipeline vs decode-only, on the same records.

    python benchmarks/input_pipeline.py [--data_dir=../shared/datasets/camvid] \
        [--dataset=camvid] [--crop=512] [--batch_size=8] [--images=1500]

Converts the dataset into a temporary folder first (or uses --converted_dir), then measures
(alternating, best of --repeats) images/s of
  decode-only       read records, decode image + label (uint8), batch;
  decode+normalise  the same plus float32 cast and normalisation (reference point);
  full pipeline     `iseg.datasets.pipeline.build_dataset` training: random scale
                    0.5..2.0, pad, crop, flip, brightness, normalise, batch.
All use parallel map with AUTOTUNE.
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
flags.DEFINE_integer("repeats", 3, "Measurements per pipeline (the best is reported).")
flags.DEFINE_bool("photometric", False, "Add photometric distortion to the full pipeline.")
flags.DEFINE_bool("deterministic", False, "Deterministic element order in the full pipeline.")
FLAGS = flags.FLAGS


def _throughput(ds, batch_size, images):
    """(images per wall second, images per CPU second of this process)."""
    it = iter(ds)
    for _ in range(3):  # warm-up: autotuning and file open
        next(it)
    n_batches = max(1, images // batch_size)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(n_batches):
        batch = next(it)
    _ = batch[0].numpy()
    n = n_batches * batch_size
    return n / (time.perf_counter() - start), n / (time.process_time() - cpu)


def decode_only(data_dir, split, batch_size, to_float=False):
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

    ds = tf.data.TFRecordDataset(files).repeat().map(fn, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.padded_batch(batch_size).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.threading.max_intra_op_parallelism = 1  # same setting as build_dataset
    return ds.with_options(options)


def main(argv):
    del argv
    import tensorflow as tf

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
        results = {"decode-only": [0.0, 0.0], "decode+normalise": [0.0, 0.0],
                   "full pipeline": [0.0, 0.0]}
        for _ in range(FLAGS.repeats):  # alternate, so all see the same machine load
            for name, best in results.items():
                if name == "decode-only":
                    ds = decode_only(data, "train", FLAGS.batch_size)
                elif name == "decode+normalise":
                    ds = decode_only(data, "train", FLAGS.batch_size, to_float=True)
                else:
                    ds = build_dataset(data, "train", training=True,
                                       batch_size=FLAGS.batch_size, crop_size=crop,
                                       photometric=FLAGS.photometric, seed=0,
                                       deterministic=FLAGS.deterministic)
                wall, per_cpu = _throughput(ds, FLAGS.batch_size, FLAGS.images)
                print(f"  {name}: {wall:.1f} images/s, {per_cpu:.1f} images per CPU-second")
                best[0], best[1] = max(best[0], wall), max(best[1], per_cpu)
        dec, full = results["decode-only"], results["full pipeline"]
        print(f"tensorflow {tf.__version__}, {os.cpu_count()} CPUs, crop {FLAGS.crop}, "
              f"batch {FLAGS.batch_size}, photometric={FLAGS.photometric}, "
              f"deterministic={FLAGS.deterministic} (best of "
              f"{FLAGS.repeats})")
        print(f"{'':>16}  {'images/s':>9}  {'images/CPU-s':>12}")
        for name, (wall, per_cpu) in results.items():
            print(f"{name:>16}  {wall:9.1f}  {per_cpu:12.1f}")
        ratio = (100 * full[0] / dec[0], 100 * full[1] / dec[1])
        print(f"{'full / decode':>16}  {ratio[0]:8.0f}%  {ratio[1]:11.0f}%"
              "   (target >= 70%)")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main)
