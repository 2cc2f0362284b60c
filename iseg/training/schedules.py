"""Learning-rate schedules: poly, cosine, constant, with linear warm-up."""

import math

import keras
from keras import ops

SCHEDULES = ("poly", "cosine", "constant")


@keras.saving.register_keras_serializable(package="iseg")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """`lr(t)` for optimizer step `t` (0-based):

    - poly: `(base_lr - end_lr) * (1 - t/T)^power + end_lr` (mmseg: end_lr 1e-4, iSeg 0),
    - cosine: `end_lr + (base_lr - end_lr) * (1 + cos(pi t/T)) / 2`,
    - constant: `base_lr`,

    times a linear warm-up factor over the first `warmup_steps` steps that rises from
    `warmup_ratio` to 1 (mmseg's "linear" warm-up). With gradient accumulation the Keras
    optimizer calls the schedule with the micro-batch counter; `accum_steps` converts it.
    """

    def __init__(self, base_lr, total_steps, kind="poly", end_lr=0.0, power=0.9,
                 warmup_steps=0, warmup_ratio=1e-6, accum_steps=1):
        if kind not in SCHEDULES:
            raise ValueError(f"Unknown schedule {kind!r}. Valid schedules: {', '.join(SCHEDULES)}")
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.kind = kind
        self.end_lr = float(end_lr)
        self.power = float(power)
        self.warmup_steps = int(warmup_steps)
        self.warmup_ratio = float(warmup_ratio)
        self.accum_steps = max(1, int(accum_steps))

    def __call__(self, step):
        step = ops.floor_divide(ops.cast(step, "int64"), self.accum_steps)
        t = ops.minimum(ops.cast(step, "float32"), float(self.total_steps))
        frac = t / float(self.total_steps)
        if self.kind == "poly":
            lr = (self.base_lr - self.end_lr) * ops.power(1.0 - frac, self.power) + self.end_lr
        elif self.kind == "cosine":
            lr = self.end_lr + 0.5 * (self.base_lr - self.end_lr) * (
                1.0 + ops.cos(math.pi * frac))
        else:
            lr = ops.cast(self.base_lr, "float32") + 0.0 * t
        if self.warmup_steps > 0:
            w = ops.minimum(t / float(self.warmup_steps), 1.0)
            lr = lr * (1.0 - (1.0 - w) * (1.0 - self.warmup_ratio))
        return lr

    def get_config(self):
        return dict(base_lr=self.base_lr, total_steps=self.total_steps, kind=self.kind,
                    end_lr=self.end_lr, power=self.power, warmup_steps=self.warmup_steps,
                    warmup_ratio=self.warmup_ratio, accum_steps=self.accum_steps)
