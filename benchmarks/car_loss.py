"""CAR loss cost: the segment-sum implementation (`iseg.losses.car`) vs a one-hot-matmul one.

Times forward + backward (gradient w.r.t. the features) of the three CAR terms, in a
`tf.function`, and measures the peak memory the step allocates above its inputs with TF's
BFC allocator statistics on CPU (`TF_CPU_ALLOCATOR_USE_BFC=true`, set below before TF is
imported; `tf.config.experimental.get_memory_info("CPU:0")` reports zeros without it).

    python benchmarks/car_loss.py                       # 2x65x65x512, K = 59 and 171
    python benchmarks/car_loss.py --shape 2,33,33,256 --classes 59 --repeats 3

With `--model_step` it instead times whole training steps (`train_on_batch`, SGD) of a zoo
model with and without CAR (`--model nl_resnet50_d8` vs `nl_resnet50_d8_car`, random
weights, K = first of `--classes`):

    python benchmarks/car_loss.py --model_step --model_size 513 --model_batch 2
"""

import os

os.environ["TF_CPU_ALLOCATOR_USE_BFC"] = "true"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import time  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from iseg.losses.car import car_losses  # noqa: E402

flags.DEFINE_string("shape", "2,65,65,512", "features N,H,W,C")
flags.DEFINE_list("classes", ["59", "171"], "numbers of classes K")
flags.DEFINE_integer("repeats", 5, "timed runs per case (median reported)")
flags.DEFINE_float("ignore_fraction", 0.1, "fraction of ignored pixels")
flags.DEFINE_bool("model_step", False, "time training steps of --model with and without CAR")
flags.DEFINE_string("model", "nl_resnet50_d8", "zoo model name (without _car)")
flags.DEFINE_integer("model_size", 129, "square input size of --model_step")
flags.DEFINE_integer("model_batch", 2, "batch size of --model_step")
FLAGS = flags.FLAGS

IGNORE = 255


def one_hot_losses(features, labels, k):
    """The released formulation: one-hot [N, P, K] masks and matmuls."""
    n, h, w, c = features.shape
    f = tf.reshape(features, (n, h * w, c))
    y = tf.reshape(labels, (n, h * w))
    one_hot = tf.one_hot(y, k)
    mask = tf.cast(tf.not_equal(y, IGNORE), tf.float32)[..., None]
    sums = tf.reduce_sum(tf.matmul(one_hot, f, transpose_a=True), axis=0)
    mu = tf.math.divide_no_nan(sums, tf.reduce_sum(one_hot, axis=(0, 1))[:, None])
    eps = 1e-7
    same = tf.stop_gradient(tf.matmul(one_hot, tf.broadcast_to(mu, (n, k, c))))
    intra = tf.maximum(tf.square(tf.reduce_mean(tf.abs(same - f) * mask)), 1e-5)
    rel = tf.nn.softmax(tf.matmul(mu, tf.stop_gradient(mu), transpose_b=True) / np.sqrt(c))
    rel = rel * (1 - tf.eye(k))
    thr = 0.5 / (k - 1)
    rel = tf.where(rel > thr, rel - thr, 0.0)
    c2c = tf.square(tf.reduce_mean(tf.clip_by_value(tf.reduce_sum(rel, -1), eps, 1 - eps)))
    mu_sg = tf.stop_gradient(mu)
    other = 1.0 - one_hot
    energy = tf.matmul(f, mu_sg, transpose_b=True) * other
    energy += tf.reduce_sum(mu_sg * mu_sg, -1)[None, None, :] * one_hot
    rel = tf.nn.softmax(energy / np.sqrt(c), axis=-1) * other
    thr = 0.25 / (k - 1)
    rel = tf.where(rel > thr, rel - thr, 0.0)
    c2p = tf.square(tf.reduce_mean(tf.clip_by_value(tf.reduce_sum(rel, -1), eps, 1 - eps)))
    return {"intra": intra, "inter_c2c": c2c, "inter_c2p": c2p}


