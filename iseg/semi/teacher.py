"""Second networks of semi-supervised training: the EMA teacher and the peer.

`EMATeacher` keeps an exponential moving average of the student in a second
`SegmentationModel` built from the student's config, starting as a copy of its weights;
it never receives gradients (its variables are not trainable). Two update rules, from the
methods' official code (docs/semi_supervised.md):

- ``ramp=True`` (AugSeg, iMAS): ``alpha_t = min(1 - 1/(t + 1), alpha)`` at optimizer step
  ``t`` (0 for the first update, so the teacher first becomes the updated student), applied
  to the weights AND the batch-norm moving statistics;
- ``ramp=False, copy_bn=True`` (CW-BASS): a fixed ``alpha`` on the trainable weights, the
  non-trainable floats (batch-norm statistics) copied from the student.

The update of every variable is ``t <- a * t + (1 - a) * s`` in float32.

`build_peer` builds the second network of CPS: the same config, a different head
initialisation (another seed), the student's backbone weights.
"""

import keras
import tensorflow as tf


def clone_model(model):
    """A new, built model from `model`'s config (fresh weights)."""
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    clone.build((None, None, None, 3))
    return clone


def _float_pairs(target, source):
    pairs = []
    for t, s in zip(target.weights, source.weights, strict=True):
        if t.shape != s.shape:
            raise ValueError(f"teacher and student differ at {t.path}: {t.shape} vs {s.shape}")
        if tf.as_dtype(t.dtype).is_floating:
            pairs.append((t, s))
    return pairs


def ema_alpha(step, alpha, ramp):
    """The float32 decay of the update at optimizer step `step` (0-based)."""
    if not ramp:
        return tf.constant(alpha, tf.float32)
    t = tf.cast(step, tf.float64)
    return tf.cast(tf.minimum(1.0 - 1.0 / (t + 1.0), float(alpha)), tf.float32)


class EMATeacher:
    """An EMA copy of `student` (see the module docstring)."""

    def __init__(self, student, alpha=0.999, ramp=True, copy_bn=False):
        self.alpha, self.ramp, self.copy_bn = float(alpha), bool(ramp), bool(copy_bn)
        self.model = clone_model(student)
        self.model.trainable = False
        self._pairs = _float_pairs(self.model, student)
        trainable = {id(v) for v in student.trainable_weights}
        self._averaged = [id(s) in trainable or not copy_bn for _, s in self._pairs]
        for t, s in self._pairs:
            t.assign(s)

    @property
    def variables(self):
        return list(self.model.weights)

    def update(self, step):
        """One EMA update after optimizer step `step` (an integer tensor)."""
        a = ema_alpha(step, self.alpha, self.ramp)
        for (t, s), averaged in zip(self._pairs, self._averaged, strict=True):
            s = tf.cast(s, t.dtype)
            t.assign(a * t + (1.0 - a) * s if averaged else s)


def build_peer(student, seed):
    """CPS's second network: `student`'s config, head initialised from `seed`, the
    student's backbone weights."""
    keras.utils.set_random_seed(seed)
    peer = clone_model(student)
    for p, s in zip(peer.backbone.weights, student.backbone.weights, strict=True):
        p.assign(s)
    return peer
