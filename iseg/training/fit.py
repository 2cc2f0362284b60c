"""Training with Keras `model.fit` on any Keras backend (JAX, PyTorch, TensorFlow), with
no TensorFlow import: the input comes from `iseg.datasets.pydataset`, the loss from the
model's own `compute_loss` (cross-entropy, aux, CAR, SAR, L2), the optimizer and schedule
from `config.optimizer_for` (the same as the TensorFlow loop's).

A run is a sequence of `fit` calls of at most ``--checkpoint_every`` steps (and up to the
next ``--eval_every``); after each, a checkpoint ``<model_dir>/fit_checkpoints/ckpt-<step>``
holds the Keras weights (``model.weights.h5``) and the optimizer state with its step
counter and the dropout seed states (``optimizer.npz``), written to a temporary folder
and renamed into place. A rerun with the same flags resumes from the newest: the step,
the weights, the optimizer and seed states, and the input position (batch `step` of the
seeded sequence), so it continues as the uninterrupted run would have. Evaluation is
whole-image inference (optionally flip-averaged) with a NumPy confusion matrix, written as
the TensorFlow loop writes it (`<model_dir>/eval/<split>_whole[_flip]_step<N>_results.json`).
"""

import os
import random
import re
import shutil
import time

import keras
import numpy as np
from absl import logging

from iseg.datasets import np_augment, pydataset
from iseg.errors import CheckpointMismatchError, ConfigError, TrainingDivergedError
from iseg.evaluation.results import write_results
from iseg.metrics import numpy_confusion_matrix, scores_from_confusion
from iseg.training import config as config_lib
from iseg.training.lock import ModelDirLock, lock_name

CHECKPOINT_DIR = config_lib.FIT_CHECKPOINT_DIR
_CKPT_RE = re.compile(r"^ckpt-(\d+)$")


def unsupported(cfg):
    """The first setting the fit engine cannot run, as ``(flag, why)``, or None."""
    checks = [
        (cfg.strategy not in ("auto", "one_device"), f"--strategy={cfg.strategy}",
         "distribution strategies are TensorFlow's"),
        (cfg.tpu, f"--tpu={cfg.tpu}", "TPUs run with TensorFlow's TPUStrategy"),
        (cfg.resample == "device", "--resample=device", "views are resampled on the host"),
        (cfg.grad_accum_steps > 1, f"--grad_accum_steps={cfg.grad_accum_steps}",
         "one fit step is one batch"),
        (cfg.skip_corrupt, "--skip_corrupt", "a damaged record stops the run"),
        (cfg.semi != "none", f"--semi={cfg.semi}",
         "semi-supervised training runs in the TensorFlow loop"),
        (cfg.deterministic, "--deterministic", "it sets TensorFlow's op determinism"),
        (cfg.eval_mode != "whole", f"--eval_mode={cfg.eval_mode}",
         "evaluation is whole-image"),
        (tuple(cfg.eval_scales) != (1.0,),
         f"--eval_scales={','.join(f'{s:g}' for s in cfg.eval_scales)}",
         "evaluation is at scale 1"),
    ]
    for bad, flag, why in checks:
        if bad:
            return flag, why
    return None


def check_fit_config(cfg):
    problem = unsupported(cfg)
    if problem:
        raise ConfigError(f"{problem[0]} is not supported by the fit engine ({problem[1]}); "
                          "use --engine=loop on the TensorFlow backend")


def set_seeds(seed):
    """Python, NumPy and Keras seeds (as `keras.utils.set_random_seed`, which would also
    import TensorFlow to seed it)."""
    from keras.src.backend.common import global_state  # pylint: disable=import-outside-toplevel

    global_state.set_global_attribute("global_random_seed", seed)
    global_state.set_global_attribute("global_seed_generator", None)
    random.seed(seed)
    np.random.seed(seed)
    if keras.backend.backend() == "torch":
        import torch  # pylint: disable=import-outside-toplevel

        torch.manual_seed(seed)


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_steps(model_dir):
    """Steps of the complete checkpoints in `model_dir`, ascending."""
    folder = os.path.join(model_dir, CHECKPOINT_DIR)
    if not os.path.isdir(folder):
        return []
    return sorted(int(m.group(1)) for n in os.listdir(folder) if (m := _CKPT_RE.match(n))
                  and os.path.isfile(os.path.join(folder, n, "optimizer.npz")))


