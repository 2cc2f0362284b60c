"""Parameters and FLOPs of decoders on one backbone, side by side (inference graph).

FLOPs are counted analytically while one forward pass runs (`iseg.benchmark.count_macs`:
convolutions, dense layers, attention einsums / matmuls, bilinear resizes). Here one
multiply-accumulate counts as one FLOP (the fvcore / mmcv convention of the papers'
tables); element-wise work (BN, activations, softmax) is not counted. Parameters: trainable
weights (PyTorch's `numel` convention). Usage:

    python benchmarks/decoder_costs.py [--backbone convnext_tiny] [--size 512] [--classes 150]
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from iseg.cli.usage import tensorflow_defaults  # noqa: E402

tensorflow_defaults()  # as the iseg tools run TensorFlow (its BFC CPU allocator)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from iseg.benchmark import count_macs  # noqa: E402
from iseg.models import build_model  # noqa: E402

#: (label, head, model options): the decoders compared, at their papers' / mmseg's widths.
DECODERS = [
    ("UPerNet (mmseg layout, 512)", "upernet", dict(head_options=dict(variant="mmseg"))),
    ("HFGD (256 / 128)", "hfgd", {}),
    ("CARD (512 / 256, with CAR)", "card", dict(car={})),
]


def measure(head, backbone, size, classes, options):
    keras.utils.set_random_seed(0)
    model = build_model(head, backbone, classes, aux_weight=0.0, input_shape=(size, size, 3),
                        **options)
    x = np.zeros((1, size, size, 3), "float32")
    backbone_params = sum(int(np.prod(w.shape)) for w in model.backbone.trainable_weights)
    head_params = sum(int(np.prod(w.shape)) for w in model.head.trainable_weights)
    with count_macs() as total:
        model.backbone(x, training=False)
    backbone_flops = total[0]
    with count_macs() as total:
        model(x, training=False)
    return backbone_params, head_params, backbone_flops, total[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="convnext_tiny")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--classes", type=int, default=150)
    args = parser.parse_args()
    print(f"{args.backbone}, {args.size}x{args.size} input, {args.classes} classes, inference; "
          "FLOPs = multiply-accumulates of convs, dense layers, attention matmuls and resizes\n")
    print("| decoder | params total (M) | decoder params (M) | GFLOPs total | decoder GFLOPs |")
    print("|---|---:|---:|---:|---:|")
    for label, head, options in DECODERS:
        bp, hp, bf, tf_ = measure(head, args.backbone, args.size, args.classes, options)
        print(f"| {label} | {(bp + hp) / 1e6:.2f} | {hp / 1e6:.2f} | {tf_ / 1e9:.1f} | "
              f"{(tf_ - bf) / 1e9:.1f} |")


if __name__ == "__main__":
    main()
