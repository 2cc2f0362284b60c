"""Does XLA make a text-recognizer training step cheaper? Plain vs jit-compiled step.

    python benchmarks/text_step.py                  # the demo's FACLSTM, batch 32
    python benchmarks/text_step.py --rounds=10 --model_options="decoder_filters=32"
    python benchmarks/text_step.py --xla=false --against="<other model options>"

Renders a few synthetic words (into --data_dir, once), takes one training batch of the text
pipeline and times the trainer's step (model(x, training=True) -> compute_loss -> gradients
-> Adam with global clip norm) as three tf.functions: plain, `jit_compile=True` on the whole
step, and XLA on the decoder's loop only (the ConvLSTM decoder's call jit-compiled). After
untimed warm-up steps (tracing / compiling) the forms run interleaved, one step each per
round, so a change of machine load hits all of them alike. Prints the median CPU time
(time.process_time, all threads) and wall time per step and the ratios plain / form.
`--against` adds the plain step of a model with other options (e.g. an earlier demo's) to
the rounds; `--xla=false` leaves out the two compiled forms.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from iseg.cli.usage import tensorflow_defaults  # noqa: E402

tensorflow_defaults()  # as the iseg tools run TensorFlow (its BFC CPU allocator)

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from iseg.cli.flags import expand_flagfiles, parse_options  # noqa: E402
from iseg.text import records, synth  # noqa: E402
from iseg.text.charset import ALPHANUMERIC, Charset  # noqa: E402
from iseg.text.models import build_text_model  # noqa: E402
from iseg.text.pipeline import build_text_dataset  # noqa: E402
from iseg.training.optimizers import build_optimizer, prepare_optimizer  # noqa: E402

DEMO_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs", "text", "faclstm_synth.cfg")


def demo_options():
    """The text demo's `--text_model_options` (its flag file, nested flag files expanded;
    the last one given wins, as for train.py)."""
    values = [arg.split("=", 1)[1] for arg in expand_flagfiles(["", f"--flagfile={DEMO_CONFIG}"])
              if arg.startswith("--text_model_options=")]
    if not values:
        raise ValueError(f"{DEMO_CONFIG}: no --text_model_options")
    return values[-1]


def one_batch(data_dir, batch, max_length, size):
    if not os.path.isfile(os.path.join(data_dir, records.INFO_FILE)):
        records.generate_synth(data_dir, {"train": (2 * batch, None)},
                               options=synth.SynthOptions(chars=ALPHANUMERIC,
                                                          max_length=max_length))
    ds = build_text_dataset(data_dir, "train", charset=Charset(ALPHANUMERIC),
                            max_length=max_length, image_size=size, channels=1,
                            batch_size=batch, training=True, seed=0, shuffle_buffer=16)
    return next(iter(ds))


def make_step(model, optimizer, jit_compile):
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = model.compute_loss(x=x, y=y, y_pred=model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss
    return tf.function(step, jit_compile=jit_compile)


def build(args, decoder_jit=False):
    keras.utils.set_random_seed(0)
    model = build_text_model(args.model, charset=ALPHANUMERIC, max_length=args.max_length,
                             image_size=(32, 100), channels=1,
                             **parse_options(args.model_options, "model_options"))
    model.build(model.input_shape_for())
    if decoder_jit:
        model.decoder.call = tf.function(model.decoder.call, jit_compile=True)
    optimizer = build_optimizer("adam", 1e-4, clip_norm=5.0)
    prepare_optimizer(optimizer, model)
    return model, optimizer


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="faclstm")
    p.add_argument("--model_options", default=demo_options())
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--max_length", type=int, default=10)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--data_dir", default="/tmp/iseg_text_step_data")
    p.add_argument("--against", default=None,
                   help="Model options of a second plain step timed in the same rounds.")
    p.add_argument("--xla", default="true", choices=("true", "false"))
    args = p.parse_args()
    x, y = one_batch(args.data_dir, args.batch, args.max_length, (32, 100))
    forms = {"plain": make_step(*build(args), jit_compile=False)}
    if args.against is not None:
        other = argparse.Namespace(**dict(vars(args), model_options=args.against))
        forms["against"] = make_step(*build(other), jit_compile=False)
    if args.xla == "true":
        forms["xla step"] = make_step(*build(args), jit_compile=True)
        forms["xla decoder"] = make_step(*build(args, decoder_jit=True), jit_compile=False)
    for name, step in list(forms.items()):
        t0 = time.perf_counter()
        try:
            for _ in range(args.warmup):
                float(step(x, y))
        except Exception as e:  # pylint: disable=broad-except
            print(f"{name}: fails ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
            del forms[name]
            continue
        print(f"{name}: warm-up {time.perf_counter() - t0:.1f} s, loss {float(step(x, y)):.5f}")
    cpu = {name: [] for name in forms}
    wall = {name: [] for name in forms}
    for _ in range(args.rounds):
        for name, step in forms.items():
            c0, w0 = time.process_time(), time.perf_counter()
            float(step(x, y))
            cpu[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - w0)
    base_cpu, base_wall = statistics.median(cpu["plain"]), statistics.median(wall["plain"])
    print(f"{args.model}, batch {args.batch}, {args.rounds} interleaved rounds, "
          f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs")
    for name in forms:
        c, w = statistics.median(cpu[name]), statistics.median(wall[name])
        print(f"{name:<12} CPU {c:.3f} s  wall {w:.3f} s  CPU/wall {c / w:.2f}  "
              f"plain/form: CPU {base_cpu / c:.2f}x  wall {base_wall / w:.2f}x")


if __name__ == "__main__":
    main()
