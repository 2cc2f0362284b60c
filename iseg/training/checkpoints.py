"""Training checkpoints (model, optimizer slots and step, input iterator) and model-only
restores with a readable report when a checkpoint does not fit the model.

Writes are atomic: TensorFlow writes a checkpoint's files first and then replaces the
`checkpoint` state file by an atomic rename, so a run killed mid-write resumes from the
previous complete checkpoint.
"""

import os
import shutil
import tempfile

import tensorflow as tf
from absl import logging

from iseg.training.errors import CheckpointMismatchError

CKPT_DIR = "checkpoints"


class TrainCheckpointer:
    """Periodic training checkpoints under `<model_dir>/checkpoints`, keeping the last K.

    In multi-worker training every worker must save (the save is collective); workers
    other than the chief write to a temporary folder that is removed afterwards.
    """

    def __init__(self, model_dir, *, model, optimizer, iterator=None, keep=3, is_chief=True,
                 task_id=0):
        objects = dict(model=model, optimizer=optimizer)
        if iterator is not None:
            objects["iterator"] = iterator
        self.checkpoint = tf.train.Checkpoint(**objects)
        self.directory = os.path.join(model_dir, CKPT_DIR)
        self.is_chief = is_chief
        write_dir = self.directory if is_chief else os.path.join(
            model_dir, f".worker{task_id}_tmp", CKPT_DIR)
        self.manager = tf.train.CheckpointManager(self.checkpoint, write_dir,
                                                  max_to_keep=max(1, keep))
        self._write_dir = write_dir

    @property
    def latest(self):
        return tf.train.latest_checkpoint(self.directory)

    def restore_latest(self):
        """Restore the newest checkpoint of the chief; returns its path or None."""
        path = self.latest
        if path is None:
            return None
        logging.info("Resuming from %s", path)
        try:
            status = self.checkpoint.restore(path)
            status.assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as e:
            raise CheckpointMismatchError(
                describe_mismatch(path, self.checkpoint, str(e))) from None
        return path

    def save(self, step):
        path = self.manager.save(checkpoint_number=int(step))
        if not self.is_chief:
            shutil.rmtree(os.path.dirname(self._write_dir), ignore_errors=True)
        return path


def _checkpoint_shapes(path, prefix=""):
    out = {}
    for name, shape in tf.train.list_variables(path):
        if name.startswith(prefix) and name.endswith(".ATTRIBUTES/VARIABLE_VALUE"):
            key = name[len(prefix):].replace("/.ATTRIBUTES/VARIABLE_VALUE", "")
            out[key] = tuple(shape)
    return out


def describe_mismatch(path, checkpoint, error=""):
    """Which variables of `checkpoint`'s objects are missing from / extra in / shaped
    differently in the checkpoint at `path` (computed by writing ours to a temp folder)."""
    with tempfile.TemporaryDirectory() as tmp:
        ours = _checkpoint_shapes(checkpoint.write(os.path.join(tmp, "ours")), "model/")
    theirs = _checkpoint_shapes(path, "model/")
    missing = sorted(set(ours) - set(theirs))
    extra = sorted(set(theirs) - set(ours))
    shape = sorted(k for k in set(ours) & set(theirs) if ours[k] != theirs[k])
    lines = [f"checkpoint {path} does not match the model"]

    def some(keys):
        return ", ".join(keys[:8]) + (f" ... (+{len(keys) - 8} more)" if len(keys) > 8 else "")

    if missing:
        lines.append(f"{len(missing)} model variables missing from the checkpoint: "
                     f"{some(missing)}")
    if extra:
        lines.append(f"{len(extra)} checkpoint variables not in the model: {some(extra)}")
    if shape:
        lines.append(f"{len(shape)} variables with different shapes: " + some(
            [f"{k} checkpoint {theirs[k]} vs model {ours[k]}" for k in shape]))
    if len(lines) == 1 and error:
        lines.append(error.splitlines()[0])
    return "; ".join(lines)


def resolve_checkpoint(path_or_dir):
    """A checkpoint prefix from a prefix, a `checkpoints/` folder or a model_dir."""
    if path_or_dir is None:
        return None
    for cand in (path_or_dir, os.path.join(path_or_dir, CKPT_DIR)):
        if os.path.isdir(cand):
            latest = tf.train.latest_checkpoint(cand)
            if latest:
                return latest
    if tf.io.gfile.exists(path_or_dir + ".index"):
        return path_or_dir
    raise FileNotFoundError(f"no checkpoint found at {path_or_dir}")


def restore_model(model, path_or_dir):
    """Load the model weights of a training checkpoint into `model` (already built).

    Raises CheckpointMismatchError naming the variables that do not match."""
    path = resolve_checkpoint(path_or_dir)
    checkpoint = tf.train.Checkpoint(model=model)
    try:
        status = checkpoint.read(path)
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as e:
        raise CheckpointMismatchError(describe_mismatch(path, checkpoint, str(e))) from None
    theirs = _checkpoint_shapes(path, "model/")
    status.expect_partial()
    logging.info("Restored %d model variables from %s", len(theirs), path)
    return path
