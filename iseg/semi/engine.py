"""The semi-supervised training step, plugged into the supervised trainer
(`iseg.training.trainer`) by `--semi=<method>`.

`SemiEngine` holds what a semi-supervised run adds: the method, its EMA teacher or peer
network, and its zipped input. Everything else -- strategy, optimizer, schedule,
checkpoints, resume, NaN stop, progress bar, TensorBoard, periodic evaluation -- is the
supervised trainer's.

One optimizer step (`build_train_step`): on every replica, the method's `loss_terms` on
the replica's part of the zipped batch (one tape), the gradients of their sum (divided by
the number of replicas, as Keras' losses are) for the student's, the peer's and the
method's own trainable variables, one optimizer update; then, in cross-replica context,
the EMA teacher update. Each replica's random seed is derived statelessly from
``(cfg.seed, step, replica)`` (`step_seed`), so a resumed run repeats the same draws.
The terms are logged separately (`loss/<name>` in TensorBoard) and their sum as `loss`.
"""

import keras
import tensorflow as tf

from iseg.errors import ConfigError
from iseg.semi import data as data_lib
from iseg.semi import methods as methods_lib
from iseg.semi.methods.base import SemiContext, check_teacher
from iseg.semi.teacher import EMATeacher, build_peer

PEER_SEED_OFFSET = 1  # the peer's head is initialised from cfg.seed + this


def step_seed(seed, step, replica):
    """The int32 [2] stateless seed of one replica's step: drawn from the key
    ``(seed, step * 2**16 + replica)``."""
    key = tf.stack([tf.constant(int(seed), tf.int64),
                    tf.cast(step, tf.int64) * 65536 + tf.cast(replica, tf.int64)])
    return tf.random.stateless_uniform([2], key, minval=None, maxval=None, dtype=tf.int32)


def _container(variables):
    return tf.train.Checkpoint(**{f"v{i:05d}": v for i, v in enumerate(variables)})


class SemiEngine:
    """The method, teacher / peer and input of a semi-supervised run (build it inside the
    strategy scope, after the student)."""

    def __init__(self, cfg, meta, student, normalization):
        if cfg.grad_accum_steps > 1:
            raise ConfigError("--grad_accum_steps>1 is not supported with --semi (the "
                              "teacher follows each optimizer update)")
        self.cfg, self.student, self.meta = cfg, student, meta
        self.normalization = normalization
        self.method = methods_lib.build_method(cfg.semi, cfg.semi_options)
        check_teacher(self.method)
        self.teacher = (EMATeacher(student, **self.method.ema())
                        if self.method.teacher == "ema" else None)
        self.peer = (build_peer(student, cfg.seed + PEER_SEED_OFFSET)
                     if self.method.teacher == "peer" else None)
        self.layers = []
        self.method.build(self.context(tf.constant(0, tf.int64)))
        self.layers = self.method.trainable_layers()

    def context(self, step):
        return SemiContext(
            self.student, normalization=self.normalization,
            num_classes=self.meta.num_classes, ignore_label=self.meta.ignore_label,
            step=step, total_steps=self.cfg.steps,
            teacher_model=None if self.teacher is None else self.teacher.model,
            peer_model=self.peer, layers=self.layers)

    def extra_trainable_variables(self):
        """Trained with the student: the peer's and the method's layers' variables."""
        out = list(self.peer.trainable_variables) if self.peer is not None else []
        for layer in self.method.trainable_layers():
            out += list(layer.trainable_variables)
        return out

    def extra_backbone_variables(self):
        """The backbone variables among `extra_trainable_variables` (the peer's backbone):
        trained at the backbone's learning rate."""
        return list(self.peer.backbone.trainable_variables) if self.peer is not None else []

    @property
    def eval_model(self):
        """The network evaluated and exported: the EMA teacher when there is one."""
        return self.student if self.teacher is None else self.teacher.model

    def checkpoint_objects(self):
        """Objects saved in every training checkpoint beside the student and optimizer."""
        objects = {}
        if self.teacher is not None:
            objects["teacher"] = _container(self.teacher.variables)
        if self.peer is not None:
            objects["peer"] = _container(self.peer.variables)
        layers = [v for layer in self.method.trainable_layers() for v in layer.variables]
        if layers:
            objects["method_layers"] = _container(layers)
        if self.method.state():
            objects["method_state"] = tf.train.Checkpoint(**self.method.state())
        return objects

    def dataset_fn(self, resample, augment):
        return data_lib.make_semi_dataset_fn(
            self.cfg, resample, self.method.unlabeled_streams,
            data_lib.make_partition(self.cfg), augment)

    def build_train_step(self, strategy, optimizer, split):
        """`train_step(iterator)` -> dict of the mean loss terms and their sum `loss`."""
        variables = list(self.student.trainable_variables) + self.extra_trainable_variables()
        replicas = strategy.num_replicas_in_sync
        loss_scale = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

        def replica_step(batch, step):
            batch = data_lib.resolve_batch(batch)
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            seed = step_seed(self.cfg.seed, step, replica)
            with tf.GradientTape() as tape:
                terms = self.method.loss_terms(self.context(step), batch, seed)
                terms = {k: tf.cast(v, tf.float32) for k, v in terms.items()}
                total = tf.add_n(list(terms.values()) + [
                    tf.cast(tf.reduce_sum(x), tf.float32) for x in self.student.losses])
                scaled = total / float(replicas)
                if loss_scale:
                    scaled = optimizer.scale_loss(scaled)
            grads = tape.gradient(scaled, variables)
            optimizer.apply_gradients(zip(grads, variables))
            return {**terms, "loss": total}

        @tf.function
        def train_step(it):
            step = tf.identity(optimizer.iterations)
            out = strategy.run(replica_step, args=(split(next(it)), step))
            if self.teacher is not None:
                self.teacher.update(step)
            return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)
                    for k, v in out.items()}

        return train_step
