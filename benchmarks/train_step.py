"""Time one training step (forward, loss, backward, SGD update) of a zoo model.

    python benchmarks/train_step.py                      # DeepLabV3 R50-D8, batch 2, 512x512
    python benchmarks/train_step.py --model=fcn_resnet50_d8 --batch=4 --size=513 --steps=5

Runs the same step as the trainer (model(x, training=True) -> model.compute_loss -> SGD
with momentum) inside one tf.function, on whatever device TensorFlow picks (CPU here),
after `--warmup` untimed steps (tracing). Prints per-step times and their median.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from iseg.cli.usage import tensorflow_defaults  # noqa: E402

tensorflow_defaults()  # as the iseg tools run TensorFlow (its BFC CPU allocator)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from iseg.benchmark import make_train_step, segmentation_loss  # noqa: E402
from iseg.models import build_model_from_name  # noqa: E402
from iseg.training.optimizers import build_optimizer, prepare_optimizer  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="deeplabv3_resnet50_d8")
    p.add_argument("--num_classes", type=int, default=59)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--mixed_precision", choices=["none", "float16", "bfloat16"],
                   default="none")
    args = p.parse_args()
    if args.mixed_precision != "none":
        keras.config.set_dtype_policy(f"mixed_{args.mixed_precision}")
    keras.utils.set_random_seed(0)
    model = build_model_from_name(args.model, args.num_classes)
    opt = build_optimizer("sgd", 0.01, momentum=0.9,
                          loss_scale=args.mixed_precision == "float16")
    prepare_optimizer(opt, model)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(-1, 1, (args.batch, args.size, args.size, 3)), tf.float32)
    y = tf.constant(rng.integers(0, args.num_classes, (args.batch, args.size, args.size)),
                    tf.int32)

    step = make_train_step(model, opt, segmentation_loss)
    params = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    print(f"{args.model}: {params / 1e6:.1f}M parameters, batch {args.batch}, "
          f"{args.size}x{args.size}, {args.mixed_precision} precision, "
          f"devices {[d.name for d in tf.config.list_logical_devices()]}, "
          f"{os.cpu_count()} CPUs")
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        float(step(x, y))
    print(f"warm-up (tracing + {args.warmup} step): {time.perf_counter() - t0:.1f} s")
    times = []
    for i in range(args.steps):
        t0 = time.perf_counter()
        loss = float(step(x, y))
        times.append(time.perf_counter() - t0)
        print(f"step {i + 1}: {times[-1]:.2f} s (loss {loss:.3f})")
    print(f"median step time: {statistics.median(times):.2f} s "
          f"({args.batch / statistics.median(times):.2f} images/s)")


if __name__ == "__main__":
    main()
