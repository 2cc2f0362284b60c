"""Parameter counts of the baseline heads at real widths.

Inputs: ResNet-50/101-like endpoints c2/c3/c4/c5 with 256/512/1024/2048 channels (the
count does not depend on the spatial size). Prints a Markdown table: trainable parameters
(what PyTorch's `sum(p.numel())` counts: conv weights and biases, BN gamma/beta) and
non-trainable ones (BN moving statistics), per head, variant and CAR setting, plus the
`fcn_aux` head on c4. Usage:

    python benchmarks/param_counts.py [--num_classes 19]
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from iseg.heads import build_head  # noqa: E402

WIDTHS = {"c2": 256, "c3": 512, "c4": 1024, "c5": 2048}
HEADS = ["fcn", "deeplabv3", "deeplabv3plus", "nl", "ocr", "upernet", "danet", "ccnet"]


def count(name, num_classes, **options):
    head = build_head(name, num_classes, **options)
    inputs = {k: keras.Input((None, None, c), name=k) for k, c in WIDTHS.items()}
    head(inputs)
    trainable = sum(int(w.numpy().size) for w in head.trainable_weights)
    frozen = sum(int(w.numpy().size) for w in head.non_trainable_weights)
    return trainable, frozen


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_classes", type=int, default=19)
    args = parser.parse_args()
    k = args.num_classes
    print(f"num_classes = {k}; inputs c2/c3/c4/c5 = 256/512/1024/2048 channels\n")
    print("| head | variant | CAR | trainable params | BN moving stats |")
    print("|---|---|---|---:|---:|")
    for name in HEADS:
        for variant in ("car", "mmseg"):
            for use_car in (False, True):
                t, f = count(name, k, variant=variant, car={} if use_car else None)
                print(f"| {name} | {variant} | {'yes' if use_car else 'no'} | {t:,} | {f:,} |")
    t, f = count("fcn_aux", k)
    print(f"| fcn_aux (c4) | - | no | {t:,} | {f:,} |")


if __name__ == "__main__":
    main()
