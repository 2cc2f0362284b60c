"""The interface between the semi-supervised engine and a method.

A method (`SemiMethod`) turns one zipped batch into weighted loss terms; the engine
(`iseg.semi.engine`) owns the tape, the optimizer step, the teacher update, checkpoints and
logging. `SemiContext` is what the engine hands the method for one replica step: the
networks (student, teacher, peer) and the data conventions.
"""

import math

import tensorflow as tf

from iseg.datasets.pipeline import normalize as normalize_images
from iseg.errors import ConfigError
from iseg.models.segmentation_model import l2_penalty

TEACHERS = ("self", "ema", "peer")


class SemiMethod:
    """A semi-supervised method: a small composition of the `iseg.semi` pieces.

    Class attributes:
      name: the registry name (`--semi=<name>`).
      teacher: "self" (the student's own detached inference-mode prediction), "ema" (an
        EMA copy of the student, `iseg.semi.teacher`), "peer" (a second network trained
        jointly, as CPS does).
      unlabeled_streams: 1, or 2 when the method mixes with a second, independent
        unlabeled batch (`batch["u_image2"]`, `batch["u_ignore2"]`).
      defaults: option name -> default (the official VOC value); `--semi_options=k=v,...`
        overrides them. A given value is checked against its default's type (`check_option`).
      choices: option name -> the valid values of a text option.
    A method with teacher "ema" sets its EMA settings in `ema()`.
    """

    name = None
    teacher = "self"
    unlabeled_streams = 1
    defaults = {}
    choices = {}

    def __init__(self, options=None):
        options = dict(options or {})
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            valid = ", ".join(sorted(self.defaults)) or "(none)"
            raise ConfigError(f"--semi_options: unknown option {unknown[0]!r} for method "
                              f"{self.name!r}. Valid options: {valid}")
        self.options = dict(self.defaults)
        for key, value in options.items():
            self.options[key] = check_option(key, value, self.defaults[key],
                                             self.choices.get(key))

    def build(self, ctx):
        """Create extra Keras layers / tf.Variables (thresholds, heads); called once, in
        the strategy scope, before training (and before a checkpoint is restored)."""

    def ema(self):
        """Settings of the EMA teacher (teacher "ema"): `iseg.semi.teacher.EMATeacher`'s
        keyword arguments. Default: AugSeg's rule with the ``ema_alpha`` option (0.999)."""
        return dict(alpha=float(self.options.get("ema_alpha", 0.999)), ramp=True,
                    copy_bn=False)

    def trainable_layers(self):
        """Extra layers trained with the student (e.g. a correlation head)."""
        return []

    def state(self):
        """name -> tf.Variable kept in checkpoints (e.g. an adaptive threshold)."""
        return {}

    def loss_terms(self, ctx, batch, seed):
        """dict name -> weighted float32 scalar (this replica's batch); the loss is their
        sum. `batch`: see `iseg.semi.data`; `seed`: an int32 [2] stateless seed."""
        raise NotImplementedError


class SemiContext:
    """What one replica step of the engine gives the method.

    Args:
      student: the `SegmentationModel` being trained.
      teacher_model: the EMA teacher (teacher "ema"), else None.
      peer_model: the peer network (teacher "peer"), else None.
      normalization: the input normalisation of the student (`input_normalization`).
      num_classes, ignore_label: from the dataset.
      step: int64 scalar tensor, the optimizer step before this update.
      total_steps: the number of optimizer steps of the run.
      layers: the method's trainable layers (`SemiMethod.trainable_layers`).
    """

    def __init__(self, student, *, normalization, num_classes, ignore_label, step,
                 total_steps, teacher_model=None, peer_model=None, layers=()):
        self.model = student
        self.teacher_model = teacher_model
        self.peer_model = peer_model
        self.normalization = normalization
        self.num_classes = int(num_classes)
        self.ignore_label = int(ignore_label)
        self.step = step
        self.total_steps = int(total_steps)
        self.layers = list(layers)

    def normalize(self, images):
        """float32 [0, 255] images -> the student's input."""
        return normalize_images(images, self.normalization)

    def student(self, x, training=True):
        """The student's output on normalised `x` (training: a dict with "logits", ...)."""
        return self.model(x, training=training)

    def student_eval(self, x):
        """The student's logits in inference mode (BN moving statistics), no gradient."""
        return tf.stop_gradient(self.model(x, training=False))

    def teacher(self, x):
        """Teacher logits, inference mode, no gradient: the EMA model, else the student."""
        if self.teacher_model is None:
            return self.student_eval(x)
        return tf.stop_gradient(self.teacher_model(x, training=False))

    def peer(self, x, training=True):
        """The peer network's output ("peer" methods)."""
        if self.peer_model is None:
            raise ValueError("this method has no peer network (teacher != 'peer')")
        return self.peer_model(x, training=training)

    def encode(self, x, training=True):
        """The student's backbone endpoints (dict) for normalised `x`."""
        return self.model.encode(x, training=training)

    def decode(self, endpoints, size, training=True):
        """The student's head output for `endpoints`, logits resized to `size`."""
        return self.model.decode(endpoints, size, training=training)

    def head_endpoints(self):
        """The names of the endpoints the student's head reads (e.g. ["c5", "c2"])."""
        return self.model.head_endpoints()

    def supervised(self, labels, outputs, scale=1.0):
        """dict of the student's own supervised loss terms (CE, aux, CAR, SAR, ...), each
        times `scale` except the weight decay "l2": it stays unscaled, as an optimizer's
        weight decay is, and covers the kernels of the method's `layers` too."""
        terms = self.model.loss_terms(labels, outputs, training=True)
        terms = {k: v if k == "l2" else scale * v for k, v in terms.items()}
        if "l2" in terms and self.layers:
            weights = [w for layer in self.layers for w in layer.trainable_weights]
            terms["l2"] += l2_penalty(weights, self.model.l2_weight_decay)
        return terms


def check_option(key, value, default, choices=None):
    """`value` of option `key` as the type of its `default`, or a one-line ConfigError:
    a bool takes true / false, a float a number, an int a whole number, None (an optional
    count) none or a whole number, text one of `choices` (any text without them)."""
    word = {"true": True, "false": False, "none": None}.get(str(value).strip().lower(), value)
    if isinstance(default, bool):
        need, ok = "true or false", isinstance(word, bool)
        value = word
    elif isinstance(default, str):
        need = "one of " + ", ".join(choices) if choices else "text"
        ok = isinstance(value, str) and (not choices or value in choices)
    elif default is None and word is None:
        return None
    else:
        number = _number(value)
        whole = not isinstance(default, float)
        need = "a whole number" if whole else "a number"
        ok = number is not None and (not whole or number == int(number))
        value = (int(number) if whole else number) if ok else value
        need += " or none" if default is None else ""
    if not ok:
        raise ConfigError(f"--semi_options: {key}={value} must be {need}")
    return value


def _number(value):
    """float(value) for a finite number (or its text), else None."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def check_teacher(method):
    """ValueError for a method class whose `teacher` / `unlabeled_streams` are invalid."""
    if method.teacher not in TEACHERS:
        raise ValueError(f"{method.name}: teacher must be one of {TEACHERS}, got "
                         f"{method.teacher!r}")
    if method.unlabeled_streams not in (1, 2):
        raise ValueError(f"{method.name}: unlabeled_streams must be 1 or 2")
