"""Backbone numbers: parameter counts, keras.applications parity errors, forward time.

    python benchmarks/backbones.py                      # counts of every backbone + parity
    python benchmarks/backbones.py --names resnet50_d8 swin_tiny --speed 513

Parameter counts: `count_params()` (Keras convention, BN moving statistics included, as
keras.applications reports) and the trainable count (the PyTorch / timm convention).
Parity: random weights (with random BN statistics and LayerNorm affines) in the
keras.applications model, transferred through the weight importer; max |diff| of the last
feature map, absolute and relative to max |reference|.
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from iseg.cli.usage import tensorflow_defaults  # noqa: E402

tensorflow_defaults()  # as the iseg tools run TensorFlow (its BFC CPU allocator)

import keras  # noqa: E402

from iseg.backbones import BACKBONES, build_backbone  # noqa: E402

MEAN = np.array([0.485, 0.456, 0.406], "float32")
STD = np.array([0.229, 0.224, 0.225], "float32")


def _randomize_norms(model, rng):
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights([
                rng.uniform(0.5, 1.5, g.shape), rng.normal(0, 0.1, b.shape),
                rng.normal(0, 0.1, m.shape), rng.uniform(0.5, 1.5, v.shape),
            ])
        elif isinstance(layer, keras.layers.LayerNormalization) or "layer_scale" in layer.name:
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape) for w in layer.get_weights()])
        elif isinstance(layer, keras.Sequential):
            _randomize_norms(layer, rng)


def parity(size):
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, app, fmt in [
            ("resnet50", keras.applications.ResNet50, ".weights.h5"),
            ("convnext_tiny", keras.applications.ConvNeXtTiny, ".h5"),
        ]:
            ref = app(weights=None, include_top=False, input_shape=(size, size, 3))
            _randomize_norms(ref, rng)
            path = os.path.join(tmp, name + fmt)
            if fmt == ".h5":
                ref.save(path)
            else:
                ref.save_weights(path)
            model = build_backbone(name, weights=path)
            # ours takes the ImageNet-normalised image; keras.applications takes 0..255
            # (ConvNeXt normalises inside) or caffe-preprocessed BGR (ResNet)
            x = rng.uniform(0, 255, size=(2, size, size, 3)).astype("float32")
            ours_in = (x / 255.0 - MEAN) / STD
            if name.startswith("resnet"):
                x = keras.applications.resnet.preprocess_input(x.copy())
            want = np.asarray(ref(x))
            got = np.asarray(model(ours_in)["c5"])
            err = float(np.abs(want - got).max())
            rows.append((name, fmt, err, err / float(np.abs(want).max())))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", nargs="*", default=None, help="backbones (default: all)")
    parser.add_argument("--no-parity", action="store_true", help="skip the parity check")
    parser.add_argument("--parity-size", type=int, default=64)
    parser.add_argument("--speed", type=int, default=0, help="time a forward pass at NxN")
    args = parser.parse_args()

    print(f"keras {keras.__version__}, backend {keras.backend.backend()}")
    print(f"{'backbone':18s} {'count_params':>14s} {'trainable':>14s}  endpoints (channels)"
          + ("  forward s" if args.speed else ""))
    for name in args.names or BACKBONES.names():
        model = build_backbone(name)
        trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
        line = f"{name:18s} {model.count_params():14,d} {trainable:14,d}  {model.endpoint_channels}"
        if args.speed:
            x = np.zeros((1, args.speed, args.speed, 3), "float32")
            model(x)
            start = time.perf_counter()
            model(x)
            line += f"  {time.perf_counter() - start:.3f}"
        print(line, flush=True)
        del model
        keras.backend.clear_session()

    if not args.no_parity:
        print(f"\nparity vs keras.applications at {args.parity_size}x{args.parity_size}, "
              "random weights")
        for name, fmt, err, rel in parity(args.parity_size):
            print(f"{name:14s} ({fmt:12s}) max|diff| {err:.3e}  relative {rel:.3e}")


if __name__ == "__main__":
    main()
