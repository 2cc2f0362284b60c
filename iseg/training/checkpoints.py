"""Training checkpoints (model weights, optimizer slots and step, input iterator) and
model-only restores with a readable report when a checkpoint does not fit the model.

Variables are stored by their position in `model.weights` / `optimizer.variables` (the
same architecture always lists them in the same order), not through Keras 3 attribute
tracking, which TensorFlow's object graph does not follow into layer lists or functional
sub-models. The model's variable paths are stored alongside (`model_paths`) to name
mismatches.

Writes are atomic: TensorFlow writes a checkpoint's files first and then replaces the
`checkpoint` state file by an atomic rename, so a run killed mid-write resumes from the
previous complete checkpoint. Only finite weights are saved. A checkpoint whose files do
not read back (truncated or damaged on disk) is skipped with a warning naming the file, in
favour of the newest readable one.

Training checkpoints also hold the random state of the model's layers (dropout and drop
path seed generators), so that a resumed run draws the same masks as an uninterrupted one.
"""

import difflib
import json
import os
import re

import numpy as np
import tensorflow as tf
from absl import logging

from iseg.errors import CheckpointMismatchError, CheckpointUnreadableError, TrainingDivergedError

CKPT_DIR = "checkpoints"
_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


def _short_path(v):
    """A variable's path without Keras' per-process uniquifying suffixes (`head_1` ->
    `head`), so the same architecture gives the same paths in every process."""
    path = getattr(v, "path", None) or v.name
    return "/".join(re.sub(r"_\d+$", "", part) for part in path.split("/"))


def _var_container(variables):
    return tf.train.Checkpoint(**{f"v{i:05d}": v for i, v in enumerate(variables)})


def model_checkpoint(model, **extra):
    """A `tf.train.Checkpoint` holding the model weights (plus `extra` objects)."""
    weights = list(model.weights)
    paths = tf.Variable(json.dumps([_short_path(v) for v in weights]), trainable=False,
                        name="model_paths")
    return tf.train.Checkpoint(model=_var_container(weights), model_paths=paths, **extra)


def _stored_model_shapes(path):
    """[(index, shape)] of the model variables in a checkpoint, and their paths if known."""
    reader = tf.train.load_checkpoint(path)
    shapes = {}
    for key, shape in reader.get_variable_to_shape_map().items():
        if key.startswith("model/v") and key.endswith(_SUFFIX):
            shapes[int(key[len("model/v"):-len(_SUFFIX)])] = tuple(shape)
    paths = None
    try:
        value = reader.get_tensor("model_paths" + _SUFFIX)
        paths = json.loads(value.decode() if isinstance(value, bytes) else str(value))
    except (tf.errors.NotFoundError, ValueError):
        pass
    return [shapes[i] for i in sorted(shapes)], paths


def check_compatible(path, model):
    """Raise CheckpointMismatchError naming the variables that do not fit."""
    theirs, their_paths = _stored_model_shapes(path)
    ours = [tuple(v.shape) for v in model.weights]
    our_paths = [_short_path(v) for v in model.weights]
    if theirs == ours:
        return
    lines = [f"checkpoint {path} does not match the model"]

    def some(items):
        return ", ".join(items[:8]) + (f" ... (+{len(items) - 8} more)" if len(items) > 8
                                        else "")

    if not theirs:
        lines.append("it holds no model variables (not an iseg training checkpoint?)")
    elif len(theirs) != len(ours):
        lines.append(f"it holds {len(theirs)} model variables, the model has {len(ours)}")
    diff, missing, extra = [], [], []
    if their_paths is not None and len(their_paths) == len(theirs):
        matcher = difflib.SequenceMatcher(None, their_paths, our_paths, autojunk=False)
        for op, i1, i2, j1, j2 in matcher.get_opcodes():
            if op == "equal":
                diff += [f"{our_paths[j1 + k]} checkpoint {theirs[i1 + k]} vs model "
                         f"{ours[j1 + k]}" for k in range(i2 - i1)
                         if theirs[i1 + k] != ours[j1 + k]]
            else:
                extra += their_paths[i1:i2]
                missing += our_paths[j1:j2]
        if missing:
            lines.append(f"{len(missing)} model variables not in the checkpoint: "
                         f"{some(missing)}")
        if extra:
            lines.append(f"{len(extra)} checkpoint variables not in the model: {some(extra)}")
    else:
        diff = [f"{p} checkpoint {t} vs model {s}"
                for p, s, t in zip(our_paths, ours, theirs) if t != s]
    if diff:
        lines.append(f"{len(diff)} variables with different shapes: {some(diff)}")
    raise CheckpointMismatchError("; ".join(lines))


