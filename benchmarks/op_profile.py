"""Where a training step's time goes: TensorFlow's profiler over a few steps of the
self-attention R50-D8 (+ CAR) model, thread time summed by op type.

    python benchmarks/op_profile.py --size=257 --batch=2 --output=profile.json
    python benchmarks/op_profile.py --variant=keras_bn     # with Keras's unfused batch norm
    python benchmarks/op_profile.py --quick --output=/tmp/p.json   # tiny stand-in, seconds
    python benchmarks/op_profile.py --flagfile=configs/camvid/fcn_r18_d8.cfg --steps=3

The step is `benchmarks/side_by_side.py`'s MFU step (`--variant`: after = the library
default, keras_bn = Keras's batch norm, before = Keras's dilated convolution and batch
norm), traced and run twice untimed, then profiled over `--steps` steps. With `--flagfile`
the model is that training flag file's (as `iseg.cli.benchmark` builds it: no pretrained
weights), at its crop size and batch, on random data. Each op's time is
the time of its kernel on the thread that ran it (TensorFlow's intra-op threads run one
kernel's shards in parallel, so the sum over threads can exceed the wall time); the
executor's own bookkeeping events are left out. With oneDNN on, TensorFlow's oneDNN kernels
show as `_Mkl...` op types.
"""

import argparse
import collections
import glob
import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from iseg.cli.usage import tensorflow_defaults  # noqa: E402

tensorflow_defaults()  # as the iseg tools run TensorFlow (its BFC CPU allocator)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tensorflow as tf  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

import side_by_side as sbs  # noqa: E402
from iseg import benchmark  # noqa: E402

# events of the executor around the kernels, not kernels
NOT_OPS = {"Process", "ExecutorDoneCallback", "ParallelFor", "ExecutorState::Process"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--size", type=int, default=257, help="input size (square)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=2, help="profiled steps (after 2 untimed)")
    p.add_argument("--no_car", action="store_true", help="the model without CAR")
    p.add_argument("--variant", choices=sorted(sbs.MFU_VARIANTS), default="after")
    p.add_argument("--top", type=int, default=25, help="op types printed")
    p.add_argument("--output", help="JSON file of every op type's time")
    p.add_argument("--quick", action="store_true", help="tiny stand-in model: a smoke test")
    p.add_argument("--flagfile", help="profile this training flag file's model at its crop "
                   "size and batch instead (--size, --batch, --no_car, --quick unused)")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.steps = 33, 1, 1
    if args.flagfile:  # the flag file's crop and batch
        args.size = args.batch = None
    return args


def op_times(logdir):
    """{op type: seconds} summed over the compute threads of the profile in `logdir`."""
    path = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))[-1]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    times = collections.Counter()
    for plane in space.planes:
        if not plane.name.startswith("/host:"):
            continue
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                op = plane.event_metadata[event.metadata_id].name.rsplit(":", 1)[-1]
                if op not in NOT_OPS:
                    times[op] += event.duration_ps * 1e-12
    return times


def flagfile_data_and_model(path):
    """(images, labels, model) of a training flag file: random data of its batch and crop."""
    from iseg.cli import benchmark as benchmark_cli
    from iseg.cli import flags as flags_lib

    benchmark_cli.define_benchmark_flags()
    argv = flags_lib.parse_flags(["op_profile", f"--flagfile={path}"], "op_profile")
    cfg, model, classes = benchmark_cli.model_from_flags(argv)
    images, labels = benchmark_cli.random_batch(cfg, classes)
    return tf.constant(images), tf.constant(labels), model


def profile(args):
    """{op type: seconds per step}, most expensive first."""
    if args.flagfile:
        x, y, model = flagfile_data_and_model(args.flagfile)
    else:
        x, y = sbs._seg_data(args.size, args.batch)
        model = sbs.seg_model(args.quick, car=not args.no_car)
    step = sbs._traced(benchmark.make_train_step(model, sbs._sgd(), benchmark.segmentation_loss),
                       x, y, *sbs.MFU_VARIANTS[args.variant])
    for _ in range(2):
        float(step(x, y))
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(args.steps):
            float(step(x, y))
        tf.profiler.experimental.stop()
        times = op_times(logdir)
    return {op: t / args.steps for op, t in times.most_common()}


def main(argv=None):
    args = parse_args(argv)
    per_step = profile(args)
    total = sum(per_step.values())
    what = args.flagfile or f"{args.size}x{args.size}, batch {args.batch}"
    print(f"{args.variant}, {what}: "
          f"{total:.2f} s of kernel thread time per step")
    for op, t in list(per_step.items())[:args.top]:
        print(f"  {op:<44} {1e3 * t:10.1f} ms {100 * t / total:6.1f} %")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump({"date": benchmark.utc_timestamp(), "settings": vars(args),
                       "machine": benchmark.machine_info(),
                       "seconds_per_step": per_step}, f, indent=1)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