def seed_states(model):
    """The state variables of the model's random seed generators (dropout, drop path):
    not among the Keras weights, saved with the optimizer state."""
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def save_checkpoint(model_dir, model, optimizer, step, keep=3):
    """Write ``ckpt-<step>`` atomically and keep the newest `keep`; returns its path."""
    folder = os.path.join(model_dir, CHECKPOINT_DIR)
    path = os.path.join(folder, f"ckpt-{step}")
    tmp = f"{path}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    model.save_weights(os.path.join(tmp, "model.weights.h5"))
    values = {f"v{i:05d}": keras.ops.convert_to_numpy(v)
              for i, v in enumerate(optimizer.variables)}
    values.update({f"s{i:05d}": keras.ops.convert_to_numpy(v)
                   for i, v in enumerate(seed_states(model))})
    np.savez(os.path.join(tmp, "optimizer.npz"), step=step,
             paths=np.asarray([v.path for v in optimizer.variables]), **values)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    for old in checkpoint_steps(model_dir)[:-keep] if keep else []:
        shutil.rmtree(os.path.join(folder, f"ckpt-{old}"), ignore_errors=True)
    return path


def restore_checkpoint(path, model, optimizer):
    """Load a checkpoint folder into `model` and `optimizer`; returns its step."""
    try:
        model.load_weights(os.path.join(path, "model.weights.h5"))
    except (ValueError, KeyError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointMismatchError(f"cannot load {path} into this model: {first}") from None
    with np.load(os.path.join(path, "optimizer.npz")) as data:
        saved = [data[f"v{i:05d}"] for i in range(len(data["paths"]))]
        seeds = [data[k] for k in sorted(data.files) if k.startswith("s0")]
        variables = optimizer.variables + seed_states(model)
        saved += seeds
        if [s.shape for s in saved] != [tuple(v.shape) for v in variables]:
            raise CheckpointMismatchError(
                f"{path}: its optimizer and random-seed state ({len(saved)} variables) does "
                f"not fit this run's ({len(variables)}); another --optimizer or model?")
        for value, v in zip(saved, variables):
            v.assign(value)
        return int(data["step"])


# ----------------------------------------------------------------------------- evaluation


def evaluate(cfg, model, meta, normalization, step=None):
    """Whole-image (optionally flip-averaged) scores of `cfg.eval_split`, written under
    ``<model_dir>/eval``."""
    start = time.time()
    source = pydataset.RecordSource(cfg.data_dir, cfg.eval_split, meta.num_classes)
    matrix = np.zeros((meta.num_classes, meta.num_classes), np.int64)
    num_images = 0
    for images, labels, _, _ in pydataset.eval_batches(
            source, cfg.eval_batch_size, cfg.crop_size, normalization, cfg.eval_steps):
        logits = np.asarray(model.predict_on_batch(images), np.float32)
        if cfg.eval_flip:
            logits = logits + np.asarray(model.predict_on_batch(images[:, :, ::-1]),
                                         np.float32)[:, :, ::-1]
        matrix += numpy_confusion_matrix(labels, logits.argmax(-1), meta.num_classes,
                                         meta.ignore_label)
        num_images += len(images)
    scores = scores_from_confusion(matrix, meta.class_names)
    scores.update(confusion_matrix=matrix, num_images=num_images, samples=[],
                  seconds=time.time() - start, split=cfg.eval_split,
                  inference=dict(mode="whole", scales=[1.0], flip=cfg.eval_flip,
                                 align_corners=cfg.align_corners))
    write_results(scores, os.path.join(cfg.model_dir, "eval"), step=step)
    logging.info("step %s: %s mIoU %.4f, pixel accuracy %.4f", step, cfg.eval_split,
                 scores["miou"], scores["pixel_accuracy"])
    return scores


def write_overlays(cfg, model, meta, output_dir, count):
    """Overlays (image | ground truth | prediction) of the first `count` eval images."""
    from iseg.evaluation.visualize import save_overlay  # pylint: disable=import-outside-toplevel

    source = pydataset.RecordSource(cfg.data_dir, cfg.eval_split, meta.num_classes)
    normalization = np_augment.input_normalization(model)
    for i in range(min(count, len(source))):
        image, label, _ = source.example(i)
        logits = model.predict_on_batch(np_augment.normalize(image, normalization)[None])
        save_overlay(output_dir, i, image, label, np.asarray(logits)[0].argmax(-1),
                     meta.palette)
    return min(count, len(source))


# ----------------------------------------------------------------------------- training


class _StepLog(keras.callbacks.Callback):
    """Records each step's loss (Keras logs the running mean of the `fit` call) and stops
    at the first non-finite one."""

    def __init__(self):
        super().__init__()
        self.losses, self.bad, self._mean = [], None, 0.0

    def on_train_begin(self, logs=None):
        self._mean = 0.0

    def on_train_batch_end(self, batch, logs=None):
        mean = float((logs or {}).get("loss", np.nan))
        if not np.isfinite(mean):
            self.bad = (batch, mean)
            self.model.stop_training = True
            return
        self.losses.append((batch + 1) * mean - batch * self._mean)
        self._mean = mean


def _chunks(start, cfg):
    """(first, last) step ranges of the fit calls: ending at every checkpoint, every
    evaluation and the last step."""
    ends = {cfg.steps}
    for every in (cfg.checkpoint_every, cfg.eval_every):
        if every and every > 0:
            ends.update(range(every, cfg.steps, every))
    first = start
    for end in sorted(e for e in ends if e > start):
        yield first, end
        first = end


def train(cfg, meta=None, after_training=None):
    """Train according to `cfg` with `model.fit`; returns a dict like the TensorFlow
    loop's `trainer.train`: step, losses (this run's), scores, model, is_chief."""
    config_lib.check_config(cfg)
    check_fit_config(cfg)
    os.makedirs(cfg.model_dir, exist_ok=True)
    old_policy = keras.config.dtype_policy()
    with ModelDirLock(cfg.model_dir, lock_name(None)):
        keras.config.set_dtype_policy(config_lib.PRECISION_POLICIES[cfg.mixed_precision])
        try:
            return _train(cfg, meta or config_lib.dataset_meta(cfg), after_training)
        finally:
            keras.config.set_dtype_policy(old_policy)


def _train(cfg, meta, after_training):
    set_seeds(cfg.seed)
    model = config_lib.build_model_from_config(cfg, meta)
    config_lib.check_crop_size(cfg, model)
    optimizer = config_lib.optimizer_for(cfg, model)
    model.compile(optimizer=optimizer)
    normalization = np_augment.input_normalization(model)
    steps = checkpoint_steps(cfg.model_dir)
    resume = cfg.checkpoint or (os.path.join(cfg.model_dir, CHECKPOINT_DIR,
                                             f"ckpt-{steps[-1]}") if steps else None)
    config_lib.check_same_model(cfg.model_dir, model)
    config_lib.write_run_config(cfg.model_dir, cfg, meta, model)
    step = restore_checkpoint(resume, model, optimizer) if resume else 0
    if resume:
        logging.info("resuming from %s (step %d)", resume, step)
    source = pydataset.RecordSource(cfg.data_dir, "train", meta.num_classes)
    log, scores = _StepLog(), None
    for first, end in _chunks(step, cfg):
        batches = pydataset.TrainBatches(
            source, batch_size=cfg.batch_size, crop_size=cfg.crop_size, seed=cfg.seed,
            steps=end - first, start=first, options=config_lib.augment_options(cfg),
            normalization=normalization)
        # shuffle=False: Keras would otherwise permute the PyDataset's batch indices
        history = model.fit(batches, epochs=1, shuffle=False,
                            verbose=1 if cfg.progress else 0, callbacks=[log])
        if log.bad is not None:
            raise TrainingDivergedError(
                f"loss is {log.bad[1]} at step {first + log.bad[0] + 1}; training stopped "
                f"(checkpoints kept in {os.path.join(cfg.model_dir, CHECKPOINT_DIR)})")
        step = end
        logging.info("steps %d-%d: mean %s", first + 1, end, ", ".join(
            f"{k} {v[-1]:.4f}" for k, v in history.history.items()))
        if step % max(1, cfg.checkpoint_every) == 0 or step == cfg.steps:
            save_checkpoint(cfg.model_dir, model, optimizer, step, cfg.keep_checkpoints)
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
            scores = evaluate(cfg, model, meta, normalization, step)
    if cfg.evaluate_at_end and step > 0:
        scores = evaluate(cfg, model, meta, normalization, step)
    result = dict(step=step, losses=log.losses, scores=scores, model=model, is_chief=True)
    if after_training is not None:
        after_training(model, result)
    return result