def measure(impl, features, labels, k, repeats):
    @tf.function
    def step(f):
        with tf.GradientTape() as tape:
            tape.watch(f)
            losses = impl(f, labels, k)
            total = losses["intra"] + losses["inter_c2c"] + losses["inter_c2p"]
        return total, tape.gradient(total, f)

    total, grad = step(features)  # trace + warm up
    _ = grad.numpy()
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    tf.config.experimental.reset_memory_stats("CPU:0")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        total, grad = step(features)
        _ = grad.numpy()
        times.append(time.perf_counter() - start)
    peak = tf.config.experimental.get_memory_info("CPU:0")["peak"] - before
    return float(total), grad.numpy(), float(np.median(times)), peak


def model_steps():
    import keras

    from iseg.models.builder import build_model_from_name

    k, size, batch = int(FLAGS.classes[0]), FLAGS.model_size, FLAGS.model_batch
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, size=(batch, size, size, 3)).astype("float32")
    labels = rng.integers(0, k, size=(batch, size, size)).astype("int32")
    print(f"training step (train_on_batch, SGD), input {batch}x{size}x{size}, K={k}, "
          f"median of {FLAGS.repeats} interleaved steps after 1 warm-up step, "
          f"{os.cpu_count()} CPU cores")
    print("| model | step time (s) |")
    print("|---|---|")
    names = (FLAGS.model, FLAGS.model + " + CAR")
    models = {}
    for name, car in zip(names, (None, {})):
        models[name] = build_model_from_name(FLAGS.model, k, input_shape=(size, size, 3),
                                             car=car)
        models[name].compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
        models[name].train_on_batch(images, labels)  # trace + warm up
    runs = {name: [] for name in names}
    for _ in range(FLAGS.repeats):  # interleaved, so that load changes hit both alike
        for name in names:
            start = time.perf_counter()
            models[name].train_on_batch(images, labels)
            runs[name].append(time.perf_counter() - start)
    times = {name: float(np.median(runs[name])) for name in names}
    for name in names:
        print(f"| {name} | {times[name]:.3f} |", flush=True)
    base, car = times[names[0]], times[names[1]]
    print(f"CAR overhead: {100 * (car / base - 1):+.1f} %")


def main(argv):
    del argv
    if FLAGS.model_step:
        model_steps()
        return
    n, h, w, c = (int(v) for v in FLAGS.shape.split(","))
    rng = np.random.default_rng(0)
    print(f"features {n}x{h}x{w}x{c} float32, {FLAGS.ignore_fraction:.0%} ignored, "
          f"forward+backward, median of {FLAGS.repeats}, TF {tf.__version__}, "
          f"{os.cpu_count()} CPU cores")
    print("| K | implementation | time (ms) | peak extra memory (MiB) "
          "| largest [pixels x K] f32 (MiB) |")
    print("|---|---|---|---|---|")
    for k in (int(v) for v in FLAGS.classes):
        labels = rng.integers(0, k, size=(n, h, w))
        labels[rng.random((n, h, w)) < FLAGS.ignore_fraction] = IGNORE
        labels = tf.constant(labels, tf.int32)
        features = tf.constant(rng.normal(size=(n, h, w, c)).astype("float32"))
        pk = n * h * w * k * 4 / 2**20
        results = {}
        for name, impl in (("segment_sum", car_losses), ("one_hot_matmul", one_hot_losses)):
            results[name] = measure(impl, features, labels, k, FLAGS.repeats)
            _, _, t, peak = results[name]
            print(f"| {k} | {name} | {t * 1e3:.1f} | {peak / 2**20:.1f} | {pk:.1f} |", flush=True)
        (a, ga, _, _), (b, gb, _, _) = results["segment_sum"], results["one_hot_matmul"]
        np.testing.assert_allclose(a, b, rtol=1e-4)
        np.testing.assert_allclose(ga, gb, atol=1e-4 * np.abs(gb).max())


if __name__ == "__main__":
    app.run(main)
