"""Every baseline head (tiny widths, with and without CAR) forward and backward on JAX.

Sets KERAS_BACKEND=jax itself. Prints one line per head with the forward and gradient
wall times and whether every gradient is finite. Usage:

    python benchmarks/jax_heads_smoke.py
"""

import os
import time

os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from iseg.heads import build_head  # noqa: E402

OPTIONS = {
    "fcn": dict(channels=16, end_channels=8),
    "deeplabv3": dict(channels=8, rates=(2, 3, 4)),
    "deeplabv3plus": dict(channels=8, low_level_channels=4, rates=(2, 3, 4)),
    "nl": dict(channels=16, key_filters=4),
    "ocr": dict(channels=16, key_filters=8),
    "upernet": dict(channels=8),
    "danet": dict(channels=16),
    "ccnet": dict(channels=16),
    "fcn_aux": dict(channels=8),
}


def main():
    rng = np.random.default_rng(0)
    endpoints = {
        k: rng.normal(size=(2, s, s, c)).astype("float32")
        for k, s, c in [("c2", 17, 6), ("c3", 9, 7), ("c4", 9, 10), ("c5", 9, 12)]
    }
    failures = 0
    for name, options in OPTIONS.items():
        for use_car in (False, True) if name != "fcn_aux" else (False,):
            extra = dict(car=dict(filters=8)) if use_car else {}
            head = build_head(name, 5, **options, **extra)
            start = time.time()
            out = head(endpoints, training=False)
            forward_s = time.time() - start
            trainable = [v.value for v in head.trainable_variables]
            frozen = [v.value for v in head.non_trainable_variables]

            def loss(trainable, head=head, frozen=frozen):
                y, _ = head.stateless_call(trainable, frozen, endpoints, training=True)
                return sum(jax.numpy.mean(t**2) for t in jax.tree_util.tree_leaves(y))

            start = time.time()
            grads = jax.grad(loss)(trainable)
            grad_s = time.time() - start
            finite = all(np.isfinite(np.asarray(g)).all() for g in grads)
            failures += not finite
            print(
                f"{name:14s} car={use_car!s:5s} logits={tuple(out['logits'].shape)} "
                f"forward={forward_s:.1f}s grad={grad_s:.1f}s finite={finite}"
            )
    print("FAILED" if failures else "ALL OK")


if __name__ == "__main__":
    main()
