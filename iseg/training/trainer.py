"""The training loop: strategy, mixed precision, optimizer, checkpoints with exact resume,
NaN stop, progress bar, TensorBoard scalars and image summaries, periodic evaluation.

A custom loop (not `fit`) so that one step = one optimizer update (with gradient
accumulation over several batches), the input iterator is part of the checkpoint, and a
non-finite loss stops at the exact step. The per-replica step follows Keras' `train_step`:
`model(x, training=True)` then `model.compute_loss(...)` (the model's own loss terms,
tracked as metrics), which is already divided by the number of replicas because gradients
are summed over replicas.
"""

import dataclasses
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from iseg.datasets import info as info_lib
from iseg.datasets.pipeline import input_error, input_normalization, resample_views
from iseg.training import checkpoints as ckpt_lib
from iseg.training import config as config_lib
from iseg.training import summaries
from iseg.errors import ConfigError, EmptyDatasetError, TrainingDivergedError
from iseg.progress import progress_bar
from iseg.training.lock import ModelDirLock, lock_name
from iseg.training.optimizers import current_learning_rate
from iseg.training.strategy import create_strategy, per_replica_batch_size, task_info

PRECISION_POLICIES = config_lib.PRECISION_POLICIES


def enable_sync_bn(model):
    """Synchronise the batch statistics of every BatchNormalization over replicas."""
    n = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
            n += 1
    return n