def checkpoint_dir(model_dir, is_chief=True, task_id=0):
    """Where a worker's training checkpoints go (the chief's: `<model_dir>/checkpoints`)."""
    return (os.path.join(model_dir, CKPT_DIR) if is_chief else
            os.path.join(model_dir, f".worker{task_id}", CKPT_DIR))


def damaged_file(path):
    """None when every tensor of checkpoint `path` reads back, else "FILE (reason)"."""
    try:
        reader = tf.train.load_checkpoint(path)
    except (tf.errors.OpError, ValueError) as e:
        return f"{path}.index ({str(e).splitlines()[0]})"
    try:  # (variant tensors, the input position, do not convert to numpy; a truncation
        # that reaches them also cuts the model variables stored after them)
        for key, dtype in reader.get_variable_to_dtype_map().items():
            if dtype != tf.variant:
                reader.get_tensor(key)
    except (tf.errors.OpError, IndexError, ValueError) as e:
        data = ", ".join(sorted(tf.io.gfile.glob(path + ".data-*"))) or path + ".data-*"
        return f"{data} ({str(e).splitlines()[0]})"
    return None


def checked(path):
    """`path` if that checkpoint reads back, else CheckpointUnreadableError naming the
    file (FileNotFoundError when there is no such checkpoint)."""
    if not tf.io.gfile.exists(path + ".index"):
        raise FileNotFoundError(f"no checkpoint found at {path}")
    damage = damaged_file(path)
    if damage:
        raise CheckpointUnreadableError(f"checkpoint {path} is damaged: {damage}")
    return path


def newest_readable(directory):
    """The newest checkpoint listed in `directory` that reads back (a warning names each
    damaged newer one); None when none is listed; CheckpointUnreadableError when none
    reads back."""
    state = tf.train.get_checkpoint_state(directory)
    if state is None:
        return None
    listed = [p for p in state.all_model_checkpoint_paths if p != state.model_checkpoint_path]
    damaged = []
    for path in [state.model_checkpoint_path] + listed[::-1]:
        damage = damaged_file(path)
        if damage is None:
            return path
        damaged.append(damage)
        logging.warning("Checkpoint %s is damaged: %s; trying an older one", path, damage)
    raise CheckpointUnreadableError(
        f"no readable checkpoint in {directory}: {'; '.join(damaged)}. Pass "
        "--checkpoint=PATH of a good one, or move the folder away to start afresh")


def _seed_states(model):
    """The state variables of the model's random seed generators (dropout, drop path)."""
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def _all_finite(variables):
    return all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in variables
               if tf.as_dtype(v.dtype).is_floating)


