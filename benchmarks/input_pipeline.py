"""Input pipeline throughput: full training pipeline vs decode-only, on the same records.

    python benchmarks/input_pipeline.py [--data_dir=../shared/datasets/camvid] \
        [--dataset=camvid] [--crop=512] [--batch_size=8] [--images=1500]

Converts the dataset into a temporary folder first (or uses --converted_dir), then measures
(alternating, best of --repeats) images/s of (a) decode-only: read records, decode image + label (uint8), batch; (b) the full
training pipeline of `iseg.datasets.pipeline.build_dataset` (random scale 0.5..2.0, pad,
crop, flip, brightness, normalise, batch). Both use parallel map with AUTOTUNE.
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
FLAGS = flags.FLAGS


def _throughput(ds, batch_size, images):
    it = iter(ds)
    for _ in range(3):  # warm-up: autotuning and file open
        next(it)
    n_batches = max(1, images // batch_size)
    start = time.perf_counter()
    for _ in range(n_batches):
        batch = next(it)
    _ = batch[0].numpy()
    return n_batches * batch_size / (time.perf_counter() - start)


def decode_only(data_dir, split, batch_size):
    import tensorflow as tf

    from iseg.datasets import info as info_lib
    from iseg.datasets import tfrecord

    files = info_lib.list_shards(data_dir, split)
    decode = tfrecord.make_decoder("example")

    def fn(record):
        ex = decode(record)
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
        results = {"decode-only": 0.0, "full pipeline": 0.0}
        for _ in range(FLAGS.repeats):  # alternate, so both see the same machine load
            for name in results:
                if name == "decode-only":
                    ds = decode_only(data, "train", FLAGS.batch_size)
                else:
                    ds = build_dataset(data, "train", training=True,
                                       batch_size=FLAGS.batch_size, crop_size=crop,
                                       photometric=FLAGS.photometric, seed=0)
                speed = _throughput(ds, FLAGS.batch_size, FLAGS.images)
                print(f"  {name}: {speed:.1f} images/s")
                results[name] = max(results[name], speed)
        ratio = results["full pipeline"] / results["decode-only"]
        print(f"tensorflow {tf.__version__}, {os.cpu_count()} CPUs, crop {FLAGS.crop}, "
              f"batch {FLAGS.batch_size}, photometric={FLAGS.photometric}")
        print(f"{'decode-only':>15}: {results['decode-only']:8.1f} images/s")
        print(f"{'full pipeline':>15}: {results['full pipeline']:8.1f} images/s "
              f"({100 * ratio:.0f}% of decode-only; target >= 70%)")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main)