def _worker_index(strategy):
    """Index of this worker among all workers (chief first), 0 without a cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or not task_type:
        return 0
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    if task_type == "chief":
        return 0
    return int(resolver.task_id) + (1 if has_chief else 0)


def _trackers(model):
    own = getattr(model, "_loss_tracker", None)
    return [m for m in model.metrics
            if m is not own and isinstance(m, keras.metrics.Mean)]


class _NoopWriter:
    def as_default(self, step=None):
        return tf.summary.create_noop_writer().as_default()

    def flush(self):
        pass


def train(cfg, *, model_fn=None, train_dataset_fn=None, eval_dataset_fn=None, meta=None,
          after_training=None):
    """Train according to `cfg` (a `TrainConfig`); returns a dict with the final step,
    the per-step losses of this run, the last evaluation scores and the model.

    Injection points (tests, custom data): `model_fn(cfg, meta)` builds the model,
    `train_dataset_fn(input_context, seed)` returns per-replica training batches,
    `eval_dataset_fn()` returns the evaluation dataset. `after_training(model, result)`
    runs on the chief (exports, overlays).
    """
    config_lib.check_config(cfg)
    os.makedirs(cfg.model_dir, exist_ok=True)
    tf_config = (json.loads(os.environ.get("TF_CONFIG") or "{}")
                 if cfg.strategy == "multi_worker" else None)
    old_policy = keras.config.dtype_policy()
    with ModelDirLock(cfg.model_dir, lock_name(tf_config)):
        keras.config.set_dtype_policy(PRECISION_POLICIES[cfg.mixed_precision])
        try:
            return _train(cfg, model_fn, train_dataset_fn, eval_dataset_fn, meta,
                          after_training)
        finally:
            keras.config.set_dtype_policy(old_policy)


@dataclasses.dataclass
class _Run:
    """What the steps of one training run share."""
    cfg: object
    strategy: object
    model: object
    optimizer: object
    loss_tracker: object
    meta: object
    task_id: int
    is_chief: bool
    semi: object = None  # iseg.semi.engine.SemiEngine of a --semi run

    @property
    def eval_model(self):
        """The network evaluated and exported (a semi run's EMA teacher, if any)."""
        return self.model if self.semi is None else self.semi.eval_model

    @property
    def replicas(self):
        return self.strategy.num_replicas_in_sync

    @property
    def is_tpu(self):
        return isinstance(self.strategy, tf.distribute.TPUStrategy)

    @property
    def accum(self):
        return max(1, self.cfg.grad_accum_steps)


def _train(cfg, model_fn, train_dataset_fn, eval_dataset_fn, meta, after_training):
    run = _set_up_model(cfg, model_fn, meta)
    config_lib.check_crop_size(cfg, run.model)
    normalization = input_normalization(run.model)
    resume = (ckpt_lib.checked(cfg.checkpoint) if cfg.checkpoint else
              ckpt_lib.newest_readable(ckpt_lib.checkpoint_dir(cfg.model_dir, run.is_chief,
                                                               run.task_id)))
    if run.is_chief:  # (after the checks above: a refused run changes no file)
        config_lib.check_same_model(cfg.model_dir, run.model)
        config_lib.write_run_config(cfg.model_dir, cfg, run.meta, run.model)
    iterator, split = _set_up_input(run, train_dataset_fn, normalization, resume)
    checkpointer = ckpt_lib.TrainCheckpointer(
        cfg.model_dir, model=run.model, optimizer=run.optimizer,
        iterator=iterator if (cfg.checkpoint_input and not run.is_tpu) else None,
        keep=cfg.keep_checkpoints, is_chief=run.is_chief, task_id=run.task_id,
        extra=run.semi.checkpoint_objects() if run.semi else None)
    checkpointer.restore(resume)
    if run.semi is None:
        train_step = _build_train_step(run, split, normalization)
    else:
        train_step = run.semi.build_train_step(run.strategy, run.optimizer, split)
    evaluate_fn = _make_periodic_eval(cfg, run.eval_model, run.meta, normalization,
                                      eval_dataset_fn, run.is_chief)
    step, losses, last_scores = _run_loop(run, train_step, iterator, checkpointer,
                                          evaluate_fn)
    if checkpointer.latest is None or not checkpointer.latest.endswith(f"-{step}"):
        checkpointer.save(step)
    if cfg.evaluate_at_end and step > 0:
        last_scores = evaluate_fn(step)
    result = dict(step=step, losses=losses, scores=last_scores, model=run.eval_model,
                  strategy=run.strategy, is_chief=run.is_chief, student=run.model,
                  semi=run.semi)
    if after_training is not None and run.is_chief:
        after_training(run.eval_model, result)
    return result


def _set_up_model(cfg, model_fn, meta):
    """Strategy, seeds, model, optimizer and loss tracker."""
    strategy = create_strategy(cfg.strategy, cfg.tpu)
    per_replica_batch_size(cfg.batch_size, strategy)  # validates divisibility
    _, task_id, is_chief = task_info(strategy)
    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    meta = meta or config_lib.dataset_meta(cfg)
    with strategy.scope():
        model = (model_fn or config_lib.build_model_from_config)(cfg, meta)
        if cfg.sync_bn and strategy.num_replicas_in_sync > 1:
            logging.info("sync BN on %d layers", enable_sync_bn(model))
        semi = None
        if cfg.semi != "none":
            from iseg.semi.engine import SemiEngine

            semi = SemiEngine(cfg, meta, model, input_normalization(model))
        optimizer = config_lib.optimizer_for(
            cfg, model, semi.extra_trainable_variables() if semi else (),
            semi.extra_backbone_variables() if semi else ())
        loss_tracker = keras.metrics.Mean(name="loss")
    return _Run(cfg, strategy, model, optimizer, loss_tracker, meta, task_id, is_chief, semi)


def _set_up_input(run, train_dataset_fn, normalization, resume):
    """(iterator, split): the training batches of this worker, and the function that
    splits one over the worker's local replicas.

    Each worker reads its own shard with a plain (checkpointable) iterator over
    per-worker batches; TPU input comes from the strategy (its iterator is not saved).
    """
    cfg, strategy = run.cfg, run.strategy
    resample = resample_mode(cfg.resample, run.is_tpu)
    if train_dataset_fn is None and run.semi is not None:
        train_dataset_fn = run.semi.dataset_fn(resample, config_lib.augment_options(cfg))
    elif train_dataset_fn is None:
        train_dataset_fn = config_lib.make_train_dataset_fn(cfg, normalization, resample)
    # Resume: without a saved input position, a resumed run reseeds the data order by
    # the step of the checkpoint it resumes from (`resume`).
    start_guess = int(resume.rsplit("-", 1)[-1]) if resume else 0
    seed = cfg.seed if (cfg.checkpoint_input or start_guess == 0) else cfg.seed + start_guess
    if run.is_tpu:
        return iter(strategy.distribute_datasets_from_function(
            lambda ctx: train_dataset_fn(ctx, seed))), lambda batch: batch
    try:
        local_replicas = max(1, len(strategy.extended.worker_devices))
    except RuntimeError:  # the default strategy has no device list
        local_replicas = 1
    num_workers = max(1, run.replicas // local_replicas)
    worker_index = _worker_index(strategy)
    ctx = tf.distribute.InputContext(num_input_pipelines=num_workers,
                                     input_pipeline_id=worker_index,
                                     num_replicas_in_sync=num_workers)
    with tf.device("/cpu:0"):
        iterator = iter(train_dataset_fn(ctx, seed))

    def split(batch):
        if run.replicas == 1:
            return batch

        def value_fn(value_ctx):  # each tensor's worker batch split over local replicas
            local = value_ctx.replica_id_in_sync_group - worker_index * local_replicas

            def part(t):
                n = t.shape[0] // local_replicas
                return t[local * n:(local + 1) * n]
            return tf.nest.map_structure(part, batch)
        return strategy.experimental_distribute_values_from_function(value_fn)

    return iterator, split


def _build_train_step(run, split, normalization):
    """`train_step(iterator)`: one optimizer update (over `grad_accum_steps` batches) on
    every replica; returns the tracked losses."""
    model, optimizer, replicas = run.model, run.optimizer, run.replicas
    trackers = _trackers(model) + [run.loss_tracker]
    loss_scale = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def replica_step(batch):
        if isinstance(batch, dict) and "rows" in batch:  # views: resampled on this device
            batch = resample_views(batch, normalization)
        x, y = batch
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            # compute_loss returns this replica's share (loss / replicas), as Keras' losses
            scaled = model.compute_loss(x=x, y=y, y_pred=y_pred, training=True)
            run.loss_tracker.update_state(scaled * float(replicas))
            if loss_scale:
                scaled = optimizer.scale_loss(scaled)
        variables = model.trainable_variables
        grads = tape.gradient(scaled, variables)
        optimizer.apply_gradients(zip(grads, variables))

    @tf.function
    def train_step(it):
        for m in trackers:
            m.reset_state()
        for _ in range(run.accum):
            run.strategy.run(replica_step, args=(split(next(it)),))
        return {m.name: m.result() for m in trackers}

    return train_step


def _run_loop(run, train_step, iterator, checkpointer, evaluate_fn):
    """Steps until `cfg.steps` with the NaN stop, progress bar, scalars, checkpoints and
    periodic evaluation; returns (step, this run's losses, the last scores or None)."""
    cfg = run.cfg
    step = int(run.optimizer.iterations.numpy())
    writer = (tf.summary.create_file_writer(os.path.join(cfg.model_dir, "logs", "train"))
              if run.is_chief else _NoopWriter())
    losses, last_scores = [], None
    bar = None
    if run.is_chief and step < cfg.steps:
        bar = progress_bar(total=cfg.steps, initial=step, unit="step", desc="training",
                           enabled=cfg.progress, per_second=False)
    images_per_step = cfg.batch_size * run.accum
    t_last = time.time()
    try:
        while step < cfg.steps:
            t0 = time.time()
            try:
                logs = {k: float(v) for k, v in train_step(iterator).items()}
            except (tf.errors.OutOfRangeError, StopIteration):
                raise EmptyDatasetError(
                    f"the training split in {cfg.data_dir} yielded no batches") from None
            except tf.errors.OpError as e:
                if "IteratorGetNext" not in str(e):
                    raise
                raise input_error(cfg.data_dir, "train", e) from None
            step += 1
            dt = time.time() - t0
            if not np.isfinite(logs["loss"]):
                raise TrainingDivergedError(
                    f"loss is {logs['loss']} at step {step}; training stopped. "
                    f"{checkpointer.after_divergence(step)}")
            losses.append(logs["loss"])
            lr = current_learning_rate(run.optimizer)
            if bar is not None:
                bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{lr:.2e}",
                                img_s=f"{images_per_step / max(dt, 1e-9):.1f}")
                bar.update(1)
            if step % max(1, cfg.log_every) == 0 or step == cfg.steps:
                elapsed = time.time() - t_last
                t_last = time.time()
                n = (step % max(1, cfg.log_every)) or max(1, cfg.log_every)
                _write_scalars(writer, step, logs, lr,
                               n * images_per_step / max(elapsed, 1e-9))
            if step % max(1, cfg.checkpoint_every) == 0 or step == cfg.steps:
                checkpointer.save(step)
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                last_scores = evaluate_fn(step)
    finally:
        if bar is not None:
            bar.close()
        writer.flush()
    return step, losses, last_scores


def _write_scalars(writer, step, logs, lr, images_per_second):
    with writer.as_default(step=step):
        for name, value in logs.items():
            summaries.scalar(f"loss/{name}" if name != "loss" else "loss", value)
        summaries.scalar("learning_rate", lr)
        summaries.scalar("images_per_second", images_per_second)


def resample_mode(resample, is_tpu=False):
    """'host' or 'device' for the --resample setting: 'auto' resamples on the device when
    there are GPUs (the gathers are cheap there, and the host only decodes), on the host
    otherwise (a CPU runs the batched gathers slower than tf.data's per-image resize;
    TPUs need the host pipeline's static shapes)."""
    if resample not in ("auto", "host", "device"):
        raise ValueError(f"resample must be 'auto', 'host' or 'device', got {resample!r}")
    if resample == "device" and is_tpu:
        raise ConfigError("--resample=device is not supported on TPUs (the windows have "
                         "dynamic shapes); use --resample=host or auto")
    if resample == "auto":
        return "device" if not is_tpu and tf.config.list_logical_devices("GPU") else "host"
    return resample


def _make_periodic_eval(cfg, model, meta, normalization, eval_dataset_fn, is_chief):
    from iseg.evaluation import make_evaluator, write_results

    cache = {}

    def run(step):
        if not is_chief:
            return None
        dataset = (eval_dataset_fn() if eval_dataset_fn is not None
                   else config_lib.make_eval_dataset(cfg, normalization))
        if "evaluator" not in cache:  # traced once, reused by every evaluation
            cache["evaluator"] = make_evaluator(cfg, model, meta)
        evaluator = cache["evaluator"]
        total = info_lib.num_examples(cfg.data_dir, cfg.eval_split)
        if total is not None and cfg.eval_steps is not None:
            total = min(total, cfg.eval_steps * cfg.eval_batch_size)
        scores = evaluator.evaluate(dataset, max_batches=cfg.eval_steps,
                                    num_samples=cfg.num_summary_images, split=cfg.eval_split,
                                    progress=cfg.progress, total_images=total)
        write_results(scores, os.path.join(cfg.model_dir, "eval"), step=step)
        logging.info("step %d: %s mIoU %.4f, pixel accuracy %.4f", step, cfg.eval_split,
                     scores["miou"], scores["pixel_accuracy"])
        writer = tf.summary.create_file_writer(os.path.join(cfg.model_dir, "logs", "eval"))
        with writer.as_default(step=step):
            summaries.scalar("miou", scores["miou"])
            summaries.scalar("pixel_accuracy", scores["pixel_accuracy"])
            if scores["samples"]:
                for i, (image, gt, pred) in enumerate(scores["samples"]):
                    summaries.image(f"sample_{i}", np.stack([image, gt, pred]),
                                    description="input, ground truth, prediction")
        writer.flush()
        return scores

    return run