class TrainCheckpointer:
    """Periodic training checkpoints under `<model_dir>/checkpoints`, keeping the last K.

    In multi-worker training every worker must save (the save is collective). Workers
    other than the chief keep their own checkpoints in `<model_dir>/.worker<i>/checkpoints`
    and resume from there: the weights are the same on every worker, but each worker's input
    iterator reads its own shard.
    """

    def __init__(self, model_dir, *, model, optimizer, iterator=None, keep=3, is_chief=True,
                 task_id=0, extra=None):
        """`extra`: name -> trackable saved alongside (e.g. a semi-supervised run's
        teacher)."""
        self.saved = list(model.weights) + list(optimizer.variables)
        extra = dict(extra or {}, optimizer=_var_container(list(optimizer.variables)),
                     seeds=_var_container(_seed_states(model)))
        if iterator is not None:
            extra["iterator"] = iterator
        self.model = model
        self.checkpoint = model_checkpoint(model, **extra)
        self.is_chief = is_chief
        self.directory = checkpoint_dir(model_dir, is_chief, task_id)
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.directory,
                                                  max_to_keep=max(1, keep))

    @property
    def latest(self):
        return tf.train.latest_checkpoint(self.directory)

    def restore(self, path):
        """Restore the training state of checkpoint `path` (None: nothing); returns it."""
        if path is None:
            return None
        logging.info("Resuming from %s", path)
        check_compatible(path, self.model)
        status = self.checkpoint.restore(path)
        try:
            status.assert_existing_objects_matched()
        except AssertionError as e:
            raise CheckpointMismatchError(
                f"checkpoint {path} lacks training state (optimizer / input position / "
                f"random seeds) this run needs: {str(e).splitlines()[0]}") from None
        return path

    def restore_latest(self):
        """Restore the newest readable checkpoint; returns its path or None."""
        return self.restore(newest_readable(self.directory))

    def save(self, step):
        """Save the state after `step`; TrainingDivergedError (nothing saved) when a weight
        or optimizer slot is not finite."""
        if not _all_finite(self.saved):
            raise TrainingDivergedError(
                f"weights are not finite after step {step}; training stopped without "
                f"saving them. Last good checkpoint: {self.latest or 'none yet'}")
        return self.manager.save(checkpoint_number=int(step))

    def withdraw(self, path):
        """Take checkpoint `path` off the list (its files stay): the previous one becomes
        the latest."""
        state = tf.train.get_checkpoint_state(self.directory)
        kept = [os.path.basename(p) for p in (state.all_model_checkpoint_paths if state
                                              else []) if p != path]
        state_file = os.path.join(self.directory, "checkpoint")
        if not kept:
            if os.path.exists(state_file):
                os.remove(state_file)
            return None
        lines = [f'model_checkpoint_path: "{kept[-1]}"'] + [
            f'all_model_checkpoint_paths: "{p}"' for p in kept]
        tmp = f"{state_file}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, state_file)
        return os.path.join(self.directory, kept[-1])

    def after_divergence(self, step):
        """The end of the message of a non-finite loss at `step`: the last good checkpoint.
        A checkpoint saved just before (its weights gave that loss) is withdrawn."""
        latest = self.latest
        if latest is None or not latest.endswith(f"-{step - 1}"):
            return f"Last good checkpoint: {latest or 'none yet'}"
        previous = self.withdraw(latest)
        return (f"Last good checkpoint: {previous or 'none'} ({os.path.basename(latest)}, "
                "whose weights gave this loss, is no longer the latest)")


def resolve_checkpoint(path_or_dir):
    """A checkpoint prefix that reads back, from a prefix, a `checkpoints/` folder or a
    model_dir (there: the newest readable one)."""
    if path_or_dir is None:
        return None
    for cand in (path_or_dir, os.path.join(path_or_dir, CKPT_DIR)):
        if os.path.isdir(cand) and tf.train.get_checkpoint_state(cand):
            return newest_readable(cand)
    return checked(path_or_dir)


def restore_model(model, path_or_dir, source="model"):
    """Load the model weights of a training checkpoint into `model` (already built); with
    ``source="teacher"`` those of a semi-supervised run's EMA teacher (same architecture).

    Raises CheckpointMismatchError naming the variables that do not match."""
    path = resolve_checkpoint(path_or_dir)
    check_compatible(path, model)
    if source == "model":
        status = model_checkpoint(model).read(path)
    else:
        status = tf.train.Checkpoint(**{source: _var_container(list(model.weights))}).read(path)
    status.expect_partial()  # optimizer / iterator entries are not wanted here
    status.assert_existing_objects_matched()
    logging.info("Restored %d model variables from %s", len(model.weights), path)
    return path


def weights_digest(model):
    """A float fingerprint of all weights (to compare replicas / workers in tests)."""
    return float(sum(np.sum(np.abs(np.asarray(v, np.float64))) for v in model.weights))
